"""Recovery after crashes and lost messages; the periodic sweep calls these.

Every scoring step is idempotent, so the safe answer to "was this message lost?" is to
send the work again once nothing has moved for a while.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.arriving import PART_SUFFIX, held_by_writer
from core.job_state import UNFINISHED_STATUSES
from core.models import BatchAttempt, Image, Job, JobStatus, utcnow
from core.storage import Storage

INCOMING = ".incoming"


def batch_key(job_id: str, image_ids: Sequence[int]) -> str:
    return hashlib.sha256(f"{job_id}:{sorted(image_ids)}".encode()).hexdigest()


def count_attempt(session: Session, job_id: str, image_ids: Sequence[int]) -> int:
    """One more start of this batch; returns how many starts there have been."""
    key = batch_key(job_id, image_ids)
    row = session.get(BatchAttempt, key, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                row = BatchAttempt(key=key, job_id=job_id, attempts=1)
                session.add(row)
            return 1
        except IntegrityError:
            row = session.get(BatchAttempt, key, with_for_update=True, populate_existing=True)
            assert row is not None
    row.attempts += 1
    return row.attempts


def forget_attempts(session: Session, job_id: str, image_ids: Sequence[int]) -> None:
    session.execute(delete(BatchAttempt).where(BatchAttempt.key == batch_key(job_id, image_ids)))


@dataclass(frozen=True)
class IngestClaim:
    attempt: int  # which start of the job's ingest this is
    resume_at: int | None  # the upload's byte to go on from, when an ingest gave way


def claim_ingest(session: Session, job_id: str, stale_after: timedelta) -> IngestClaim | None:
    """Only one ingest expands a job at a time; a claim older than `stale_after` was lost, and
    one whose ingest gave way to a slow upload (`defer_ingest`) is there for the next taker.

    Returns the claim, or None when another holds it (or the job needs no ingest)."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.status not in UNFINISHED_STATUSES or job.total is not None:
        return None
    started = job.ingest_started_at
    if started is not None and started >= utcnow() - stale_after and job.ingest_resume_at is None:
        return None
    claim = IngestClaim(job.ingest_attempts + 1, job.ingest_resume_at)
    job.ingest_started_at, job.ingest_attempts = utcnow(), claim.attempt
    job.ingest_resume_at = None  # taken: should this start die, the next one starts clean
    return claim


def release_ingest_claim(session: Session, job_id: str) -> None:
    """Let the next delivery claim the ingest at once (this one stopped on an error)."""
    session.execute(update(Job).where(Job.id == job_id).values(ingest_started_at=None))


def defer_ingest(session: Session, job_id: str, resume_at: int) -> None:
    """This ingest gives way to a slow upload: the next taker goes on from `resume_at`, and
    this start is not counted against the job's ingest attempts. The claim stays fresh, so
    the sweep sends nothing while the deferred message is on its way."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            ingest_started_at=utcnow(),
            ingest_attempts=Job.ingest_attempts - 1,
            ingest_resume_at=resume_at,
        )
    )


def refresh_ingest_claim(session: Session, job_id: str) -> None:
    """A live ingest waiting for its upload keeps its claim: the sweep leaves it alone."""
    session.execute(update(Job).where(Job.id == job_id).values(ingest_started_at=utcnow()))


def jobs_to_ingest_again(session: Session, stale_after: timedelta) -> list[str]:
    """Jobs whose ingest never started or never finished (a lost message, a dead worker)."""
    cutoff = utcnow() - stale_after
    return list(
        session.scalars(
            select(Job.id).where(
                Job.status.in_(UNFINISHED_STATUSES),
                Job.total.is_(None),
                Job.waiting_for_model.is_(False),
                Job.created_at < cutoff,
                (Job.ingest_started_at.is_(None)) | (Job.ingest_started_at < cutoff),
            )
        )
    )


def jobs_to_score_again(session: Session, stale_after: timedelta) -> list[str]:
    """Running jobs with unscored images and no progress for `stale_after`; marked as moved,
    so the next sweep waits another `stale_after` before sending their batches again."""
    cutoff = utcnow() - stale_after
    pending = exists().where(Image.job_id == Job.id, Image.scored_at.is_(None))
    stalled = list(
        session.scalars(
            select(Job.id).where(Job.status == JobStatus.RUNNING, Job.updated_at < cutoff, pending)
        )
    )
    if stalled:
        session.execute(update(Job).where(Job.id.in_(stalled)).values(updated_at=utcnow()))
    return stalled


def remove_orphan_uploads(session: Session, storage: Storage, older_than: timedelta) -> int:
    """Uploads nobody will finish: temporary files no live request holds, and job folders
    without a job row (the API died between storing and committing)."""
    removed = 0
    incoming = storage.root / "uploads" / INCOMING
    for path in incoming.glob("upload-*") if incoming.is_dir() else []:
        if not held_by_writer(path):
            path.unlink(missing_ok=True)
            removed += 1
    cutoff = (utcnow() - older_than).timestamp()
    uploads = storage.root / "uploads"
    for folder in uploads.iterdir() if uploads.is_dir() else []:
        if folder.name == INCOMING or folder.stat().st_mtime > cutoff:
            continue
        if any(held_by_writer(part) for part in folder.glob(f"*{PART_SUFFIX}")):
            continue  # a raw zip still arriving: its job row is made once it is in
        if session.get(Job, folder.name) is None:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
