"""Model versions: import, activate, list, new."""

from __future__ import annotations

from pathlib import Path

import click

from cli.context import CliContext, domain_errors_shown, pass_cli
from core.choices import Architecture, values


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
@pass_cli
def models_import(
    cli: CliContext,
    path: Path,
    activate: bool,
    architecture: str | None,
    threshold: float,
    preprocessing: str,
) -> None:
    """Register a saved .keras model as a new version."""
    from core import registry
    from core.activation import activate_version
    from core.storage import Storage

    with domain_errors_shown():
        with cli.db.session() as session:
            row = registry.import_model(
                session,
                Storage(cli.settings.storage_dir),
                path,
                architecture=architecture,
                threshold=threshold,
                preprocessing=preprocessing,
            )
        if activate:
            activate_version(cli.db, row.version, cli.release_waiting_jobs)
    click.echo(f"imported {path} as version {row.version}{' (active)' if activate else ''}")


@models.command("activate")
@click.argument("version")
@pass_cli
def models_activate(cli: CliContext, version: str) -> None:
    """Make VERSION the active model (promote or roll back)."""
    from core.activation import activate_version

    with domain_errors_shown():
        activate_version(cli.db, version, cli.release_waiting_jobs)
    click.echo(f"version {version} is active")


@models.command("list")
@pass_cli
def models_list(cli: CliContext) -> None:
    """Registered versions, newest first."""
    from core import registry

    with cli.db.session() as session:
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
    type=click.Choice(values(Architecture)),
)
@click.option("--input-size", type=int, default=75, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def models_new(architecture: str, input_size: int, out: Path) -> None:
    """Save an untrained model (random weights): enough to try the pipeline before training."""
    from training.model import save_untrained

    save_untrained(architecture, out, input_size)
    click.echo(f"saved an untrained {architecture} to {out}")
