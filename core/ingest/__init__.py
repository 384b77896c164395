"""Ingest: turn a job's upload or folder into image rows and rejected entries.

Images are recorded as the source is expanded, a few batches at a time, and each full batch
is handed to `release` (which enqueues its scoring) at once: scoring starts while the rest of
the archive is still being expanded.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from core import job_state
from core.attempts import (
    IngestClaim,
    claim_ingest,
    defer_ingest,
    refresh_ingest_claim,
    release_ingest_claim,
)
from core.config import Settings
from core.db import Database
from core.ingest.recorder import IngestOutcome, Recorder, Release
from core.intake.entries import ArchiveError, ArchiveLimits, Entry
from core.intake.folders import iter_folder
from core.intake.kept_members import finish_kept_upload
from core.intake.received import iter_received
from core.intake.retention import keep_only_images
from core.intake.streaming_zip import UploadStillArrivingError, iter_upload
from core.models import Image, Job, RejectedEntry, SourceKind
from core.storage import Storage
from core.text import without_paths

log = logging.getLogger(__name__)


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
    """Expand the job's source and record its images; safe to run again after a crash.

    The job always ends: a member that cannot be handled is a rejected entry with its reason,
    an archive refused whole or anything unexpected fails the job once with the reason (its
    upload removed), and an ingest started `max_ingest_attempts` times without finishing
    (its worker died, or the database kept refusing what it wrote) fails the job too.
    """
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:  # its upload failed (and took the job) while ingest waited elsewhere
            return IngestOutcome(job_id, 0, False)
        if job.total is not None or job_state.is_finished(job):
            # Already ingested (a redelivered message): scoring is released by the caller.
            scoring = job_state.is_scoring(job)
            done = IngestOutcome(job_id, job.total or 0, scoring)
            stopped_while_away = job.ingest_resume_at is not None
            claim = None
        else:
            kind, source_name = SourceKind(job.source_kind), job.source_name
            claim = claim_ingest(session, job_id, settings.stall_after)
            if claim is None:
                # Another delivery is expanding this job right now; it will finish the work.
                return IngestOutcome(job_id, 0, False)
            # A start after one that died drops what that one recorded (the first has none).
            if 1 < claim.attempt <= settings.max_ingest_attempts and claim.resume_at is None:
                _forget_partial_ingest(session, job_id)
    if claim is None:
        if stopped_while_away:  # stopped while its ingest had given way to the upload
            _keep_only_images(db, storage, job_id)
        return done
    if claim.attempt > settings.max_ingest_attempts:
        return _fail(db, storage, job_id, GAVE_UP.format(times=claim.attempt - 1))
    try:
        outcome = _expand(db, storage, settings, job_id, kind, source_name, release, claim)
    except ArchiveError as exc:
        return _fail(db, storage, job_id, str(exc))
    except (OperationalError, InterfaceError):
        # The database went away or refused a write: the task runs again (counted above).
        _let_go(db, job_id)
        raise
    except Exception as exc:  # a bug or an input nobody foresaw: the job ends, with the reason
        log.exception("job %s: ingest failed", job_id)
        reason = f"ingest failed: {type(exc).__name__}: {without_paths(str(exc), storage.root)}"
        return _fail(db, storage, job_id, reason)
    if not outcome.deferred:  # else the upload is still arriving; its ingest goes on later
        _keep_only_images(db, storage, job_id)
    return outcome


def _keep_only_images(db: Database, storage: Storage, job_id: str) -> None:
    """Once recorded, the images are the job's record; the upload, which may carry patients'
    names in DICOM headers, is not kept (nor anything of it but its images)."""
    finish_kept_upload(db, storage, job_id)
    keep_only_images(db, storage, job_id)


GAVE_UP = (
    "ingest was started {times} times and never finished (its worker stopped, or the database "
    "refused what it wrote): the job is stopped; submit its images again, in smaller parts if "
    "this repeats"
)


def _expand(
    db: Database,
    storage: Storage,
    settings: Settings,
    job_id: str,
    kind: SourceKind,
    source_name: str,
    release: Release | None,
    claim: IngestClaim,
) -> IngestOutcome:
    # Files are expanded outside any transaction so the database is not held meanwhile.
    recorder = Recorder(db, storage, settings, job_id, release)
    if claim.resume_at is None:
        shutil.rmtree(storage.job_files_dir(job_id), ignore_errors=True)
    else:
        recorder.go_on()  # from where an ingest that gave way to a slow upload stopped
    keep_claim = _claim_keeper(db, job_id, settings.stall_seconds / 4)
    entries = _iter_source(storage, settings, job_id, kind, source_name, keep_claim, claim)
    try:
        for entry in entries:
            if not recorder.add(entry):
                break  # the job was cancelled meanwhile
    except UploadStillArrivingError as waiting:
        # Everything read so far is recorded before the slot is given back.
        if recorder.flush():
            with db.session() as session:
                defer_ingest(session, job_id, waiting.resume_at)
            log.info("job %s: its upload is still arriving; ingest goes on later", job_id)
            return IngestOutcome(job_id, 0, False, released=True, deferred=True)
    return recorder.finish()


def _let_go(db: Database, job_id: str) -> None:
    """Give the claim back so the retry can take it; when the database is down, the claim
    goes stale instead and the sweep sends the ingest again."""
    try:
        with db.session() as session:
            release_ingest_claim(session, job_id)
    except (OperationalError, InterfaceError):
        log.warning("job %s: ingest claim not released (database unreachable)", job_id)


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
    session.execute(delete(RejectedEntry).where(RejectedEntry.job_id == job_id))
    session.execute(delete(Image).where(Image.job_id == job_id))
    job_state.reset_for_reingest(session, job_id)


def _iter_source(
    storage: Storage,
    settings: Settings,
    job_id: str,
    kind: SourceKind,
    source_name: str,
    on_wait: Callable[[], None],
    claim: IngestClaim,
) -> Iterator[Entry]:
    limits = archive_limits(settings)
    files_dir = storage.job_files_dir(job_id)
    if kind == SourceKind.ARCHIVE:  # read while it arrives if its upload is still going on
        return iter_upload(
            storage.job_archive(job_id),
            files_dir,
            limits,
            on_wait,
            patience=settings.early_ingest_wait_seconds,
            resume_at=claim.resume_at,
        )
    if kind == SourceKind.FOLDER:
        folder = Path(source_name)
        root = next((r for r in settings.import_roots if r == folder or r in folder.parents), None)
        if root is None:
            raise ArchiveError(f"{folder} is no longer under an import root: nothing was read")
        return iter_folder(root, folder, files_dir, limits)
    return iter_received(storage, job_id, limits)


def _fail(db: Database, storage: Storage, job_id: str, reason: str) -> IngestOutcome:
    """End the job as failed with `reason`, once, and remove everything of its upload."""
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None and not job_state.is_finished(job):
            job_state.fail(job, reason)
            job.total = job.total or 0
    storage.remove_job(job_id)
    return IngestOutcome(job_id, 0, False)
