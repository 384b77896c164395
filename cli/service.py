"""Running the service: up, api, worker, beat, db."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import click

from cli.context import CliContext, pass_cli


@click.command()
@pass_cli
def up(cli: CliContext) -> None:
    """Run api, workers and scheduler together on this machine (Ctrl-C stops all)."""
    from cli.supervisor import Command, Supervisor
    from core.migrate import upgrade

    settings = cli.settings
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    _first_admin_key(cli)
    _bootstrap_training(cli)
    cli.close()  # the children connect on their own; this process only watches them
    me = [sys.executable, "-m", "cli"]
    click.echo(f"pneumoscan: serving on {settings.api_url} (database {settings.database_shown})")
    click.echo(f"pneumoscan: the reading room: {settings.api_url}/ui (sign in with an API key)")
    all_cores = {"PNEUMOSCAN_TF_INTRA_OP_THREADS": "0", "PNEUMOSCAN_TF_INTER_OP_THREADS": "0"}
    commands = {
        "api": Command([*me, "api"]),
        # Ingest apart from scoring: studies keep arriving in the queue while the passes
        # run, so the next pass finds them (docs/architecture.md, "Scoring across jobs").
        "ingester": Command([*me, "worker", "--queues", "ingest"]),
        "worker": Command([*me, "worker", "--queues", "scoring"]),
        # Training gets its own process, one run at a time, with every core TF wants.
        "trainer": Command(
            [*me, "worker", "--queues", "training", "--concurrency", "1"], all_cores
        ),
        "beat": Command([*me, "beat"]),
    }
    if settings.dicom_port:
        commands["dicom-node"] = Command([*me, "dicom-node"])
        click.echo(
            f"pneumoscan: DICOM node {settings.dicom_ae_title} on port {settings.dicom_port}"
        )
    code = Supervisor(commands).run()
    sys.exit(code)


def _first_admin_key(cli: CliContext) -> None:
    """On the very first start, an admin key, printed once: every /v1 call needs a key."""
    from core.keys import any_keys, create_key

    with cli.db.session() as session:
        if any_keys(session):
            return
        _, secret = create_key(session, "admin", "admin")
    click.echo(
        "pneumoscan: first start, created an admin API key. It is shown only now; keep it:\n"
        f"    export PNEUMOSCAN_API_KEY={secret}\n"
        "pneumoscan: more keys: pneumoscan keys create --name NAME --scope "
        "read|submit|review|admin"
    )


def _bootstrap_training(cli: CliContext) -> None:
    """First run: no active model but reference data configured, so train one now."""
    from core import registry
    from core.choices import ActivationPolicy
    from core.training_runs import TrainingBusyError, TrainingParams, request_run, send_run

    settings = cli.settings
    if settings.data_dir is None:
        return
    try:
        with cli.db.session() as session:
            if registry.active_version(session) is not None:
                return
            # With nothing to compare against and nothing serving, the first model goes live.
            params = TrainingParams.from_settings(settings, activate=ActivationPolicy.ALWAYS)
            run, _ = request_run(
                session, params, "bootstrap", stale_after=settings.training_stale_after
            )
            run_id = run.id
    except TrainingBusyError as exc:
        click.echo(f"pneumoscan: no active model; {exc.message}")
        return
    send_run(cli.db, run_id, cli.queue.train)
    click.echo(
        f"pneumoscan: no active model; training run {run_id} started on {settings.data_dir} "
        "(jobs wait until it is activated)"
    )


@click.command()
@pass_cli
def api(cli: CliContext) -> None:
    """Serve the HTTP API with gunicorn (threads, so long uploads do not block others)."""
    settings = cli.settings
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
@pass_cli
def worker(cli: CliContext, queues: str, concurrency: int | None, pool: str | None) -> None:
    """Run a Celery worker; it loads the active model lazily, on the first batch it scores."""
    from worker.celery_app import create_celery

    settings = cli.settings
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
@pass_cli
def beat(cli: CliContext) -> None:
    """Run the Celery beat scheduler."""
    from worker.celery_app import create_celery

    settings = cli.settings
    settings.home.mkdir(parents=True, exist_ok=True)
    create_celery(settings).start(["beat", "--loglevel", settings.log_level])


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_cli
def db_upgrade(cli: CliContext, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from core.migrate import upgrade

    upgrade(cli.settings.database_url, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
@pass_cli
def db_downgrade(cli: CliContext, revision: str) -> None:
    """Revert migrations down to REVISION ('base' for an empty database)."""
    from core.migrate import downgrade

    downgrade(cli.settings.database_url, revision)
    click.echo(f"database at {revision}")
