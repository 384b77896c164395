"""What the service holds right now, counted in the database, for monitoring (`GET /metrics`).

Counted at each scrape from the tables every process shares, so every API process reports the
same figures, whichever one a scraper reaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core.backlog import backlog_by_priority, recent_fill
from core.models import (
    Callback,
    DeliveryState,
    DicomDelivery,
    Job,
    JobStatus,
    ModelStatus,
    ModelVersion,
    RunStatus,
    TrainingRun,
    utcnow,
)

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class ServiceCounts:
    jobs: dict[str, int]  # by status, every status present
    jobs_waiting_for_model: int
    images: dict[str, int]  # scored, error, pending (of unfinished jobs), rejected
    oldest_unfinished_job_seconds: float  # 0 when every job is finished
    active_model: str | None
    model_versions: dict[str, int]  # by status
    training_runs: dict[str, int]  # by status
    backlog: dict[str, int]  # images without a result, by the priority they are scored at
    pass_fill: float | None  # mean images over batch size of the recent passes
    dicom_reports: dict[str, int]  # deliveries of DICOM reports, by state
    callbacks: dict[str, int]  # job callbacks, by state


def service_counts(
    session: Session, max_wait: timedelta, now: datetime | None = None
) -> ServiceCounts:
    """Counts of jobs, images, model versions and training runs, a handful of aggregate
    queries over the jobs table (never the images table, which is the large one)."""
    now = now or utcnow()
    scored, errors, rejected = session.execute(
        select(
            func.coalesce(func.sum(Job.scored), 0),
            func.coalesce(func.sum(Job.errors), 0),
            func.coalesce(func.sum(Job.rejected), 0),
        )
    ).one()
    pending, oldest, waiting = session.execute(
        select(
            func.coalesce(func.sum(Job.total - Job.scored - Job.errors), 0),
            func.min(Job.created_at),
            func.coalesce(func.sum(case((Job.waiting_for_model, 1), else_=0)), 0),
        ).where(Job.status.in_(UNFINISHED))
    ).one()
    return ServiceCounts(
        jobs=_by_status(session, Job.status, JobStatus),
        jobs_waiting_for_model=int(waiting),
        images={
            "scored": int(scored),
            "error": int(errors),
            "pending": int(pending),
            "rejected": int(rejected),
        },
        oldest_unfinished_job_seconds=(now - oldest).total_seconds() if oldest else 0.0,
        active_model=session.scalar(
            select(ModelVersion.version).where(ModelVersion.status == ModelStatus.ACTIVE)
        ),
        model_versions=_by_status(session, ModelVersion.status, ModelStatus),
        training_runs=_by_status(session, TrainingRun.status, RunStatus),
        backlog=backlog_by_priority(session, max_wait, now),
        pass_fill=recent_fill(session),
        dicom_reports=_by_status(session, DicomDelivery.state, DeliveryState),
        callbacks=_by_status(session, Callback.state, DeliveryState),
    )


def _by_status(session: Session, column: Any, statuses: type[StrEnum]) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column)).all()
    found: dict[str, int] = {str(status): int(count) for status, count in rows}
    return {status.value: found.get(status.value, 0) for status in statuses}
