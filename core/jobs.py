"""Creating, finding, cancelling and releasing scoring jobs; no Flask or Celery here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core import job_state
from core.errors import ForbiddenError, NotFoundError
from core.intake.entries import InvalidUploadError
from core.models import (
    Job,
    Priority,
    RejectedEntry,
    SourceKind,
)
from core.registry import active_version


class JobNotFoundError(NotFoundError):
    pass


class FolderNotAllowedError(ForbiddenError):
    code = "folder_not_allowed"


@dataclass(frozen=True)
class Page:
    items: list
    total: int
    page: int
    per_page: int


def create_job(
    session: Session,
    kind: SourceKind,
    source_name: str,
    job_id: str,
    owner: str | None = None,
    priority: Priority = Priority.ROUTINE,
) -> Job:
    job = job_state.new_job(job_id, kind, source_name, owner, priority)
    session.add(job)
    session.flush()
    return job


def discard_job(session: Session, job_id: str) -> None:
    """Forget a job whose submission failed, with whatever ingest recorded of it."""
    session.execute(delete(Job).where(Job.id == job_id))


def get_job(session: Session, job_id: str, owner: str | None = None, lock: bool = False) -> Job:
    """The job, if `owner` (when given) owns it; another owner's job is "not found"."""
    job = session.get(Job, job_id, with_for_update=lock)
    if job is None or (owner is not None and job.owner != owner):
        raise JobNotFoundError(f"no job {job_id}")
    return job


def list_jobs(
    session: Session, page: int, per_page: int, status: str | None = None, owner: str | None = None
) -> Page:
    query = select(Job)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if status:
        query = query.where(Job.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id).offset((page - 1) * per_page).limit(per_page)
    )
    return Page(list(rows), total, page, per_page)


def rejected_page(
    session: Session, job_id: str, page: int, per_page: int, owner: str | None = None
) -> Page:
    """A page of what the job's upload held that was not scored, in the order it was met."""
    get_job(session, job_id, owner)
    query = select(RejectedEntry).where(RejectedEntry.job_id == job_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(RejectedEntry.id).offset((page - 1) * per_page).limit(per_page)
    )
    return Page(list(rows), total, page, per_page)


def cancel_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """Stop a job: batches not yet scored are skipped; what was scored stays."""
    job = get_job(session, job_id, owner, lock=True)
    job_state.cancel(job)
    return job


def resolve_import_folder(
    folder: str,
    roots: list[Path],
    owners: Mapping[Path, frozenset[str]] | None = None,
    caller: str | None = None,
) -> Path:
    """The real path of `folder` when it lies under one of `roots` open to `caller` (a key
    name; None for an admin, to whom every root is open), after following links."""
    if not roots:
        raise FolderNotAllowedError("no import roots are configured (PNEUMOSCAN_IMPORT_ROOTS)")
    resolved = Path(folder).expanduser().resolve()
    under = [root for root in roots if resolved == root or root in resolved.parents]
    if not under:
        raise FolderNotAllowedError(f"{folder} is not under an allowed import root")
    allowed = (owners or {}).get(max(under, key=lambda root: len(root.parts)))
    if caller is not None and allowed is not None and caller not in allowed:
        raise FolderNotAllowedError(f"{folder} is under an import root not open to {caller!r}")
    if not resolved.is_dir():
        raise InvalidUploadError(f"{folder} is not a folder on the server")
    return resolved


def claim_waiting_jobs(session: Session) -> list[str]:
    """Move jobs waiting for a model to running, once one is active; each job is claimed once."""
    if active_version(session) is None:
        return []
    return [
        job_id for job_id in job_state.waiting_jobs(session) if job_state.release(session, job_id)
    ]
