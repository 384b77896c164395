"""`pneumoscan dicom-node`: the DICOM node, a process of its own (also started by `up` when
PNEUMOSCAN_DICOM_PORT is set)."""

from __future__ import annotations

import signal
from types import FrameType

import click

from cli.context import CliContext, pass_cli


@click.command("dicom-node")
@pass_cli
def dicom_node(cli: CliContext) -> None:
    """Receive studies from PACS peers by C-STORE, send their reports back."""
    import logging

    from worker.dicom_node import DicomNode

    settings = cli.settings
    logging.basicConfig(
        level=settings.log_level, format="[%(asctime)s: %(levelname)s/dicom-node] %(message)s"
    )
    if not settings.dicom_port:
        raise click.ClickException("set PNEUMOSCAN_DICOM_PORT: the port the node listens on")
    try:
        node = DicomNode(settings, cli.db, cli.queue.ingest)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc

    def stop(signum: int, frame: FrameType | None) -> None:
        node.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    node.run()
