"""What the API's views share: settings, database, storage and the Celery app to enqueue with."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from core.config import Settings
from core.db import Database
from core.storage import Storage
from worker.celery_app import PneumoscanCelery

EXTENSION = "pneumoscan"


@dataclass
class ApiContext:
    settings: Settings
    db: Database
    storage: Storage
    celery: PneumoscanCelery


def api_context(app: Flask) -> ApiContext:
    context: ApiContext = app.extensions[EXTENSION]
    return context
