"""The scoring queue: the unscored images of every running job, claimed into forward passes.

The database is the queue (docs/architecture.md, "Scoring across jobs"). A pass is a row of
`scoring_passes`; claiming an image sets its `pass_id` and counts one more start in the same
transaction, committed before any work, so a pass whose worker dies leaves its images
counted. Released again (by the message delivered anew, or by the sweep), they are suspects:
they go into passes of their own, run alone, and one at a time once they died
`split_after` times, until the image that kills its worker is found.

A pass's own life (opened, finished, released when it died) is core/passes.py.

Order of a pass: suspects first; then stat images (routine ones count as stat once older than
`max_wait`) ahead of routine; within a priority, owners take turns one image at a time (round
robin), each owner's jobs in order of submission.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, case, exists, func, or_, select, union_all, update
from sqlalchemy.orm import Session

from core.models import Image, Job, JobStatus, Priority, ScoringPass, utcnow
from core.storage import Span, span_of

STAT_LEVEL, ROUTINE_LEVEL = 0, 1


@dataclass(frozen=True)
class QueuePolicy:
    capacity: int  # images per pass
    max_wait: timedelta  # a routine image older than this is scored as stat
    split_after: int  # deaths in a shared pass before an image goes alone


@dataclass(frozen=True)
class ImageToScore:
    image_id: int
    job_id: str
    location: str
    format: str
    span: Span | None = None  # the image is these bytes of `location` (a kept upload)
    starts: int = 1  # passes that took it, this one included


@dataclass(frozen=True)
class JobWork:
    """A running job with images nobody holds: how urgent, whose, and at most how many."""

    id: str
    owner: str
    level: int
    remaining: int


def level_of(priority: Priority, submitted: datetime, now: datetime, max_wait: timedelta) -> int:
    return STAT_LEVEL if priority == Priority.STAT or submitted <= now - max_wait else ROUTINE_LEVEL


def quotas(jobs: Sequence[JobWork], room: int) -> dict[str, int]:
    """How many images each job gives the pass: levels in order; within a level, owners in
    the order of their first job take one image each per turn, each from its first job
    with images left. `jobs` come in submission order within each owner."""
    taken: dict[str, int] = {}
    for level in sorted({job.level for job in jobs}):
        lines: dict[str, list[list]] = {}
        for job in jobs:
            if job.level == level and job.remaining > 0:
                lines.setdefault(job.owner, []).append([job.id, job.remaining])
        while room and lines:
            for owner in list(lines):
                if not room:
                    break
                line = lines[owner]
                taken[line[0][0]] = taken.get(line[0][0], 0) + 1
                line[0][1] -= 1
                room -= 1
                if line[0][1] == 0:
                    line.pop(0)
                if not line:
                    del lines[owner]
    return taken


def claim(
    session: Session, scoring_pass: ScoringPass, policy: QueuePolicy, now: datetime | None = None
) -> list[ImageToScore]:
    """Claim images into the pass, up to its room; a pass begun on suspects takes no others."""
    if scoring_pass.suspect:
        return []
    room = policy.capacity - scoring_pass.images
    if scoring_pass.images == 0 and (suspects := _suspects(session, policy)):
        scoring_pass.suspect = True
        return _take(session, scoring_pass, suspects)
    now = now or utcnow()
    claimed: list[ImageToScore] = []
    exhausted: set[str] = set()
    for _ in range(3):  # a job may have fewer free images than its bound says: others hold some
        work = [
            job for job in _jobs_with_work(session, room, now, policy) if job.id not in exhausted
        ]
        shares = quotas(work, room)
        if not shares:
            break
        ids = _first_free(session, shares)
        got = _take(session, scoring_pass, [i for i, _ in ids])
        claimed += got
        room -= len(got)
        counts: dict[str, int] = {}
        for _, job_id in ids:
            counts[job_id] = counts.get(job_id, 0) + 1
        exhausted |= {job_id for job_id, n in shares.items() if counts.get(job_id, 0) < n}
        if not room or len(got) == sum(shares.values()):
            break
    return claimed


def _free() -> list[ColumnElement[bool]]:
    return [Image.scored_at.is_(None), Image.pass_id.is_(None)]


def _scoring() -> list[ColumnElement[bool]]:
    return [Job.status == JobStatus.RUNNING, Job.waiting_for_model.is_(False)]


def _suspects(session: Session, policy: QueuePolicy) -> list[int]:
    """Images back from a pass that died: together while they died fewer than `split_after`
    times, then the one that died most, alone."""
    rows = session.execute(
        select(Image.id, Image.starts)
        .join(Job, Job.id == Image.job_id)
        .where(*_free(), Image.starts > 0, Image.starts < 2 * policy.split_after, *_scoring())
        .order_by(Image.starts.desc(), Image.id)
        .limit(policy.capacity)
    ).all()
    if rows and rows[0].starts >= policy.split_after:
        return [rows[0].id]
    return [row.id for row in rows]


def worn_out(session: Session, policy: QueuePolicy) -> list[tuple[int, str, int]]:
    """Free images that died `2 * split_after` times, the last half alone: no pass takes them
    again. (image id, job id, starts) each."""
    rows = session.execute(
        select(Image.id, Image.job_id, Image.starts)
        .join(Job, Job.id == Image.job_id)
        .where(*_free(), Image.starts >= 2 * policy.split_after, *_scoring())
        .order_by(Image.id)
    )
    return [(row.id, row.job_id, row.starts) for row in rows]


def _jobs_with_work(
    session: Session, room: int, now: datetime, policy: QueuePolicy
) -> list[JobWork]:
    """Running jobs with free images: per level and owner the first `room` jobs, in order."""
    level = case(
        (or_(Job.priority == Priority.STAT, Job.created_at <= now - policy.max_wait), STAT_LEVEL),
        else_=ROUTINE_LEVEL,
    )
    stat_first = case((Job.priority == Priority.STAT, 0), else_=1)
    free = exists().where(Image.job_id == Job.id, *_free(), Image.starts == 0)
    ranked = (
        select(
            Job.id,
            func.coalesce(Job.owner, "").label("owner"),
            level.label("level"),
            stat_first.label("stat_first"),
            Job.created_at,
            (Job.total - Job.scored - Job.errors).label("remaining"),
            func.row_number()
            .over(partition_by=(level, Job.owner), order_by=(stat_first, Job.created_at, Job.id))
            .label("rank"),
        )
        .where(*_scoring(), free)
        .subquery()
    )
    # Owners come in the order of their first job, so `quotas` gives them turns in that order.
    order = (ranked.c.level, ranked.c.stat_first, ranked.c.created_at, ranked.c.id)
    rows = session.execute(select(ranked).where(ranked.c.rank <= room).order_by(*order))
    # An ingest still counting has no total yet: it may fill the pass.
    return [
        JobWork(
            row.id, row.owner, row.level, room if row.remaining is None else max(1, row.remaining)
        )
        for row in rows
    ]


def _first_free(session: Session, shares: dict[str, int]) -> list[tuple[int, str]]:
    """Each job's first free images, as many as its share, in one statement; rows another
    pass is claiming right now are skipped, not waited for (PostgreSQL's SKIP LOCKED)."""
    parts = [
        select(Image.id, Image.job_id)
        .where(Image.job_id == job_id, *_free(), Image.starts == 0)
        .order_by(Image.id)
        .limit(n)
        .with_for_update(skip_locked=True)
        .subquery()
        .select()
        for job_id, n in shares.items()
    ]
    statement = parts[0] if len(parts) == 1 else union_all(*parts)
    return [(row[0], row[1]) for row in session.execute(statement)]


def _take(session: Session, scoring_pass: ScoringPass, ids: Sequence[int]) -> list[ImageToScore]:
    """Claim `ids` for the pass, skipping any another pass holds (or is claiming) now."""
    if not ids:
        return []
    free = session.scalars(
        select(Image.id).where(Image.id.in_(ids), *_free()).with_for_update(skip_locked=True)
    ).all()
    if not free:
        return []
    rows = session.execute(
        update(Image)
        .where(Image.id.in_(free))
        .values(pass_id=scoring_pass.id, starts=Image.starts + 1)
        .returning(
            Image.id,
            Image.job_id,
            Image.location,
            Image.format,
            Image.member_offset,
            Image.size_bytes,
            Image.starts,
        )
        .execution_options(synchronize_session=False)
    ).all()
    claimed = sorted(
        (
            ImageToScore(i, job, loc, fmt, span_of(offset, size), starts)
            for i, job, loc, fmt, offset, size, starts in rows
        ),
        key=lambda image: image.image_id,
    )
    scoring_pass.images += len(claimed)
    return claimed


def anything_waiting(session: Session) -> bool:
    """Whether any image of a running job waits for a pass: most wake-ups sent for small
    studies find their images already taken, and end on this one query."""
    free = select(Image.id).join(Job, Job.id == Image.job_id).where(*_free(), *_scoring()).limit(1)
    return session.scalar(free) is not None


def jobs_with_free_images(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Image.job_id)
            .join(Job, Job.id == Image.job_id)
            .where(*_free(), *_scoring())
            .distinct()
        )
    )


def free_images(session: Session, job_id: str | None = None) -> int:
    """Images of running jobs (or of one) waiting for a pass, suspects included."""
    query = (
        select(func.count())
        .select_from(Image)
        .join(Job, Job.id == Image.job_id)
        .where(*_free(), *_scoring())
    )
    if job_id is not None:
        query = query.where(Image.job_id == job_id)
    return int(session.scalar(query) or 0)
