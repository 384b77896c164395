"""The Celery application, built from Settings; nothing is created at import."""

from __future__ import annotations

from typing import Any, cast

from celery import Celery
from celery.schedules import crontab
from kombu import Exchange, Queue

from core.config import Settings
from worker.context import WorkerContext

INGEST_QUEUE, SCORING_QUEUE, TRAINING_QUEUE = "ingest", "scoring", "training"
TASK_ROUTES = {
    "worker.tasks.ingest_job": {"queue": INGEST_QUEUE},
    "worker.tasks.release_waiting_jobs": {"queue": INGEST_QUEUE},
    "worker.tasks.sweep": {"queue": INGEST_QUEUE},
    "worker.tasks.score_batch": {"queue": SCORING_QUEUE},
    "worker.tasks.schedule_retraining": {"queue": INGEST_QUEUE},
    "worker.tasks.train_model": {"queue": TRAINING_QUEUE},
}


class PneumoscanCelery(Celery):
    """A Celery app that carries the settings and the per-process worker context."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("pneumoscan", include=["worker.tasks"])
        self.settings = settings
        self.context = WorkerContext(settings)


def create_celery(settings: Settings) -> PneumoscanCelery:
    app = PneumoscanCelery(settings)
    app.conf.update(
        broker_url=settings.broker_url,
        # The embedded broker: kombu's filesystem transport, its messages written whole.
        broker_transport=(
            "worker.filesystem_broker:Transport" if settings.uses_embedded_broker else None
        ),
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        # Results live in the database, never in a result backend.
        task_ignore_result=True,
        # A task is acknowledged only once done, and requeued when its worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Each queue its own exchange and key, or one message would land in all three.
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (INGEST_QUEUE, SCORING_QUEUE, TRAINING_QUEUE)
        ],
        task_default_queue=SCORING_QUEUE,
        task_routes=TASK_ROUTES,
        worker_send_task_events=False,
        worker_enable_remote_control=not settings.uses_embedded_broker,
        worker_hijack_root_logger=True,
        timezone="UTC",
        beat_schedule={
            "sweep": {"task": "worker.tasks.sweep", "schedule": settings.sweep_seconds},
            "nightly-retraining": {
                "task": "worker.tasks.schedule_retraining",
                "schedule": crontab.from_string(settings.retrain_cron),
            },
        },
        beat_schedule_filename=str(settings.home / "celerybeat-schedule"),
    )
    return app


def context_of(app: Celery) -> WorkerContext:
    """The worker context of the app a task is bound to."""
    return cast(PneumoscanCelery, app).context


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Longer than the longest task, or Redis hands a running task to a second worker.
        options: dict[str, Any] = {"visibility_timeout": settings.broker_visibility_timeout}
        if settings.broker_prefix:
            options["global_keyprefix"] = settings.broker_prefix
        return options
    if not settings.uses_embedded_broker:
        return {}
    queue_dir = settings.broker_dir / "queue"
    control_dir = settings.broker_dir / "control"
    for directory in (queue_dir, control_dir):
        directory.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "control_folder": str(control_dir),
        "store_processed": False,
        "polling_interval": settings.broker_poll_seconds,
    }
