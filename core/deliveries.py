"""When DICOM reports are sent, and what came of each send: due once the job has ended,
retried with a doubling wait, failed after the last attempt allowed."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import FINISHED_STATUSES, DeliveryState, DicomDelivery, Job, utcnow
from core.text import storable

LONGEST_WAIT = timedelta(hours=1)


def retry_at(now: datetime, first_wait: float, attempts: int) -> datetime:
    """After `attempts` failed tries: `first_wait` seconds, doubled each time, an hour at most."""
    wait = timedelta(seconds=first_wait * 2 ** max(0, attempts - 1))
    return now + min(wait, LONGEST_WAIT)


def due_reports(session: Session, limit: int = 20) -> list[DicomDelivery]:
    """Pending reports whose job has ended and whose next attempt is due."""
    return list(
        session.scalars(
            select(DicomDelivery)
            .join(Job, Job.id == DicomDelivery.job_id)
            .where(
                DicomDelivery.state == DeliveryState.PENDING,
                DicomDelivery.next_attempt_at <= utcnow(),
                Job.status.in_(FINISHED_STATUSES),
            )
            .order_by(DicomDelivery.next_attempt_at)
            .limit(limit)
        )
    )


def report_sent(
    delivery: DicomDelivery,
    delivered: bool,
    status: str,
    max_attempts: int,
    first_wait: float,
) -> None:
    """Record one send: delivered, or pending again after a wait, or failed for good."""
    now = utcnow()
    delivery.attempts += 1
    delivery.last_status = storable(status, 1000)
    if delivered:
        delivery.state, delivery.delivered_at = DeliveryState.DELIVERED, now
    elif delivery.attempts >= max_attempts:
        delivery.state = DeliveryState.FAILED
    else:
        delivery.next_attempt_at = retry_at(now, first_wait, delivery.attempts)


def report_skipped(delivery: DicomDelivery, reason: str) -> None:
    delivery.state, delivery.last_status = DeliveryState.SKIPPED, storable(reason, 1000)


def reports_of(session: Session, job_id: str) -> list[DicomDelivery]:
    return list(
        session.scalars(
            select(DicomDelivery).where(DicomDelivery.job_id == job_id).order_by(DicomDelivery.id)
        )
    )
