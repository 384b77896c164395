"""Ingest: turn a job's upload or folder into image rows and rejected entries.

Images are recorded as the source is expanded, a few batches at a time, and each full batch
is handed to `release` (which enqueues its scoring) at once: scoring starts while the rest of
the archive is still being expanded.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from core.archive import (
    ArchiveBudget,
    ArchiveError,
    ArchiveLimitError,
    ArchiveLimits,
    Candidate,
    Entry,
    Rejection,
    is_ignored,
    is_zip_file,
    iter_archive,
    iter_folder,
)
from core.arriving import iter_upload, part_path
from core.config import Settings
from core.db import Database
from core.imaging import DICOM, sniff_file
from core.jobs import MANIFEST, WAITING_FOR_MODEL, get_job
from core.kept import finish_kept_upload
from core.models import (
    DICOM_COLUMNS,
    FINISHED_STATUSES,
    BatchAttempt,
    Image,
    Job,
    JobStatus,
    RejectedEntry,
    SourceKind,
    utcnow,
)
from core.recovery import claim_ingest, refresh_ingest_claim
from core.registry import active_version
from core.results import complete_if_done
from core.storage import Storage, sha256_of

ARCHIVE_NAME = "archive.zip"
BATCHES_PER_FLUSH = 2  # rows are written, and batches released, this many batches at a time

Release = Callable[[list[int]], None]


@dataclass(frozen=True)
class IngestOutcome:
    """What ingest left behind."""

    job_id: str
    total: int
    scoring: bool  # the job is running with a model, not waiting for one
    released: bool = False  # this call already handed every batch to `release`


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_members=settings.max_archive_members,
        max_total_bytes=settings.max_archive_mb * 1024 * 1024,
        max_ratio=settings.max_compression_ratio,
    )


def ingest_job(
    db: Database,
    storage: Storage,
    settings: Settings,
    job_id: str,
    release: Release | None = None,
) -> IngestOutcome:
    """Expand the job's source and record its images; safe to run again after a crash."""
    with db.session() as session:
        job = get_job(session, job_id)
        if job.total is not None or job.status in FINISHED_STATUSES:
            # Already ingested (a redelivered message): scoring is released by the caller.
            scoring = job.status == JobStatus.RUNNING and not job.waiting_for_model
            return IngestOutcome(job_id, job.total or 0, scoring)
        kind, source_name = job.source_kind, job.source_name
        if not claim_ingest(session, job_id, settings.stall_after):
            # Another delivery is expanding this job right now; it will finish the work.
            return IngestOutcome(job_id, 0, False)
        _forget_partial_ingest(session, job_id)
    # Files are expanded outside any transaction so the database is not held meanwhile.
    shutil.rmtree(storage.job_files_dir(job_id), ignore_errors=True)
    recorder = _Recorder(db, storage, settings, job_id, release)
    keep_claim = _claim_keeper(db, job_id, settings.stall_seconds / 4)
    try:
        entries = _iter_source(storage, settings, job_id, SourceKind(kind), source_name, keep_claim)
        for entry in entries:
            if not recorder.add(entry):
                break  # the job was cancelled meanwhile
        outcome = recorder.finish()
    except ArchiveError as exc:
        outcome = _fail(db, job_id, str(exc))
    # Once recorded, the expanded files are the job's record; the archive, which may carry
    # patients' names in DICOM headers, is not kept (nor anything of it but its images).
    archive = storage.job_dir(job_id) / ARCHIVE_NAME
    for leftover in (archive, part_path(archive)):
        leftover.unlink(missing_ok=True)
    finish_kept_upload(db, storage, job_id)
    return outcome


def _claim_keeper(db: Database, job_id: str, every_seconds: float) -> Callable[[], None]:
    """Called while ingest waits for an upload: refreshes its claim every so often."""
    last = time.monotonic()

    def keep() -> None:
        nonlocal last
        if time.monotonic() - last >= every_seconds:
            with db.session() as session:
                refresh_ingest_claim(session, job_id)
            last = time.monotonic()

    return keep


def _forget_partial_ingest(session: Session, job_id: str) -> None:
    """Rows of an ingest whose worker died: drop them and start clean (their files go too)."""
    session.execute(delete(BatchAttempt).where(BatchAttempt.job_id == job_id))
    session.execute(delete(RejectedEntry).where(RejectedEntry.job_id == job_id))
    session.execute(delete(Image).where(Image.job_id == job_id))
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(scored=0, errors=0, rejected=0, model_versions=[], status=JobStatus.QUEUED)
    )


