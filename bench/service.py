"""The real service for the benches: `pneumoscan api`, an ingest worker and a scoring worker
(as `pneumoscan up` runs them) on a temporary home, and the ways a department sends it
work, each timed from the database's own clock."""

from __future__ import annotations

import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from common import run_cli, start_cli, stop, wait_until_ready
from sqlalchemy import Engine, bindparam, create_engine, text

from cli.client import ApiClient
from core.config import load_settings
from tests.support import rss_kb

FINISHED = ("completed", "failed", "cancelled")


def study_zip(paths: list[Path], count: int, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as bundle:
        for i in range(count):
            path = paths[i % len(paths)]
            bundle.write(path, f"{i // len(paths):02d}/{path.parent.name}/{path.name}")
    return target


class Service:
    """`pneumoscan api`, an ingest and a scoring worker on a temporary home, a model active."""

    def __init__(self, home: Path, env: dict[str, str], model: Path, port: int) -> None:
        self.env, self.base = env, f"http://127.0.0.1:{port}"
        url = load_settings(database_url=env["PNEUMOSCAN_DATABASE_URL"]).database_url
        self.engine: Engine = create_engine(url)
        run_cli(["db", "upgrade"], env)
        run_cli(["models", "import", str(model), "--activate"], env)
        key = run_cli(["keys", "create", "--name", "bench", "--scope", "submit"], env)
        self.client = ApiClient(self.base, key)
        self.http = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {key}"}, timeout=600
        )
        self.api = start_cli(["api"], env, home / "api.log")
        # As `pneumoscan up` runs them: ingest apart from scoring.
        self.ingester = start_cli(["worker", "--queues", "ingest"], env, home / "ingest.log")
        self.worker = start_cli(["worker", "--queues", "scoring"], env, home / "worker.log")
        self.rss_total, self.rss_process = 0.0, 0.0
        self._sampling = True
        threading.Thread(target=self._sample, daemon=True).start()
        wait_until_ready(self.base)

    def _sample(self) -> None:
        while self._sampling:
            sizes = rss_kb(self.worker.pid).values()
            total, largest = sum(sizes) / 1024, max(sizes, default=0) / 1024
            self.rss_total, self.rss_process = (
                max(self.rss_total, total),
                max(self.rss_process, largest),
            )
            time.sleep(0.25)

    def score(self, archive: Path) -> dict[str, float]:
        """Seconds from the start of the POST to the first and the last committed result."""
        started = datetime.now(UTC)
        job = self.client.submit(archive)  # the real client: `pneumoscan submit` uses it
        return self._follow(job, started, datetime.now(UTC))

    def score_folder(self, folder: Path) -> dict[str, float]:
        """The same for a folder on the import volume (the files are read where they are)."""
        started = datetime.now(UTC)
        job = self.http.post("/v1/jobs", json={"folder": str(folder)}).raise_for_status().json()
        return self._follow(job, started, started)

    def _follow(
        self, job: dict[str, Any], started: datetime, uploaded: datetime
    ) -> dict[str, float]:
        # Polled as a client would (`pneumoscan submit` every 1 s): the times come from the
        # database, so polling faster would only add load to the machine being measured.
        while job["status"] not in ("completed", "failed", "cancelled"):
            time.sleep(0.5)
            job = self.http.get(f"/v1/jobs/{job['id']}").json()
        if job["status"] != "completed" or job["errors"]:
            raise SystemExit(f"job ended {job['status']} with {job['errors']} errors")
        first, last = self._scored_between([job["id"]])
        ingested = _aware(job["started_at"])
        return {
            "seconds": (last - started).total_seconds(),
            "first_result_seconds": (first - started).total_seconds(),
            # The phases overlap when the zip is read while it arrives: the job runs (with
            # its first rows recorded) before the upload has ended.
            "upload_seconds": (uploaded - started).total_seconds(),
            "running_seconds": (ingested - started).total_seconds(),
            "after_upload_seconds": (last - uploaded).total_seconds(),
            "images": job["total"],
        }

    def score_small(self, images: list[Path], senders: int = 4) -> dict[str, float]:
        """One job per image, sent at once by `senders` clients (a key name may have 4 uploads
        arriving at once: PNEUMOSCAN_MAX_UPLOADS_PER_OWNER), as a department's router
        sends studies: seconds from the first POST to the last result of any of them."""
        started = datetime.now(UTC)
        with ThreadPoolExecutor(senders) as pool:
            ids = list(pool.map(self._post_image, images))
        posted = datetime.now(UTC)
        self._wait_finished(ids)
        _, last = self._scored_between(ids)
        return {
            "seconds": (last - started).total_seconds(),
            "posts_seconds": (posted - started).total_seconds(),  # the API taking them in
            "images": len(images),
        }

    def stat_behind(self, backlog: Path, image: Path) -> dict[str, float]:
        """A one-image stat job sent while a routine backlog is being scored: seconds from
        the start of its POST to its result committed. The backlog is cancelled after."""
        routine = self.client.submit(backlog)
        # The backlog is being scored: its first results are in.
        while not self._scored_between([routine["id"]], allow_none=True)[0]:
            time.sleep(0.05)
        started = datetime.now(UTC)
        stat_id = self._post_image(image, "stat")
        self._wait_finished([stat_id], poll=0.05)
        _, scored = self._scored_between([stat_id])
        self.http.post(f"/v1/jobs/{routine['id']}/cancel")
        self._wait_idle()
        return {"seconds": (scored - started).total_seconds(), "backlog": routine["id"]}

    def fill(self, since: datetime) -> float:
        """Mean images over batch size of the passes finished since `since`."""
        with self.engine.connect() as connection:
            value = connection.execute(
                text(
                    "SELECT avg(images * 1.0 / capacity) FROM scoring_passes "
                    "WHERE outcome = 'scored' AND finished_at >= :since"
                ),
                {"since": since},
            ).scalar()
        return float(value or 0.0)

    def _post_image(self, path: Path, priority: str = "routine") -> str:
        with path.open("rb") as stream:
            response = self.http.post(
                "/v1/jobs",
                params={"priority": priority},
                files={"images": (path.name, stream, "image/jpeg")},
            )
        job: dict[str, Any] = response.raise_for_status().json()
        return str(job["id"])

    def _wait_finished(self, ids: list[str], poll: float = 0.25) -> None:
        query = text("SELECT count(*) FROM jobs WHERE id IN :ids AND status IN :done")
        query = query.bindparams(
            bindparam("ids", expanding=True), bindparam("done", expanding=True)
        )
        while True:
            with self.engine.connect() as connection:
                done = connection.execute(query, {"ids": ids, "done": list(FINISHED)}).scalar()
            if done == len(ids):
                return
            time.sleep(poll)

    def _wait_idle(self) -> None:
        """No pass under way: the next figure starts on an idle worker."""
        query = text("SELECT count(*) FROM scoring_passes WHERE outcome = 'running'")
        while True:
            with self.engine.connect() as connection:
                if not connection.execute(query).scalar():
                    return
            time.sleep(0.05)

    def _scored_between(self, ids: list[str], allow_none: bool = False) -> tuple[Any, Any]:
        query = text(
            "SELECT min(scored_at), max(scored_at) FROM images WHERE job_id IN :ids"
        ).bindparams(bindparam("ids", expanding=True))
        with self.engine.connect() as connection:
            first, last = connection.execute(query, {"ids": ids}).one()
        if first is None and allow_none:
            return None, None
        return _aware(first), _aware(last)

    def close(self) -> None:
        self._sampling = False
        stop(self.api, self.ingester, self.worker)
        self.engine.dispose()


def import_folder(archive: Path, root: Path) -> Path:
    """The study's files unpacked under an import root, as a shared volume would hold them."""
    folder = root / "study"
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(folder)
    return folder


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
