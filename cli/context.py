"""What every command shares: the settings read at start, one database, one task queue.

Both are built on first use and the database is disposed when the command ends, so a command
that needs neither (`submit`, `models new`) connects to nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from core.broker.queue import QueueUnavailableError, TaskQueue
from core.config import Settings
from core.db import Database
from core.errors import DomainError


class CliContext:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None
        self._queue: TaskQueue | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database_url)
        return self._db

    @property
    def queue(self) -> TaskQueue:
        if self._queue is None:
            self._queue = TaskQueue(self.settings)
        return self._queue

    def release_waiting_jobs(self) -> None:
        """Ask a worker to start the jobs that were waiting for a model; the scheduler's
        sweep does it too, so an unreachable broker is a warning here."""
        try:
            self.queue.release_waiting_jobs()
        except QueueUnavailableError:
            click.echo(
                "warning: could not reach the broker; the scheduler will release waiting jobs"
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None


pass_cli = click.make_pass_decorator(CliContext)


@contextmanager
def domain_errors_shown() -> Iterator[None]:
    """A domain error (no such version, a run already in progress...) ends the command with
    its message, not a traceback."""
    try:
        yield
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc
