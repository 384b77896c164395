"""The `pneumoscan` command.

This is the composition root: commands import `api`, `worker` and `training` inside their
bodies, so importing `core` never pulls them (or TensorFlow) in.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from core.config import Settings, load_settings
from core.errors import DomainError


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """pneumoscan: batch scoring of chest X-rays for pneumonia."""
    try:
        ctx.obj = load_settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid PNEUMOSCAN_* settings:\n{exc}") from exc


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@main.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Run api, workers and scheduler together on this machine (Ctrl-C stops all)."""
    from core.migrate import upgrade
    from core.supervisor import Command, Supervisor

    settings = _settings(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    _bootstrap_training(settings)
    me = [sys.executable, "-m", "core.cli"]
    click.echo(f"pneumoscan: serving on {settings.api_url} (database {settings.database_url})")
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


@main.command()
@click.pass_context
def api(ctx: click.Context) -> None:
    """Serve the HTTP API with gunicorn (threads, so long uploads do not block others)."""
    settings = _settings(ctx)
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
        "api.wsgi:app",
    ]
    os.execv(sys.executable, argv)


@main.command()
@click.option("--queues", default="ingest,scoring", show_default=True)
@click.option(
    "--concurrency", type=int, default=None, help="Default: PNEUMOSCAN_WORKER_CONCURRENCY."
)
@click.option(
    "--pool",
    default="prefork",
    show_default=True,
    type=click.Choice(["prefork", "solo", "threads"]),
)
@click.pass_context
def worker(ctx: click.Context, queues: str, concurrency: int | None, pool: str) -> None:
    """Run a Celery worker; it loads the active model lazily in each child process."""
    from worker.celery_app import create_celery

    settings = _settings(ctx)
    app = create_celery(settings)
    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency or settings.worker_concurrency),
            "--pool",
            pool,
            "--loglevel",
            settings.log_level,
            "--hostname",
            f"pneumoscan-{queues.replace(',', '-')}-{os.getpid()}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
    )


