"""Celery side: the app factory, thin tasks, and the scoring pipeline."""
