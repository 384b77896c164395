"""Alembic migrations for the tables in core.models."""