@main.command()
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run the Celery beat scheduler."""
    from worker.celery_app import create_celery

    settings = _settings(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    create_celery(settings).start(["beat", "--loglevel", settings.log_level])


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from core.migrate import upgrade

    upgrade(_settings(ctx).database_url, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
@click.pass_context
def db_downgrade(ctx: click.Context, revision: str) -> None:
    """Revert migrations down to REVISION ('base' for an empty database)."""
    from core.migrate import downgrade

    downgrade(_settings(ctx).database_url, revision)
    click.echo(f"database at {revision}")


@main.group()
def models() -> None:
    """Model versions."""


@models.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--activate", is_flag=True, help="Make it the active version at once.")
@click.option("--architecture", default=None, help="Recorded with the version.")
@click.option("--threshold", type=float, default=0.5, show_default=True)
@click.pass_context
def models_import(
    ctx: click.Context, path: Path, activate: bool, architecture: str | None, threshold: float
) -> None:
    """Register a saved .keras model as a new version."""
    from core import registry
    from core.db import Database
    from core.storage import Storage

    settings = _settings(ctx)
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            row = registry.import_model(
                session,
                Storage(settings.storage_dir),
                path,
                architecture=architecture,
                threshold=threshold,
            )
            if activate:
                registry.activate(session, row.version)
            version = row.version
    except DomainError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {path} as version {version}{' (active)' if activate else ''}")
    if activate:
        _release_waiting_jobs(settings)


@models.command("activate")
@click.argument("version")
@click.pass_context
def models_activate(ctx: click.Context, version: str) -> None:
    """Make VERSION the active model (promote or roll back)."""
    from core import registry
    from core.db import Database

    settings = _settings(ctx)
    try:
        with Database(settings.database_url).session() as session:
            registry.activate(session, version)
    except DomainError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"version {version} is active")
    _release_waiting_jobs(settings)


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    """Registered versions, newest first."""
    from core import registry
    from core.db import Database

    with Database(_settings(ctx).database_url).session() as session:
        rows = registry.list_versions(session)
        header = ("VERSION", "STATUS", "ARCHITECTURE", "SIZE", "THRESHOLD", "CREATED")
        click.echo("{:<28} {:<10} {:<20} {:>4} {:>9}  {}".format(*header))
        for row in rows:
            click.echo(
                f"{row.version:<28} {row.status:<10} {row.architecture or '-':<20} "
                f"{row.input_size:>4} {row.threshold:>9.3f}  {row.created_at:%Y-%m-%d %H:%M}"
            )


@models.command("new")
@click.option(
    "--architecture",
    default="inception_resnet_v2",
    show_default=True,
    type=click.Choice(["inception_resnet_v2", "baseline_cnn"]),
)
@click.option("--input-size", type=int, default=75, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def models_new(architecture: str, input_size: int, out: Path) -> None:
    """Save an untrained model (random weights): enough to try the pipeline before training."""
    from training.model import save_untrained

    save_untrained(architecture, out, input_size)
    click.echo(f"saved an untrained {architecture} to {out}")


@main.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Reference folder with NORMAL/ and PNEUMONIA/. Default: PNEUMOSCAN_DATA_DIR.",
)
@click.option("--architecture", type=click.Choice(["inception_resnet_v2", "baseline_cnn"]))
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--augment", type=click.Choice(["none", "threshold", "standard", "both"]))
@click.option("--weights", help="none, imagenet, or a weights file for the backbone.")
@click.option(
    "--activate",
    type=click.Choice(["if-better", "always", "never"]),
    default="if-better",
    show_default=True,
)
@click.pass_context
def train(ctx: click.Context, data: Path | None, activate: str, **options: Any) -> None:
    """Train a model (the same code path as the training task) and register it."""
    from core.db import Database
    from core.storage import Storage
    from core.training_runs import TrainingParams, request_run
    from training.train import run_training

    settings = _settings(ctx)
    try:
        params = TrainingParams.from_settings(
            settings, data_dir=str(data.resolve()) if data else None, activate=activate, **options
        )
        database = Database(settings.database_url)
        with database.session() as session:
            run, _ = request_run(session, params, "cli", stale_after=settings.training_stale_after)
            run_id = run.id
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"training run {run_id}: {params.architecture}, {params.epochs} epochs", err=True)
    progress = _TrainingProgress()
    try:
        outcome = run_training(database, Storage(settings.storage_dir), settings, run_id, progress)
    finally:
        progress.close()
    if outcome.error:
        raise click.ClickException(f"training run {run_id} failed: {outcome.error}")
    click.echo(
        f"training run {run_id}: version {outcome.version}, "
        f"{'activated' if outcome.activated else 'not activated'} ({outcome.decision})",
        err=True,
    )
    if outcome.activated:
        _release_waiting_jobs(settings)


class _TrainingProgress:
    """A progress bar over every training step, labelled with the epoch and its last loss."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.epoch, self.epochs, self.note = 1, 0, ""

    def started(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs = epochs
        self.bar = click.progressbar(
            length=epochs * steps_per_epoch,
            label="training",
            file=sys.stderr,
            show_pos=True,
            item_show_func=lambda _: f"epoch {self.epoch}/{self.epochs} {self.note}",
        )
        self.bar.__enter__()

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def epoch_done(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch = min(epoch + 1, self.epochs)
        self.note = " ".join(
            f"{key} {logs[key]:.3f}" for key in ("loss", "val_auroc") if key in logs
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@main.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A labelled folder with NORMAL/ and PNEUMONIA/.",
)
@click.option("--model", "version", default=None, help="A model version; default: the active one.")
@click.pass_context
def evaluate(ctx: click.Context, data: Path, version: str | None) -> None:
    """Print a model's metrics on a labelled folder, at its own threshold, as one JSON object."""
    import json

    from core import registry
    from core.db import Database
    from core.storage import Storage
    from training.data import class_counts, load_arrays, read_labelled_folder
    from training.evaluate import evaluate_version

    settings = _settings(ctx)
    try:
        with Database(settings.database_url).session() as session:
            row = (
                registry.get_version(session, version)
                if version
                else registry.active_version(session)
            )
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc
    if row is None:
        raise click.ClickException("no active model; name one with --model")
    samples = read_labelled_folder(data)
    arrays, unreadable = load_arrays(
        samples, row.input_size, settings.decode_threads, settings.max_image_pixels
    )
    metrics = evaluate_version(Storage(settings.storage_dir), row, arrays)
    report = {
        "model_version": row.version,
        "data": str(data),
        "images": class_counts(samples),
        "unreadable": unreadable,
        **metrics,
    }
    click.echo(json.dumps(report, indent=2))


def _release_waiting_jobs(settings: Settings) -> None:
    from kombu.exceptions import OperationalError

    from worker.celery_app import create_celery
    from worker.tasks import release_waiting_jobs

    try:
        create_celery(settings).tasks[release_waiting_jobs.name].delay()
    except OperationalError as exc:
        click.echo(
            f"warning: could not reach the broker ({exc}); the scheduler will release waiting jobs"
        )


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results CSV here."
)
@click.option("--api-url", default=None, help="Default: PNEUMOSCAN_API_URL.")
@click.option("--poll-seconds", type=float, default=1.0, show_default=True)
@click.pass_context
def submit(
    ctx: click.Context,
    path: Path,
    wait: bool,
    out: Path | None,
    api_url: str | None,
    poll_seconds: float,
) -> None:
    """Send a folder (zipped on the fly) or a zip to the API; optionally wait and save the CSV."""
    from core.client import ApiClient, ClientError

    client = ApiClient(api_url or _settings(ctx).api_url)
    try:
        job = client.submit(path)
        click.echo(f"job {job['id']} {job['status']}", err=True)
        if wait or out:
            job = _follow(client, job["id"], poll_seconds)
        if out:
            client.download_csv(job["id"], out)
            click.echo(f"results written to {out}", err=True)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        client.close()
    if job["status"] in ("failed", "cancelled"):
        raise click.ClickException(f"job {job['id']} {job['status']}: {job.get('status_detail')}")


class _ProgressDisplay:
    """A progress bar once the job's size is known; status changes as lines before that."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.bar: Any = None
        self.shown = 0
        self.detail: str | None = None

    def update(self, job: dict[str, Any]) -> None:
        if job["total"] and self.bar is None:
            self.bar = click.progressbar(
                length=job["total"], label="scoring", file=sys.stderr, show_pos=True
            )
            self.bar.__enter__()
        if self.bar is not None:
            done = job["scored"] + job["errors"]
            self.bar.update(done - self.shown)
            self.shown = done
        elif job.get("status_detail") and job["status_detail"] != self.detail:
            self.detail = job["status_detail"]
            click.echo(f"job {self.job_id} {job['status']}: {self.detail}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _follow(client: Any, job_id: str, poll_seconds: float) -> dict[str, Any]:
    display = _ProgressDisplay(job_id)
    try:
        job: dict[str, Any] = client.wait(job_id, display.update, poll_seconds)
    finally:
        display.close()
    click.echo(
        f"job {job_id} {job['status']}: {job['scored']} scored, {job['errors']} errors, "
        f"{job['rejected']} rejected",
        err=True,
    )
    return job


if __name__ == "__main__":
    main()
