"""The HTTP API: `create_app(settings=None)` builds it; it never imports TensorFlow."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from apiflask import APIFlask

from api import (
    callbacks,
    docs,
    errors,
    health,
    jobs,
    metrics,
    models,
    results,
    training,
    ui,
    uploads,
)
from api.context import EXTENSION, ApiContext
from api.openapi import RequestBodiesPlugin
from api.schemas import ErrorOut
from api.uploads import StreamingUploadRequest
from core.broker.queue import TaskQueue
from core.config import Settings, load_settings
from core.db import Database
from core.storage import Storage


def create_app(settings: Settings | None = None) -> APIFlask:
    """Build the API for `settings` (read from the environment when not given)."""
    settings = settings or load_settings()
    bodies = RequestBodiesPlugin()
    app = APIFlask(
        "pneumoscan",
        title="pneumoscan",
        version=_package_version(),
        spec_path="/openapi.json",
        docs_path="/docs",
        spec_plugins=[bodies],
    )
    app.request_class = StreamingUploadRequest
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        VALIDATION_ERROR_STATUS_CODE=400,
        VALIDATION_ERROR_SCHEMA=ErrorOut,
        HTTP_ERROR_SCHEMA=ErrorOut,
        JSON_SORT_KEYS=False,
        SYNC_LOCAL_SPEC=False,
    )
    app.extensions[EXTENSION] = ApiContext(
        settings=settings,
        db=Database(settings.database_url),
        storage=Storage(settings.storage_dir),
        queue=TaskQueue(settings),
    )
    errors.init_app(app)
    docs.init_app(app)
    uploads.init_app(app, settings.upload_idle_seconds)
    health.init_app(app)
    metrics.init_app(app)
    jobs.init_app(app, bodies)
    results.init_app(app)
    models.init_app(app)
    training.init_app(app)
    callbacks.init_app(app)
    ui.init_app(app, settings)
    return app


def _package_version() -> str:
    try:
        return version("pneumoscan")
    except PackageNotFoundError:
        return "0+unknown"
