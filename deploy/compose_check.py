"""`make compose-check`: build the images, run docker-compose.yml for real, and prove it works.

Builds every image, starts the stack, waits for /readyz (the compose healthcheck), creates a
key, imports a model, submits a zip of real X-rays through the API and counts one result
per image in PostgreSQL; scales the scoring worker to two and sees both score one job;
restarts Redis in the middle of a job and sees it complete; then removes everything,
volumes included. Prints what it did, with timings and image sizes (docs/deploy.md).

Not part of .ci/run: it builds images with TensorFlow and takes many minutes.

    python deploy/compose_check.py [--data ../shared/data/origres] [--keep]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PROJECT = "pneumoscan-check"
API = "http://127.0.0.1:8000"
IMAGES = ("pneumoscan-api", "pneumoscan-worker-cpu")


def say(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def compose(*args: str, capture: bool = False, check: bool = True) -> str:
    command = ["docker-compose", "-p", PROJECT, "-f", str(REPO / "docker-compose.yml"), *args]
    done = subprocess.run(
        command, cwd=REPO, text=True, capture_output=capture, check=False, env=os.environ
    )
    if check and done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stdout or ''}{done.stderr or ''}")
    return done.stdout or ""


def health(container: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Health.Status}}", container],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def sql(query: str) -> str:
    return compose(
        "exec", "-T", "postgres", "psql", "-U", "pneumoscan", "-tAc", query, capture=True
    ).strip()


def wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(2)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def real_zip(folder: Path, copies: int = 1) -> tuple[bytes, int]:
    """The folder's X-rays, `copies` times over (under copy-N/ folders), zipped."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for copy in range(copies):
            for path in files:
                archive.write(path, f"copy-{copy}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue(), len(files) * copies


class Client:
    def __init__(self, key: str) -> None:
        self.http = httpx.Client(
            base_url=API, headers={"Authorization": f"Bearer {key}"}, timeout=300
        )

    def submit(self, archive: bytes) -> str:
        response = self.http.post(
            "/v1/jobs", content=archive, headers={"Content-Type": "application/zip"}
        )
        response.raise_for_status()
        job_id: str = response.json()["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
        return body

    def finished(self, job_id: str, timeout: float = 900) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        job: dict[str, Any] = wait(ended, timeout, f"job {job_id}")
        return job


def results_in_postgres(job_id: str) -> tuple[int, int]:
    scored, paths = sql(
        "SELECT count(*), count(DISTINCT relative_path) FROM images "
        f"WHERE job_id = '{job_id}' AND scored_at IS NOT NULL"
    ).split("|")
    return int(scored), int(paths)


def expect(condition: bool, failure: object) -> None:
    if not condition:
        raise SystemExit(f"compose check failed: {failure}")


def check(data: Path) -> None:
    started = time.monotonic()
    say("building the images")
    compose("build")
    for image in IMAGES:
        size, user = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}} {{.Config.User}}", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        expect(user not in ("", "root", "0"), f"{image} runs as root")
        say(f"image {image}: {int(size) / 1e6:.0f} MB, runs as {user}")
    say("starting the stack")
    compose("up", "-d")
    api = compose("ps", "-q", "api", capture=True).strip()
    wait(lambda: health(api) == "healthy", 300, "the API's healthcheck (/readyz)")
    say("the API container is healthy (its compose healthcheck calls /readyz)")

    key = (
        compose(
            "exec",
            "-T",
            "api",
            "pneumoscan",
            "keys",
            "create",
            "--name",
            "check",
            "--scope",
            "admin",
            capture=True,
        )
        .strip()
        .splitlines()[-1]
    )
    client = Client(key)
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "model.keras"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "models",
                "new",
                "--architecture",
                "baseline_cnn",
                "--out",
                str(model),
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        subprocess.run(["docker", "cp", str(model), f"{api}:/data/storage/model.keras"], check=True)
    compose(
        "exec",
        "-T",
        "api",
        "pneumoscan",
        "models",
        "import",
        "/data/storage/model.keras",
        "--activate",
    )
    say("key created, model imported and activated")

    archive, count = real_zip(data)
    job_id = client.submit(archive)
    job = client.finished(job_id)
    scored, paths = results_in_postgres(job_id)
    expect(job["status"] == "completed" and scored == paths == count, (job, scored, paths))
    say(f"job {job_id}: {count} real X-rays, {scored} results in PostgreSQL, one per image")

    compose("up", "-d", "--scale", "worker=2", "worker")
    job_id = client.submit(archive)
    client.finished(job_id)
    workers = sql(
        "SELECT count(DISTINCT p.worker) FROM images i "
        f"JOIN scoring_passes p ON p.id = i.pass_id WHERE i.job_id = '{job_id}'"
    )
    expect(int(workers) == 2, f"only {workers} worker(s) scored job {job_id}")
    say(f"job {job_id}: scored by {workers} workers (--scale worker=2)")

    # A job long enough to be caught in the middle: the films five times over.
    archive, count = real_zip(data, copies=5)
    job_id = client.submit(archive)
    wait(lambda: client.job(job_id)["scored"] > 0, 600, "the job's first results")
    compose("restart", "redis")
    at_restart = client.job(job_id)
    expect(at_restart["status"] == "running", f"the job ended before Redis restarted: {at_restart}")
    say(f"job {job_id}: Redis restarted at {at_restart['scored']}/{count}")
    job = client.finished(job_id)
    scored, paths = results_in_postgres(job_id)
    expect(job["status"] == "completed" and scored == paths == count, (job, scored, paths))
    say(f"job {job_id}: completed after the restart, {scored} results, one per image")
    say(f"compose check passed in {(time.monotonic() - started) / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/origres")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    options = parser.parse_args()
    try:
        check(options.data)
    finally:
        if not options.keep:
            compose("down", "-v", "--remove-orphans", check=False)
            say("stack removed, volumes included")


if __name__ == "__main__":
    main()
