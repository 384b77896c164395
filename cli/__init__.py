"""The `pneumoscan` command: the composition root.

Each command builds what it needs from one `CliContext` (settings, database, task queue). It
is the only package that wires `api`, `worker` and `training` together; commands import the
heavy ones (TensorFlow through `training`) inside their bodies so `pneumoscan --help` and
`pneumoscan submit` start fast.
"""

from __future__ import annotations

import click
from pydantic import ValidationError

from cli import dicom, keys, models, service, submit, training
from cli.context import CliContext
from core.config import load_settings


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """pneumoscan: batch scoring of chest X-rays for pneumonia."""
    try:
        context = CliContext(load_settings())
    except ValidationError as exc:
        raise click.ClickException(f"invalid PNEUMOSCAN_* settings:\n{exc}") from exc
    ctx.obj = context
    ctx.call_on_close(context.close)


for command in (
    service.up,
    service.api,
    service.worker,
    service.beat,
    dicom.dicom_node,
    service.db,
    models.models,
    training.train,
    training.evaluate,
    submit.submit,
    keys.keys,
):
    main.add_command(command)
