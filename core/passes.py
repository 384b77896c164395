"""A forward pass's life as a row of `scoring_passes`: opened by the worker that claims it,
finished with its results, or released when its worker died (its message delivered again,
or silent past the stall limit), its unscored images going back to the queue with their
starts counted (core/scoring_queue.py claims them again, as suspects)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.models import Image, PassOutcome, ScoringPass, utcnow


def open_pass(session: Session, worker: str, task_id: str | None, capacity: int) -> ScoringPass:
    scoring_pass = ScoringPass(task_id=task_id, worker=worker, capacity=capacity)
    session.add(scoring_pass)
    session.flush()
    return scoring_pass


def finish_pass(
    session: Session, pass_id: int, jobs: int, model_version_id: int, precision: str
) -> None:
    session.execute(
        update(ScoringPass)
        .where(ScoringPass.id == pass_id)
        .values(
            outcome=PassOutcome.SCORED,
            finished_at=utcnow(),
            jobs=jobs,
            model_version_id=model_version_id,
            precision=precision,
        )
    )


def release_passes(session: Session, pass_ids: Sequence[int]) -> int:
    """Passes that will not finish: their unscored images go back to the queue, their starts
    kept (they are suspects now). Returns how many images went back."""
    if not pass_ids:
        return 0
    released = session.execute(
        update(Image)
        .where(Image.pass_id.in_(pass_ids), Image.scored_at.is_(None))
        .values(pass_id=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(ScoringPass)
        .where(ScoringPass.id.in_(pass_ids), ScoringPass.outcome == PassOutcome.RUNNING)
        .values(outcome=PassOutcome.DIED, finished_at=utcnow())
    )
    return int(released.rowcount)  # type: ignore[attr-defined]


def passes_of_message(session: Session, task_id: str) -> list[int]:
    """Unfinished passes an earlier delivery of this message began: its worker died in them."""
    return list(
        session.scalars(
            select(ScoringPass.id).where(
                ScoringPass.task_id == task_id, ScoringPass.outcome == PassOutcome.RUNNING
            )
        )
    )


def stale_passes(session: Session, cutoff: datetime) -> list[int]:
    """Unfinished passes begun before `cutoff`: a worker killed outright never says so."""
    return list(
        session.scalars(
            select(ScoringPass.id).where(
                ScoringPass.outcome == PassOutcome.RUNNING, ScoringPass.started_at < cutoff
            )
        )
    )
