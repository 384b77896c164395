"""What waits to be scored, seen from outside: the backlog by priority, a job's place in the
queue and when it should start, and how full the recent passes were.

The order is the one `core/scoring_queue.py` claims in: images back from a pass that died
first, then stat (routine counts as stat once older than `max_wait`), owners taking turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Image, Job, JobStatus, PassOutcome, Priority, ScoringPass, utcnow
from core.scoring_queue import STAT_LEVEL, level_of

RECENT_PASSES = 100


@dataclass(frozen=True)
class Place:
    """Where a job's next waiting image stands."""

    images_ahead: int  # images that go into passes before it
    expected_start_at: datetime | None  # at the recent rate; None before any pass was timed


@dataclass(frozen=True)
class Waiting:
    job_id: str
    owner: str
    level: int
    stat_first: int
    created_at: datetime
    images: int  # free: waiting for a pass


def waiting_by_job(session: Session, now: datetime, max_wait: timedelta) -> list[Waiting]:
    """Each running job's images waiting for a pass, in the order each owner's jobs go."""
    rows = session.execute(
        select(Job.id, Job.owner, Job.priority, Job.created_at, func.count(Image.id))
        .join(Image, Image.job_id == Job.id)
        .where(
            Job.status == JobStatus.RUNNING,
            Job.waiting_for_model.is_(False),
            Image.scored_at.is_(None),
            Image.pass_id.is_(None),
        )
        .group_by(Job.id, Job.owner, Job.priority, Job.created_at)
    ).all()
    waiting = [
        Waiting(
            job_id,
            owner or "",
            level_of(priority, created, now, max_wait),
            0 if priority == Priority.STAT else 1,
            created,
            int(count),
        )
        for job_id, owner, priority, created, count in rows
    ]
    return sorted(waiting, key=lambda w: (w.level, w.stat_first, w.created_at, w.job_id))


def place_of(
    session: Session, job_id: str, max_wait: timedelta, now: datetime | None = None
) -> Place | None:
    """The job's place, or None when none of its images waits (not ingested yet, all in
    passes, or done). Owners take turns, so another owner's images count only up to the
    turns this job waits for its own owner's earlier jobs."""
    now = now or utcnow()
    waiting = waiting_by_job(session, now, max_wait)
    mine = next((w for w in waiting if w.job_id == job_id), None)
    if mine is None:
        return None
    suspects = session.scalar(
        select(func.count())
        .select_from(Image)
        .where(Image.scored_at.is_(None), Image.pass_id.is_(None), Image.starts > 0)
    )
    higher = sum(w.images for w in waiting if w.level < mine.level)
    same = [w for w in waiting if w.level == mine.level]
    position = [w.job_id for w in same].index(job_id)
    turns = sum(w.images for w in same[:position] if w.owner == mine.owner)
    first_of: dict[str, int] = {}
    for index, w in enumerate(same):
        first_of.setdefault(w.owner, index)
    others: dict[str, int] = {}
    for w in same:
        if w.owner != mine.owner:
            others[w.owner] = others.get(w.owner, 0) + w.images
    # An owner whose first job came earlier takes its turn first in each round.
    ahead_of_me = sum(
        min(images, turns + (1 if first_of[owner] < first_of[mine.owner] else 0))
        for owner, images in others.items()
    )
    ahead = int(suspects or 0) + higher + turns + ahead_of_me
    rate = recent_rate(session)
    expected = now + timedelta(seconds=ahead / rate) if rate else None
    return Place(ahead, expected)


def recent_rate(session: Session) -> float | None:
    """Images per second of the last passes, from the first start to the last finish."""
    rows = session.execute(
        select(ScoringPass.started_at, ScoringPass.finished_at, ScoringPass.images)
        .where(ScoringPass.outcome == PassOutcome.SCORED)
        .order_by(ScoringPass.finished_at.desc())
        .limit(RECENT_PASSES)
    ).all()
    if not rows:
        return None
    seconds = (max(r.finished_at for r in rows) - min(r.started_at for r in rows)).total_seconds()
    return sum(r.images for r in rows) / seconds if seconds > 0 else None


def recent_fill(session: Session) -> float | None:
    """Mean of images over capacity of the last passes (Triton's batch fill); None before any."""
    fill = session.scalar(
        select(func.avg(ScoringPass.images * 1.0 / ScoringPass.capacity)).where(
            ScoringPass.id.in_(
                select(ScoringPass.id)
                .where(ScoringPass.outcome == PassOutcome.SCORED)
                .order_by(ScoringPass.id.desc())
                .limit(RECENT_PASSES)
            )
        )
    )
    return float(fill) if fill is not None else None


def backlog_by_priority(
    session: Session, max_wait: timedelta, now: datetime | None = None
) -> dict[str, int]:
    """Images of running and queued jobs without a result, by the priority they are scored
    at now (routine waiting past `max_wait` counts as stat). From the jobs table alone."""
    now = now or utcnow()
    rows = session.execute(
        select(Job.priority, Job.created_at, Job.total - Job.scored - Job.errors).where(
            Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)), Job.total.is_not(None)
        )
    ).all()
    backlog = {priority.value: 0 for priority in Priority}
    for priority, created, left in rows:
        level = level_of(priority, created, now, max_wait)
        backlog[Priority.STAT if level == STAT_LEVEL else Priority.ROUTINE] += max(0, left or 0)
    return backlog