class _Recorder:
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
            row = _classify(entry, self.storage, self.settings.dicom_accept_any, self.seen)
            if isinstance(row, Rejection):
                self.rejected.append(row)
            else:
                self.images.append(row)
        if len(self.images) >= self.chunk:
            return self._flush(final=False)
        return True

    def finish(self) -> IngestOutcome:
        self._flush(final=True)
        with self.db.session() as session:
            job = session.get(Job, self.job_id)
            if job is None:  # its submission failed while it was being read
                return IngestOutcome(self.job_id, 0, False, released=True)
            scoring = job.status == JobStatus.RUNNING and not job.waiting_for_model
            return IngestOutcome(self.job_id, job.total or 0, scoring, released=True)

    def _flush(self, final: bool) -> bool:
        with self.db.session() as session:
            job = session.get(Job, self.job_id, with_for_update=True)
            if job is None or job.status in FINISHED_STATUSES:
                return False  # cancelled (or failed) while being ingested
            self._write(session, job)
            if final:
                self._close(session, job)
            batches = self._full_batches(session, final) if self.scoring else []
        # Enqueued only after the commit, so a worker always finds the rows.
        for image_ids in batches:
            if self.release is not None:
                self.release(image_ids)
        return True

    def _write(self, session: Session, job: Job) -> None:
        if self.images:
            session.execute(insert(Image), [{**row, "job_id": self.job_id} for row in self.images])
        if self.rejected:
            session.execute(
                insert(RejectedEntry),
                [
                    {"job_id": self.job_id, "path": r.path, "reason": r.reason}
                    for r in self.rejected
                ],
            )
        job.rejected += len(self.rejected)
        self.images, self.rejected = [], []
        if self.scoring is None:
            self.scoring = active_version(session) is not None
            if self.scoring:
                job.status, job.started_at = JobStatus.RUNNING, utcnow()

    def _close(self, session: Session, job: Job) -> None:
        total = session.scalar(select(func.count()).where(Image.job_id == self.job_id)) or 0
        job.total = total
        if total == 0:
            job.status, job.finished_at = JobStatus.FAILED, utcnow()
            job.status_detail = f"no scorable images found ({job.rejected} entries rejected)"
            self.scoring = False
        elif not self.scoring:
            job.status = JobStatus.QUEUED
            job.waiting_for_model, job.status_detail = True, WAITING_FOR_MODEL
        else:
            session.flush()
            complete_if_done(session, self.job_id)  # every batch may have finished already

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


def _iter_source(
    storage: Storage,
    settings: Settings,
    job_id: str,
    kind: SourceKind,
    source_name: str,
    on_wait: Callable[[], None],
) -> Iterator[Entry]:
    limits = archive_limits(settings)
    files_dir = storage.job_files_dir(job_id)
    if kind == SourceKind.ARCHIVE:  # read while it arrives if its upload is still going on
        return iter_upload(storage.job_dir(job_id) / ARCHIVE_NAME, files_dir, limits, on_wait)
    if kind == SourceKind.FOLDER:
        folder = Path(source_name)
        root = next(
            (r for r in settings.import_roots if r == folder or r in folder.parents), folder
        )
        return iter_folder(root, folder, files_dir, limits)
    return _iter_received(storage, job_id, files_dir, limits)


def _iter_received(
    storage: Storage, job_id: str, files_dir: Path, limits: ArchiveLimits
) -> Iterator[Entry]:
    received = storage.job_dir(job_id) / "received"
    budget = ArchiveBudget(limits)
    for item in json.loads((received / MANIFEST).read_text()):
        path, relative = received / item["file"], item["relative_path"]
        if is_ignored(relative):
            continue
        if not is_zip_file(path):
            yield Candidate(relative, path)
            continue
        try:
            for entry in iter_archive(path, files_dir / item["file"], limits, budget):
                if isinstance(entry, Candidate):
                    yield Candidate(f"{relative}/{entry.relative_path}", entry.path, entry.sha256)
                else:
                    yield Rejection(f"{relative}/{entry.path}", entry.reason)
        except ArchiveLimitError:
            raise
        except ArchiveError as exc:
            yield Rejection(relative, f"archive refused: {exc}")


def _classify(
    candidate: Candidate, storage: Storage, accept_any_dicom: bool, seen: set[str]
) -> dict | Rejection:
    """An image row for the candidate, or the reason it is not one."""
    fmt = sniff_file(candidate.path, candidate.span)
    reason: str | None = None if fmt else "not a JPEG, PNG or DICOM image"
    facts: dict[str, str | None] = {}
    if fmt == DICOM:
        reason, facts = _dicom_facts(candidate.path, storage, accept_any_dicom)
    if reason:
        if candidate.span is None and storage.root in candidate.path.resolve().parents:
            candidate.path.unlink()  # our copy of something never scored is not kept
        return Rejection(candidate.relative_path, reason)
    if fmt == DICOM and candidate.sha256:
        candidate = Candidate(candidate.relative_path, candidate.path)  # de-identified: rehash
    return {
        "relative_path": _unique(candidate.relative_path, seen),
        "location": storage.relative(candidate.path),
        "format": fmt,
        "size_bytes": candidate.span.length if candidate.span else candidate.path.stat().st_size,
        "member_offset": candidate.span.offset if candidate.span else None,
        "sha256": candidate.sha256 or sha256_of(candidate.path),
        **facts,
    }


def _dicom_facts(
    path: Path, storage: Storage, accept_any: bool
) -> tuple[str | None, dict[str, str | None]]:
    """(why it is refused, or None; its identifiers and acquisition facts)."""
    from core import dicom

    try:
        info = dicom.read_info(path)
    except dicom.DicomError as exc:
        return str(exc), {}
    reason = dicom.refusal(info, accept_any)
    if reason:
        return reason, {}
    if storage.root in path.resolve().parents:
        dicom.deidentify(path)  # our own copy: keep no name or birth date on our disks
    return None, {column: getattr(info, column) for column in DICOM_COLUMNS}


def _unique(relative_path: str, seen: set[str]) -> str:
    """Keep members with the same name apart: the second becomes 'name (2)'."""
    candidate, n = relative_path, 1
    while candidate in seen:
        n += 1
        candidate = f"{relative_path} ({n})"
    seen.add(candidate)
    return candidate


def _fail(db: Database, job_id: str, reason: str) -> IngestOutcome:
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None and job.status not in FINISHED_STATUSES:
            job.status, job.status_detail, job.finished_at = JobStatus.FAILED, reason, utcnow()
            job.total = job.total or 0
    return IngestOutcome(job_id, 0, False)
