"""The `pneumoscan` command.

This is the composition root: commands import `api`, `worker` and `training` inside their
bodies, so importing `core` never pulls them (or TensorFlow) in.
"""

from __future__ import annotations

import click
from pydantic import ValidationError

from core.cli import keys, models, service, submit
from core.config import load_settings


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """pneumoscan: batch scoring of chest X-rays for pneumonia."""
    try:
        ctx.obj = load_settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid PNEUMOSCAN_* settings:\n{exc}") from exc


for command in (
    service.up,
    service.api,
    service.worker,
    service.beat,
    service.db,
    models.models,
    models.train,
    models.evaluate,
    submit.submit,
    keys.keys,
):
    main.add_command(command)
