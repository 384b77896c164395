"""A running pneumoscan: the API in this process, a real worker process, one database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api import create_app
from core import registry
from core.activation import activate_version
from core.broker.queue import TaskQueue
from core.config import Settings
from core.db import Database
from core.storage import Storage
from tests.support import WorkerProcess, api_client, wait_for
from worker.celery_app import create_celery

FINISHED = ("completed", "failed", "cancelled")


class Stack:
    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.tmp_path = tmp_path
        self.app = create_app(settings)
        self.client = api_client(self.app)
        self.db = Database(settings.database_url)
        self.queue = TaskQueue(settings)
        # The workers' own app, to send the tasks no API call sends (beat's, a batch's).
        self.celery = create_celery(settings)
        self.worker: WorkerProcess | None = None

    def start_worker(self) -> WorkerProcess:
        self.worker = WorkerProcess(self.settings, self.tmp_path / "worker.log")
        return self.worker

    def import_model(self, path: Path, activate: bool = True, preprocessing: str = "squash") -> str:
        with self.db.session() as session:
            row = registry.import_model(
                session, Storage(self.settings.storage_dir), path, preprocessing=preprocessing
            )
        if activate:
            # What `pneumoscan models import --activate` does.
            activate_version(self.db, row.version, self.queue.release_waiting_jobs)
        return row.version

    def client_of(self, owner: str) -> Any:
        """A test client with a submit key of its own name: another owner's jobs."""
        return api_client(self.app, scope="submit", name=owner)

    def submit_zip(
        self, data: bytes, name: str = "study.zip", client: Any = None, priority: str = "routine"
    ) -> dict[str, Any]:
        import io

        response = (client or self.client).post(
            f"/v1/jobs?priority={priority}",
            data={"archive": (io.BytesIO(data), name)},
            content_type="multipart/form-data",
        )
        assert response.status_code == 202, response.get_json()
        body: dict[str, Any] = response.get_json()
        return body

    def ingest_first(self, job_ids: list[str]) -> None:
        """An ingest-only worker expands the jobs before any scoring worker runs, so the first
        pass can choose among all of them."""
        ingester = WorkerProcess(self.settings, self.tmp_path / "ingest.log", queues="ingest")
        try:
            for job_id in job_ids:
                wait_for(lambda j=job_id: self.job(j)["total"] is not None, 60, "the ingests")
        finally:
            ingester.stop()

    def job(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get(f"/v1/jobs/{job_id}").get_json()
        return body

    def wait_finished(self, job_id: str, timeout: float = 180) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in FINISHED else None

        try:
            result: dict[str, Any] = wait_for(finished, timeout, f"job {job_id}", interval=0.3)
        except TimeoutError:
            log = self.worker.log()[-4000:] if self.worker else "(no worker)"
            raise AssertionError(
                f"job {job_id} stuck at {self.job(job_id)}\nworker log:\n{log}"
            ) from None
        return result

    def results(self, job_id: str) -> list[dict[str, Any]]:
        body = self.client.get(f"/v1/jobs/{job_id}/results?per_page=5000").get_json()
        items: list[dict[str, Any]] = body["items"]
        return items

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.db.dispose()
        self.app.extensions["pneumoscan"].db.dispose()
