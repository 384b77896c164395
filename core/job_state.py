"""A job's lifecycle: every change of `Job.status` is one of the named transitions here.

```
            start (a model is active)           complete_if_done
  queued ─────────────────────────────> running ────────────────> completed
    ^  \\                                   │
    │   park_for_model ... release ─────────┘ (release: waiting -> running)
    │
    └── reset_for_reingest (an ingest whose worker died starts clean)

  queued or running ── fail ──> failed      queued or running ── cancel ──> cancelled
```

"Waiting for a model" is not a status: the job stays `queued` with `waiting_for_model` set
(docs/architecture.md). Transitions on a loaded row change it in the caller's transaction;
those given an id are single SQL updates, guarded so that two processes cannot both make them.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.errors import ConflictError
from core.models import FINISHED_STATUSES, Job, JobStatus, Priority, SourceKind, utcnow
from core.text import storable

UNFINISHED_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
STOPPED_STATUSES = (JobStatus.CANCELLED, JobStatus.FAILED)
WAITING_FOR_MODEL = (
    "waiting for an active model: import one with `pneumoscan models import MODEL.keras --activate`"
)


class JobFinishedError(ConflictError):
    code = "job_finished"


def new_job(
    job_id: str,
    kind: SourceKind,
    source_name: str,
    owner: str | None,
    priority: Priority = Priority.ROUTINE,
) -> Job:
    """A job as submitted: queued, nothing counted yet."""
    return Job(
        id=job_id,
        source_kind=kind,
        source_name=source_name,
        status=JobStatus.QUEUED,
        owner=owner,
        priority=priority,
    )


def is_stopped(job: Job | None) -> bool:
    """Gone, cancelled or failed: nothing more of it is scored (a completed job is not
    stopped; its images stay)."""
    return job is None or job.status in STOPPED_STATUSES


def is_finished(job: Job) -> bool:
    return job.status in FINISHED_STATUSES


def is_scoring(job: Job) -> bool:
    """Running with a model: its batches may be sent to the scoring workers."""
    return job.status == JobStatus.RUNNING and not job.waiting_for_model


def start(job: Job) -> None:
    """A model is active: the job's batches are scored as ingest records them."""
    job.status, job.started_at = JobStatus.RUNNING, job.started_at or utcnow()


def park(job: Job, detail: str = WAITING_FOR_MODEL) -> None:
    """No model is active: the job waits, queued, until one is (`release`)."""
    job.status, job.waiting_for_model, job.status_detail = JobStatus.QUEUED, True, detail


def park_for_model(session: Session, job_id: str, detail: str = WAITING_FOR_MODEL) -> None:
    """Put an unfinished job back to wait until a (usable) model is activated."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(UNFINISHED_STATUSES))
        .values(waiting_for_model=True, status=JobStatus.QUEUED, status_detail=detail)
    )


def release(session: Session, job_id: str) -> bool:
    """A waiting job starts; False when another process released it first."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.waiting_for_model.is_(True))
        .values(
            waiting_for_model=False,
            status=JobStatus.RUNNING,
            status_detail=None,
            started_at=utcnow(),
        )
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def waiting_jobs(session: Session) -> list[str]:
    return list(session.scalars(select(Job.id).where(Job.waiting_for_model.is_(True))))


def complete_if_done(session: Session, job_id: str) -> None:
    """Mark the job completed when every image has a result (and ingest counted them all)."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.total.is_not(None),
            Job.scored + Job.errors >= Job.total,
        )
        .values(status=JobStatus.COMPLETED, finished_at=now, updated_at=now, status_detail=None)
    )


def fail(job: Job, reason: str) -> None:
    """End an unfinished job as failed with `reason`; a finished job stays as it ended."""
    if is_finished(job):
        return
    job.status, job.finished_at = JobStatus.FAILED, utcnow()
    job.status_detail = storable(reason, 2000)


def cancel(job: Job) -> None:
    """Stop a job at its owner's request: batches not yet scored are skipped."""
    if is_finished(job):
        raise JobFinishedError(f"job {job.id} is already {job.status}")
    job.status, job.status_detail = JobStatus.CANCELLED, "cancelled by request"
    job.waiting_for_model, job.finished_at = False, utcnow()


def reset_for_reingest(session: Session, job_id: str) -> None:
    """An ingest whose worker died starts again from nothing: counters back to zero."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(scored=0, errors=0, rejected=0, model_versions=[], status=JobStatus.QUEUED)
    )
