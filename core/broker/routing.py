"""Queues, routes and the Celery configuration, built from Settings.

The workers' app (`worker.celery_app`) and the senders' `TaskQueue` are configured from the
same function, so a message sent anywhere lands on the queue a worker reads.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from core.config import Settings

INGEST_QUEUE, SCORING_QUEUE, TRAINING_QUEUE = "ingest", "scoring", "training"

# Task names: the workers register these (worker/tasks.py); senders use only the names.
INGEST_JOB = "worker.tasks.ingest_job"
SCORE_PASS = "worker.tasks.score_pass"
# Per-job batches, from before the scoring queue: still taken, as wake-ups.
SCORE_BATCH = "worker.tasks.score_batch"
RELEASE_WAITING_JOBS = "worker.tasks.release_waiting_jobs"
TRAIN_MODEL = "worker.tasks.train_model"
SCHEDULE_RETRAINING = "worker.tasks.schedule_retraining"
SWEEP = "worker.tasks.sweep"
MAKE_HEATMAP = "worker.tasks.make_heatmap"
SEND_CALLBACKS = "worker.tasks.send_callbacks"

TASK_ROUTES = {
    INGEST_JOB: {"queue": INGEST_QUEUE},
    RELEASE_WAITING_JOBS: {"queue": INGEST_QUEUE},
    SWEEP: {"queue": INGEST_QUEUE},
    SCORE_PASS: {"queue": SCORING_QUEUE},
    SCORE_BATCH: {"queue": SCORING_QUEUE},
    # Scoring workers have TensorFlow; a heatmap is one image's forward and backward pass.
    MAKE_HEATMAP: {"queue": SCORING_QUEUE},
    SCHEDULE_RETRAINING: {"queue": INGEST_QUEUE},
    # HTTP POSTs: no TensorFlow, short.
    SEND_CALLBACKS: {"queue": INGEST_QUEUE},
    TRAIN_MODEL: {"queue": TRAINING_QUEUE},
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Everything Celery needs to know, for workers, beat and senders alike."""
    from celery.schedules import crontab

    return {
        "broker_url": settings.broker_url,
        # The embedded broker: kombu's filesystem transport, its messages written whole.
        "broker_transport": (
            "core.broker.filesystem:Transport" if settings.uses_embedded_broker else None
        ),
        "broker_transport_options": _transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Results live in the database, never in a result backend.
        "task_ignore_result": True,
        # A task is acknowledged only once done, and requeued when its worker dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Each queue its own exchange and key, or one message would land in all three.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (INGEST_QUEUE, SCORING_QUEUE, TRAINING_QUEUE)
        ],
        "task_default_queue": SCORING_QUEUE,
        "task_routes": TASK_ROUTES,
        "worker_send_task_events": False,
        "worker_enable_remote_control": not settings.uses_embedded_broker,
        "worker_hijack_root_logger": True,
        "timezone": "UTC",
        "beat_schedule": {
            "sweep": {"task": SWEEP, "schedule": settings.sweep_seconds},
            "callbacks": {"task": SEND_CALLBACKS, "schedule": settings.delivery_poll_seconds},
            "nightly-retraining": {
                "task": SCHEDULE_RETRAINING,
                "schedule": crontab.from_string(settings.retrain_cron),
            },
        },
        "beat_schedule_filename": str(settings.home / "celerybeat-schedule"),
    }


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
