"""The client: send a study, follow it with a progress bar, save the CSV."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cli.context import CliContext, pass_cli


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results CSV here."
)
@click.option(
    "--priority",
    type=click.Choice(["routine", "stat"]),
    default=None,
    help="stat: scored ahead of routine work. Default: the API key's priority.",
)
@click.option("--api-url", default=None, help="Default: PNEUMOSCAN_API_URL.")
@click.option("--api-key", default=None, help="Default: PNEUMOSCAN_API_KEY.")
@click.option("--poll-seconds", type=float, default=1.0, show_default=True)
@pass_cli
def submit(
    cli: CliContext,
    path: Path,
    wait: bool,
    out: Path | None,
    priority: str | None,
    api_url: str | None,
    api_key: str | None,
    poll_seconds: float,
) -> None:
    """Send a folder (zipped on the fly) or a zip to the API; optionally wait and save the CSV."""
    from cli.client import ApiClient, ClientError

    settings = cli.settings
    client = ApiClient(api_url or settings.api_url, api_key or settings.api_key)
    try:
        job = client.submit(path, priority)
        click.echo(f"job {job['id']} {job['status']} ({job['priority']})", err=True)
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
    """A progress bar once the job's size is known (a line per tenth without a terminal);
    every change of the status detail, such as waiting for a model, as a line."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.bar: Any = None
        self.shown = 0
        self.detail: str | None = None
        self.interactive = sys.stderr.isatty()

    def update(self, job: dict[str, Any]) -> None:
        detail = job.get("status_detail")
        if detail and detail != self.detail:
            self.detail = detail
            click.echo(f"job {self.job_id} {job['status']}: {detail}", err=True)
        total = job["total"]
        if not total:
            return
        done = job["scored"] + job["errors"]
        if self.interactive:
            if self.bar is None:
                self.bar = click.progressbar(
                    length=total, label="scoring", file=sys.stderr, show_pos=True
                )
                self.bar.__enter__()
            self.bar.update(done - self.shown)
        elif done * 10 // total > self.shown * 10 // total:
            click.echo(f"scoring {done}/{total}", err=True)
        self.shown = done

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
