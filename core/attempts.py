"""The one claim on a job's ingest: how many times it was taken, whether it went stale, where
an ingest that gave way goes on from. (Scoring counts its starts per image, in
core/scoring_queue.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.job_state import UNFINISHED_STATUSES
from core.models import Job, utcnow


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
