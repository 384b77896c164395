"""Load: many concurrent jobs through the real API to real workers; exact counts, throughput,
and the latency of status polls.

    .venv/bin/python bench/load.py [--jobs 50] [--images 20] [--architecture inception_resnet_v2]
        [--database-url postgresql+psycopg://postgres@127.0.0.1/postgres --broker-url redis://127.0.0.1:6379/0]

Starts `pneumoscan api` and `pneumoscan worker` on a temporary home (SQLite and the embedded
broker unless URLs are given), imports an untrained model of the chosen architecture, then
each of `--jobs` client threads submits a zip of `--images` real X-rays (../shared/data/origres,
or PNEUMOSCAN_TEST_DATA) and polls its job until it ends. Prints the figures; a JSON copy
goes to bench/results/.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import threading
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from common import (
    origres_images,
    run_cli,
    service_env,
    start_cli,
    stop,
    wait_until_ready,
    write_results,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def study_zip(images: list[Path], count: int, offset: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for i in range(count):
            path = images[(offset + i) % len(images)]
            bundle.write(path, f"{i:03d}-{path.name}")
    return buffer.getvalue()


class Client(threading.Thread):
    def __init__(self, base: str, key: str, archive: bytes, poll_seconds: float) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
        self.archive, self.poll_seconds = archive, poll_seconds
        self.polls: list[float] = []
        self.submit_seconds = 0.0
        self.job: dict[str, Any] = {}
        self.results = -1
        self.error: str | None = None

    def run(self) -> None:
        try:
            started = time.perf_counter()
            response = self.http.post("/v1/jobs", files={"archive": ("study.zip", self.archive)})
            self.submit_seconds = time.perf_counter() - started
            response.raise_for_status()
            job_id = response.json()["id"]
            while True:
                started = time.perf_counter()
                self.job = self.http.get(f"/v1/jobs/{job_id}").raise_for_status().json()
                self.polls.append(time.perf_counter() - started)
                if self.job["status"] in ("completed", "failed", "cancelled"):
                    break
                time.sleep(self.poll_seconds)
            page = self.http.get(f"/v1/jobs/{job_id}/results", params={"per_page": 5000}).json()
            self.results = len(page["items"])
        except Exception as exc:  # reported, not raised: one client's failure is a finding
            self.error = f"{type(exc).__name__}: {exc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--architecture", default="inception_resnet_v2")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--broker-url", default="")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    images = origres_images()
    home, env = service_env("load", args.port, args.database_url, args.broker_url, api_workers="2")
    run_cli(["db", "upgrade"], env)
    key = run_cli(["keys", "create", "--name", "load", "--scope", "submit"], env)
    model = home / "model.keras"
    run_cli(["models", "new", "--architecture", args.architecture, "--out", str(model)], env)
    run_cli(["models", "import", str(model), "--activate"], env)
    api = start_cli(["api"], env, home / "api.log")
    worker = start_cli(["worker", "--concurrency", str(args.concurrency)], env, home / "worker.log")
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_until_ready(base)
        # Warm the worker (model load, first trace) so the figures are about steady load.
        warm = Client(base, key, study_zip(images, 2, 0), 0.5)
        warm.run()
        clients = [
            Client(base, key, study_zip(images, args.images, i * args.images), args.poll_seconds)
            for i in range(args.jobs)
        ]
        started = time.perf_counter()
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        wall = time.perf_counter() - started
    finally:
        stop(api, worker)

    exact = [
        c
        for c in clients
        if c.error is None
        and c.job.get("status") == "completed"
        and c.job["scored"] + c.job["errors"] == args.images == c.results
    ]
    polls = [p for c in clients for p in c.polls]
    submits = [c.submit_seconds for c in clients]
    figures = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs",
        "database": args.database_url or "sqlite (embedded)",
        "broker": args.broker_url or "filesystem (embedded)",
        "architecture": args.architecture,
        "worker_concurrency": args.concurrency,
        "jobs": args.jobs,
        "images_per_job": args.images,
        "jobs_exact": len(exact),
        "errors": [c.error for c in clients if c.error],
        "wall_seconds": round(wall, 1),
        "images_per_second": round(args.jobs * args.images / wall, 1),
        "status_polls": len(polls),
        "poll_p50_ms": round(1000 * statistics.median(polls), 1),
        "poll_p99_ms": round(1000 * percentile(polls, 0.99), 1),
        "submit_p50_ms": round(1000 * statistics.median(submits), 1),
        "submit_p99_ms": round(1000 * percentile(submits, 0.99), 1),
    }
    for name, value in figures.items():
        print(f"{name:20} {value}")
    write_results("load", figures)
    if len(exact) != args.jobs:
        raise SystemExit(f"only {len(exact)} of {args.jobs} jobs completed with exact counts")


if __name__ == "__main__":
    main()
