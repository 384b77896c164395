"""What the API's views share: settings, database, storage and the queue that starts work."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from core.broker.queue import TaskQueue
from core.config import Settings
from core.db import Database
from core.storage import Storage

EXTENSION = "pneumoscan"


@dataclass
class ApiContext:
    settings: Settings
    db: Database
    storage: Storage
    queue: TaskQueue


def api_context(app: Flask) -> ApiContext:
    context: ApiContext = app.extensions[EXTENSION]
    return context
