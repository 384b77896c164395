"""Models: import, activate, list, new; training and evaluation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from core.cli.common import release_waiting_jobs, settings_of
from core.config import AUGMENTATIONS, OPTIMIZERS
from core.errors import DomainError


@click.group()
def models() -> None:
    """Model versions."""


@models.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--activate", is_flag=True, help="Make it the active version at once.")
@click.option("--architecture", default=None, help="Recorded with the version.")
@click.option("--threshold", type=float, default=0.5, show_default=True)
@click.option(
    "--preprocessing",
    default="squash",
    show_default=True,
    help="The input the model was trained on: squash, equalize, trimN or trimN+equalize.",
)
@click.pass_context
def models_import(
    ctx: click.Context,
    path: Path,
    activate: bool,
    architecture: str | None,
    threshold: float,
    preprocessing: str,
) -> None:
    """Register a saved .keras model as a new version."""
    from core import registry
    from core.db import Database
    from core.storage import Storage

    settings = settings_of(ctx)
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            row = registry.import_model(
                session,
                Storage(settings.storage_dir),
                path,
                architecture=architecture,
                threshold=threshold,
                preprocessing=preprocessing,
            )
            if activate:
                registry.activate(session, row.version)
            version = row.version
    except DomainError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {path} as version {version}{' (active)' if activate else ''}")
    if activate:
        release_waiting_jobs(settings)


@models.command("activate")
@click.argument("version")
@click.pass_context
def models_activate(ctx: click.Context, version: str) -> None:
    """Make VERSION the active model (promote or roll back)."""
    from core import registry
    from core.db import Database

    settings = settings_of(ctx)
    try:
        with Database(settings.database_url).session() as session:
            registry.activate(session, version)
    except DomainError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"version {version} is active")
    release_waiting_jobs(settings)


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    """Registered versions, newest first."""
    from core import registry
    from core.db import Database

    with Database(settings_of(ctx).database_url).session() as session:
        rows = registry.list_versions(session)
        header = ("VERSION", "STATUS", "ARCHITECTURE", "SIZE", "INPUT", "THRESHOLD", "CREATED")
        click.echo("{:<28} {:<10} {:<20} {:>4} {:<15} {:>9}  {}".format(*header))
        for row in rows:
            click.echo(
                f"{row.version:<28} {row.status:<10} {row.architecture or '-':<20} "
                f"{row.input_size:>4} {row.preprocessing:<15} {row.threshold:>9.3f}  "
                f"{row.created_at:%Y-%m-%d %H:%M}"
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


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Reference folder with NORMAL/ and PNEUMONIA/. Default: PNEUMOSCAN_DATA_DIR.",
)
@click.option("--architecture", type=click.Choice(["inception_resnet_v2", "baseline_cnn"]))
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--augment", type=click.Choice(AUGMENTATIONS))
@click.option("--weights", help="none, imagenet, or a weights file for the backbone.")
@click.option("--input-size", type=int, help="Model input side in pixels.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS))
@click.option("--label-smoothing", type=float)
@click.option("--preprocessing", help="squash, equalize, trimN or trimN+equalize.")
@click.option(
    "--batch-norm-recalibration/--no-batch-norm-recalibration",
    default=None,
    help="Recompute BatchNorm statistics on the training images at the end.",
)
@click.option("--ensemble", type=int, help="Seeds trained one after the other, averaged.")
@click.option("--tta-views", type=int, help="Test-time views averaged inside the model (1-6).")
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

    settings = settings_of(ctx)
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
        release_waiting_jobs(settings)


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
        if not sys.stderr.isatty():
            # Without a terminal the bar is not redrawn: say each epoch on its own line (logs).
            click.echo(f"epoch {epoch}/{self.epochs} {self.note}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A labelled folder with NORMAL/ and PNEUMONIA/.",
)
@click.option("--model", "version", default=None, help="A model version; default: the active one.")
@click.option(
    "--split",
    type=click.Choice(["all", "validation", "holdout"]),
    default="all",
    show_default=True,
    help="Only the patients a training run on this reference folder puts in this split.",
)
@click.option(
    "--stress", is_flag=True, help="Also each stressed change of the images, and the worst."
)
@click.option(
    "--origres",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A labelled folder of original-resolution images: those of the split's patients are "
    "measured too, decoded as scoring decodes them.",
)
@click.pass_context
def evaluate(
    ctx: click.Context,
    data: Path,
    version: str | None,
    split: str,
    stress: bool,
    origres: Path | None,
) -> None:
    """Print a model's metrics on a labelled folder, at its own threshold, with 95 % intervals,
    as one JSON object (and a summary table on stderr)."""
    import json

    from core import registry
    from core.db import Database
    from core.storage import Storage
    from training.data import class_counts, read_labelled_folder
    from training.evaluate import evaluate_samples, load_version
    from training.stress import CHANGES
    from training.train import patients_of_split

    settings = settings_of(ctx)
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
    reference = read_labelled_folder(data)
    patients = patients_of_split(reference, split)
    measure: dict[str, Any] = {
        "threads": settings.decode_threads,
        "max_pixels": settings.max_image_pixels,
        "min_sensitivity": settings.min_sensitivity,
    }
    network = load_version(Storage(settings.storage_dir), row)
    samples = [s for s in reference if patients is None or s.patient in patients]
    copies = f", each also under {len(CHANGES)} changes" if stress else ""
    click.echo(f"measuring {row.version} on {len(samples)} images{copies}", err=True)
    report = {
        "model_version": row.version,
        "data": str(data),
        "split": split,
        "images": class_counts(samples),
        **evaluate_samples(network, row, samples, stress=stress, **measure),
    }
    if origres is not None:
        full_size = [
            s for s in read_labelled_folder(origres) if patients is None or s.patient in patients
        ]
        report["origres"] = {
            "data": str(origres),
            "images": class_counts(full_size),
            **evaluate_samples(network, row, full_size, **measure),
        }
    click.echo(summary_table(report), err=True)
    click.echo(json.dumps(report, indent=2))


def summary_table(report: dict[str, Any]) -> str:
    """The figures a person reads first, with their intervals, one line each."""

    def figure(metrics: dict[str, Any], key: str, interval_key: str | None = None) -> str:
        value = metrics.get(key)
        if value is None:
            return f"{key} n/a"
        low_high = (metrics.get("intervals") or {}).get(interval_key or key)
        spread = f" ({low_high[0]:.3f}-{low_high[1]:.3f})" if low_high else ""
        return f"{key} {value:.3f}{spread}"

    lines = [f"model {report['model_version']} on {report['data']} ({report['split']})"]
    for name, metrics in (("clean", report), ("origres", report.get("origres", {}))):
        if "auroc" in metrics:
            keys = ("auroc", "accuracy", "sensitivity", "specificity")
            lines.append(
                f"  {name:<22} n {metrics['n']:>5}  " + ", ".join(figure(metrics, k) for k in keys)
            )
    stressed = report.get("stressed")
    if stressed:
        for change, m in stressed["changes"].items():
            lines.append(
                f"  {change:<22} auroc {m['auroc'] or 0:.3f}, sensitivity "
                f"{m['sensitivity'] or 0:.3f}, specificity {m['specificity'] or 0:.3f}"
            )
        lines.append(
            "  stressed               "
            + ", ".join(
                figure(stressed, k)
                for k in ("mean_auroc", "worst_auroc", "specificity", "worst_specificity")
            )
            + f" (worst: {stressed['worst_auroc_change']}, {stressed['worst_specificity_change']})"
        )
    return "\n".join(lines)
