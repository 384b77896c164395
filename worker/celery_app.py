"""The workers' Celery application, built from Settings; nothing is created at import."""

from __future__ import annotations

from typing import cast

from celery import Celery

from core.broker.routing import celery_config
from core.config import Settings
from worker.context import WorkerContext


class PneumoscanCelery(Celery):
    """A Celery app that carries the settings and the per-process worker context."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("pneumoscan", include=["worker.tasks"])
        self.settings = settings
        self.context = WorkerContext(settings)


def create_celery(settings: Settings) -> PneumoscanCelery:
    app = PneumoscanCelery(settings)
    app.conf.update(celery_config(settings))
    return app


def context_of(app: Celery) -> WorkerContext:
    """The worker context of the app a task is bound to."""
    return cast(PneumoscanCelery, app).context
