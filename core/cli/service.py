"""Running the service: up, api, worker, beat, db."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import click

from core.cli.common import settings_of
from core.config import Settings


@click.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Run api, workers and scheduler together on this machine (Ctrl-C stops all)."""
    from core.migrate import upgrade
    from core.supervisor import Command, Supervisor

    settings = settings_of(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    _first_admin_key(settings)
    _bootstrap_training(settings)
    me = [sys.executable, "-m", "core.cli"]
    click.echo(f"pneumoscan: serving on {settings.api_url} (database {settings.database_shown})")
    all_cores = {"PNEUMOSCAN_TF_INTRA_OP_THREADS": "0", "PNEUMOSCAN_TF_INTER_OP_THREADS": "0"}
    code = Supervisor(
        {
            "api": Command([*me, "api"]),
            "worker": Command([*me, "worker", "--queues", "ingest,scoring"]),
            # Training gets its own process, one run at a time, with every core TF wants.
            "trainer": Command(
                [*me, "worker", "--queues", "training", "--concurrency", "1"], all_cores
            ),
            "beat": Command([*me, "beat"]),
        }
    ).run()
    sys.exit(code)


def _first_admin_key(settings: Settings) -> None:
    """On the very first start, an admin key, printed once: every /v1 call needs a key."""
    from core.db import Database
    from core.keys import any_keys, create_key

    database = Database(settings.database_url)
    try:
        with database.session() as session:
            if any_keys(session):
                return
            _, secret = create_key(session, "admin", "admin")
    finally:
        database.dispose()
    click.echo(
        "pneumoscan: first start, created an admin API key. It is shown only now; keep it:\n"
        f"    export PNEUMOSCAN_API_KEY={secret}\n"
        "pneumoscan: more keys: pneumoscan keys create --name NAME --scope read|submit|admin"
    )


def _bootstrap_training(settings: Settings) -> None:
    """First run: no active model but reference data configured, so train one now."""
    from core import registry
    from core.db import Database
    from core.training_runs import TrainingBusyError, TrainingParams, request_run
    from worker.celery_app import create_celery
    from worker.tasks import train_model

    if settings.data_dir is None:
        return
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            if registry.active_version(session) is not None:
                return
            # With nothing to compare against and nothing serving, the first model goes live.
            params = TrainingParams.from_settings(settings, activate="always")
            run, _ = request_run(
                session, params, "bootstrap", stale_after=settings.training_stale_after
            )
            run_id = run.id
    except TrainingBusyError as exc:
        click.echo(f"pneumoscan: no active model; {exc.message}")
        return
    finally:
        database.dispose()
    create_celery(settings).tasks[train_model.name].delay(run_id)
    click.echo(
        f"pneumoscan: no active model; training run {run_id} started on {settings.data_dir} "
        "(jobs wait until it is activated)"
    )


@click.command()
@click.pass_context
def api(ctx: click.Context) -> None:
    """Serve the HTTP API with gunicorn (threads, so long uploads do not block others)."""
    settings = settings_of(ctx)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{settings.api_host}:{settings.api_port}",
        "--workers",
        str(settings.api_workers),
        "--worker-class",
        "gthread",
        "--threads",
        "8",
        # gthread workers heartbeat from their main thread, so a slow upload is not killed.
        "--timeout",
        "120",
        "--graceful-timeout",
        "30",
        "--access-logfile",
        "-",
        "--no-control-socket",  # its default path is one per user: instances would collide
        "api.wsgi:app",
    ]
    os.execve(sys.executable, argv, api_environment(os.environ))


# gunicorn copies each request body through buffers it allocates afresh, up to a few MiB
# each. Above glibc's mmap threshold every one of them is mapped, faulted in page by page and
# unmapped again: that doubled the API's CPU per uploaded byte (docs/performance.md). The
# thresholds keep such buffers on the heap, reused; the environment may still set its own.
API_MALLOC_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(128 * 1024 * 1024),
}


def api_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the API's gunicorn runs in: this one, with the malloc settings."""
    return {**API_MALLOC_SETTINGS, **environ}


@click.command()
@click.option("--queues", default="ingest,scoring", show_default=True)
@click.option(
    "--concurrency", type=int, default=None, help="Default: PNEUMOSCAN_WORKER_CONCURRENCY."
)
@click.option(
    "--pool",
    default=None,
    type=click.Choice(["prefork", "solo", "threads"]),
    help="Default: PNEUMOSCAN_WORKER_POOL.",
)
@click.pass_context
def worker(ctx: click.Context, queues: str, concurrency: int | None, pool: str | None) -> None:
    """Run a Celery worker; it loads the active model lazily, on the first batch it scores."""
    from worker.celery_app import create_celery

    settings = settings_of(ctx)
    app = create_celery(settings)
    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency or settings.worker_concurrency),
            "--pool",
            pool or settings.worker_pool,
            "--loglevel",
            settings.log_level,
            "--hostname",
            f"pneumoscan-{queues.replace(',', '-')}-{os.getpid()}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
    )


@click.command()
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run the Celery beat scheduler."""
    from worker.celery_app import create_celery

    settings = settings_of(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    create_celery(settings).start(["beat", "--loglevel", settings.log_level])


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from core.migrate import upgrade

    upgrade(settings_of(ctx).database_url, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
@click.pass_context
def db_downgrade(ctx: click.Context, revision: str) -> None:
    """Revert migrations down to REVISION ('base' for an empty database)."""
    from core.migrate import downgrade

    downgrade(settings_of(ctx).database_url, revision)
    click.echo(f"database at {revision}")
