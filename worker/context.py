"""What a task needs in its process: settings, database, storage, model cache, decode threads."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from core.config import Settings
from core.db import Database
from core.imaging import configure_pillow
from core.storage import Storage

if TYPE_CHECKING:
    from worker.scoring import ActiveModelCache


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
            from worker.scoring import ActiveModelCache

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

    def _reset_after_fork(self) -> None:
        # A forked child must not share its parent's connections, threads or model.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._db = None
            self._models = None
            self._decode_pool = None
