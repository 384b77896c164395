"""The enqueue port: how the API and the CLI start work in the workers.

Tasks are sent by name, so a sender imports neither the workers nor TensorFlow. A broker that
cannot be reached is one domain error (`QueueUnavailableError`, 503 in the API) whatever was
being sent; each caller first undoes what the message was for.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import OperationalError

from core.broker.routing import (
    INGEST_JOB,
    MAKE_HEATMAP,
    RELEASE_WAITING_JOBS,
    TRAIN_MODEL,
    celery_config,
)
from core.config import Settings
from core.errors import UnavailableError

log = logging.getLogger(__name__)


class QueueUnavailableError(UnavailableError):
    code = "queue_unavailable"


class TaskQueue:
    """Sends ingest, training, heatmap and release messages; built once per process,
    connects lazily."""

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("pneumoscan", set_as_current=False)
        self._app.conf.update(celery_config(settings))

    def ingest(self, job_id: str) -> None:
        self._send(INGEST_JOB, job_id)

    def train(self, run_id: int) -> None:
        self._send(TRAIN_MODEL, run_id)

    def heatmap(self, image_id: int) -> None:
        self._send(MAKE_HEATMAP, image_id)

    def release_waiting_jobs(self) -> None:
        self._send(RELEASE_WAITING_JOBS)

    def check(self) -> None:
        """Raise when the broker cannot be reached (for readiness)."""
        with self._app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)

    def _send(self, name: str, *args: object) -> None:
        try:
            self._app.send_task(name, args=list(args))
        except OperationalError as exc:
            log.error("could not send %s%s: %s", name, args, exc)
            raise QueueUnavailableError("the job queue is unavailable; try again shortly") from exc
