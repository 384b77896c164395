"""What a task needs in its process: settings, database, storage, model cache, decode threads,
and the gate that keeps a retried batch alone."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from core.config import Settings
from core.db import Database
from core.imaging import configure_pillow
from core.storage import Storage
from worker.heatmaps import Explainer
from worker.model_cache import ActiveModelCache


class WorkerContext:
    """Created with the app; its connections, threads and model exist per process, lazily."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = Storage(settings.storage_dir)
        configure_pillow(settings.max_image_pixels)
        self._pid: int | None = None
        self._db: Database | None = None
        self._models: ActiveModelCache | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._retries: RetryGate | None = None
        self._explainer: Explainer | None = None

    @property
    def db(self) -> Database:
        self._reset_after_fork()
        if self._db is None:
            self._db = Database(self.settings.database_url)
        return self._db

    @property
    def models(self) -> ActiveModelCache:
        self._reset_after_fork()
        if self._models is None:
            self._models = ActiveModelCache(self.settings, self.storage)
        return self._models

    @property
    def decode_pool(self) -> ThreadPoolExecutor:
        self._reset_after_fork()
        if self._decode_pool is None:
            self._decode_pool = ThreadPoolExecutor(
                self.settings.decode_threads, thread_name_prefix="decode"
            )
        return self._decode_pool

    @property
    def retries(self) -> RetryGate:
        self._reset_after_fork()
        if self._retries is None:
            self._retries = RetryGate()
        return self._retries

    @property
    def explainer(self) -> Explainer:
        """The heatmaps' own network (worker/heatmaps.py), loaded on the first heatmap."""
        self._reset_after_fork()
        if self._explainer is None:
            self._explainer = Explainer(self.storage)
        return self._explainer

    def _reset_after_fork(self) -> None:
        # A forked child must not share its parent's connections, threads or model.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._db = None
            self._models = None
            self._decode_pool = None
            self._retries = None
            self._explainer = None


class RetryGate:
    """Work started again after its worker died runs alone in its process.

    With the threads pool every task shares one process, so a crash kills them all: a batch
    retried next to others would take them down again, and they would be counted as suspects
    in turn. Ordinary batches share the gate; a retry waits for them to finish and keeps new
    ones out until it is done (in a prefork child there is only ever one task).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._sharing = 0
        self._alone = False
        self._waiting_alone = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._alone and not self._waiting_alone)
            self._sharing += 1
        try:
            yield
        finally:
            with self._changed:
                self._sharing -= 1
                self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._changed:
            self._waiting_alone += 1
            self._changed.wait_for(lambda: not self._alone and not self._sharing)
            self._waiting_alone -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._changed:
                self._alone = False
                self._changed.notify_all()
