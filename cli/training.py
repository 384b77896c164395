"""Training and evaluation from the command line: the same code paths as the training task."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cli.context import CliContext, domain_errors_shown, pass_cli
from core.choices import ActivationPolicy, Architecture, Augmentation, Optimizer, values


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Reference folder with NORMAL/ and PNEUMONIA/. Default: PNEUMOSCAN_DATA_DIR.",
)
@click.option("--architecture", type=click.Choice(values(Architecture)))
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--augment", type=click.Choice(values(Augmentation)))
@click.option("--weights", help="none, imagenet, or a weights file for the backbone.")
@click.option("--input-size", type=int, help="Model input side in pixels.")
@click.option("--optimizer", type=click.Choice(values(Optimizer)))
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
    type=click.Choice(values(ActivationPolicy)),
    default=ActivationPolicy.IF_BETTER.value,
    show_default=True,
)
@pass_cli
def train(cli: CliContext, data: Path | None, activate: str, **options: Any) -> None:
    """Train a model (the same code path as the training task) and register it."""
    from core.storage import Storage
    from core.training_runs import TrainingParams, request_run
    from training.train import run_training

    settings = cli.settings
    with domain_errors_shown():
        params = TrainingParams.from_settings(
            settings, data_dir=str(data.resolve()) if data else None, activate=activate, **options
        )
        with cli.db.session() as session:
            run, _ = request_run(session, params, "cli", stale_after=settings.training_stale_after)
            run_id = run.id
    click.echo(f"training run {run_id}: {params.architecture}, {params.epochs} epochs", err=True)
    progress = _TrainingProgress()
    try:
        outcome = run_training(
            cli.db,
            Storage(settings.storage_dir),
            settings,
            run_id,
            progress,
            release=cli.release_waiting_jobs,
        )
    finally:
        progress.close()
    if outcome.error:
        raise click.ClickException(f"training run {run_id} failed: {outcome.error}")
    click.echo(
        f"training run {run_id}: version {outcome.version}, "
        f"{'activated' if outcome.activated else 'not activated'} ({outcome.decision})",
        err=True,
    )


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
@pass_cli
def evaluate(
    cli: CliContext,
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
    from core.storage import Storage
    from training.data import class_counts, read_labelled_folder
    from training.datasets import patients_of_split
    from training.evaluate import evaluate_samples, load_version
    from training.stress import CHANGES

    settings = cli.settings
    with domain_errors_shown(), cli.db.session() as session:
        row = (
            registry.get_version(session, version) if version else registry.active_version(session)
        )
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
