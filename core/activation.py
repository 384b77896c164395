"""Activating a model version: the one use case behind the API, the CLI and the training gate.

The version goes live in its own transaction; only then are the jobs that waited for a model
released, through whatever `release` the caller has (a message from the API and the CLI, a
direct call in the training worker). A release that fails leaves the version active: the
scheduler's sweep releases waiting jobs too.
"""

from __future__ import annotations

from collections.abc import Callable

from core.db import Database
from core.models import ModelVersion
from core.registry import activate


def activate_version(db: Database, version: str, release: Callable[[], None]) -> ModelVersion:
    """Make `version` the active one, then release the jobs waiting for a model."""
    with db.session() as session:
        row = activate(session, version)
    release()
    return row


def leave_to_the_sweep() -> None:
    """A `release` for callers with no way to send one: the scheduler's sweep releases waiting
    jobs within `PNEUMOSCAN_SWEEP_SECONDS`."""
