"""What the command modules share."""

from __future__ import annotations

import click

from core.config import Settings


def settings_of(ctx: click.Context) -> Settings:
    """The settings the `pneumoscan` group read and validated at start."""
    settings: Settings = ctx.find_root().obj
    return settings


def release_waiting_jobs(settings: Settings) -> None:
    """Ask a worker to start the jobs that were waiting for a model."""
    from kombu.exceptions import OperationalError

    from worker.celery_app import create_celery
    from worker.tasks import release_waiting_jobs

    try:
        create_celery(settings).tasks[release_waiting_jobs.name].delay()
    except OperationalError as exc:
        click.echo(
            f"warning: could not reach the broker ({exc}); the scheduler will release waiting jobs"
        )
