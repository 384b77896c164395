"""Recording an ingest's entries: image rows and rejected entries written a few batches at a
time, each full batch released to scoring as soon as its rows are committed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from core import job_state
from core.config import Settings
from core.db import Database
from core.intake.classify import classify_entry
from core.intake.entries import Entry, Rejection
from core.models import Image, Job, RejectedEntry
from core.registry import active_version
from core.storage import Storage
from core.text import storable, without_paths

MAX_SHOWN_PATH = 2000  # a rejected entry's path as shown (refused names may be any length)
BATCHES_PER_FLUSH = 2  # rows are written, and batches released, this many batches at a time


Release = Callable[[list[int]], None]


@dataclass(frozen=True)
class IngestOutcome:
    """What ingest left behind."""

    job_id: str
    total: int
    scoring: bool  # the job is running with a model, not waiting for one
    released: bool = False  # this call already handed every batch to `release`
    deferred: bool = False  # gave way to a slow upload: send the ingest again in a while


class Recorder:
    """Classifies entries as they come and writes them a few batches at a time."""

    def __init__(
        self,
        db: Database,
        storage: Storage,
        settings: Settings,
        job_id: str,
        release: Release | None,
    ) -> None:
        self.db, self.storage, self.settings, self.job_id = db, storage, settings, job_id
        self.release = release
        self.images: list[dict] = []
        self.rejected: list[Rejection] = []
        self.seen: set[str] = set()
        self.scoring: bool | None = None  # decided at the first write: is a model active?
        self.released_up_to = 0  # image ids up to here were handed to `release`
        self.chunk = settings.batch_size * BATCHES_PER_FLUSH

    def add(self, entry: Entry) -> bool:
        """Record one entry; False when the job was stopped and ingest should end."""
        if isinstance(entry, Rejection):
            self.rejected.append(entry)
        else:
            row = classify_entry(
                entry,
                self.storage,
                self.storage.job_dir(self.job_id),
                self.settings.dicom_accept_any,
                self.seen,
            )
            if isinstance(row, Rejection):
                self.rejected.append(row)
            else:
                self.images.append(row)
        if len(self.images) >= self.chunk:
            return self.flush()
        return True

    def go_on(self) -> None:
        """Take up the rows an earlier part of this ingest recorded (it gave way to a slow
        upload): their names stay taken, and their full batches were released."""
        with self.db.session() as session:
            ids_and_paths = session.execute(
                select(Image.id, Image.relative_path)
                .where(Image.job_id == self.job_id)
                .order_by(Image.id)
            ).all()
        self.seen = {path for _, path in ids_and_paths}
        # Each write released every full batch of the rows not yet released, in id order.
        released = len(ids_and_paths) - len(ids_and_paths) % self.settings.batch_size
        self.released_up_to = ids_and_paths[released - 1][0] if released else 0

    def flush(self) -> bool:
        """Write what is held and release its full batches; False when the job was stopped."""
        return self._flush(final=False) is not None

    def finish(self) -> IngestOutcome:
        """The last write: the job's total, its state, its last images released."""
        return self._flush(final=True) or IngestOutcome(self.job_id, 0, False, released=True)

    def _flush(self, final: bool) -> IngestOutcome | None:
        """Write what is held, release full batches (all, when `final`); None when the job
        is gone, or was stopped while being ingested (cancelled or failed)."""
        with self.db.session() as session:
            job = session.get(Job, self.job_id, with_for_update=True)
            if job is None or job_state.is_finished(job):
                return None
            self._write(session, job)
            if final:
                self._close(session, job)
            batches = self._full_batches(session, final) if self.scoring else []
            outcome = IngestOutcome(
                self.job_id, job.total or 0, job_state.is_scoring(job), released=True
            )
        # Enqueued only after the commit, so a worker always finds the rows.
        for image_ids in batches:
            if self.release is not None:
                self.release(image_ids)
        return outcome

    def _write(self, session: Session, job: Job) -> None:
        if self.images:
            session.execute(insert(Image), [{**row, "job_id": self.job_id} for row in self.images])
        if self.rejected:
            session.execute(
                insert(RejectedEntry),
                [
                    {
                        "job_id": self.job_id,
                        "path": storable(r.path, MAX_SHOWN_PATH),
                        "reason": storable(without_paths(r.reason, self.storage.root), 2000),
                    }
                    for r in self.rejected
                ],
            )
        job.rejected += len(self.rejected)
        self.images, self.rejected = [], []
        if self.scoring is None:
            self.scoring = active_version(session) is not None
            if self.scoring:
                job_state.start(job)

    def _close(self, session: Session, job: Job) -> None:
        total = session.scalar(select(func.count()).where(Image.job_id == self.job_id)) or 0
        job.total = total
        if total == 0:
            job_state.fail(job, f"no scorable images found ({job.rejected} entries rejected)")
            self.scoring = False
        elif not self.scoring:
            job_state.park(job)
        else:
            session.flush()  # every batch may have finished already
            job_state.complete_if_done(session, self.job_id)

    def _full_batches(self, session: Session, final: bool) -> list[list[int]]:
        ids = list(
            session.scalars(
                select(Image.id)
                .where(Image.job_id == self.job_id, Image.id > self.released_up_to)
                .order_by(Image.id)
            )
        )
        size = self.settings.batch_size
        cut = len(ids) if final else len(ids) - len(ids) % size
        if cut:
            self.released_up_to = ids[cut - 1]
        return [ids[start : min(start + size, cut)] for start in range(0, cut, size)]
