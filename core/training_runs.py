"""Training runs as records: requesting one (one at a time), progress, the nightly skip."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.choices import ActivationPolicy, Architecture, Augmentation, Optimizer, values
from core.config import Settings
from core.db import Database
from core.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from core.imaging import Preprocessing
from core.jobs import Page
from core.labels import newest_label_time
from core.models import ModelVersion, RunStatus, TrainingRun, utcnow

DEFAULT_STALE_AFTER = timedelta(hours=2)
DEFAULT_SEED = 20180222  # Kermany et al., Cell, published 22 February 2018


# The parameters that name one of a fixed set of values.
CHOICES = {
    "architecture": Architecture,
    "augment": Augmentation,
    "activate": ActivationPolicy,
    "optimizer": Optimizer,
}


class TrainingBusyError(ConflictError):
    code = "training_in_progress"


@dataclass(frozen=True)
class TrainingParams:
    """What a run trains on and how; stored with the run."""

    data_dir: str
    architecture: str
    epochs: int
    batch_size: int
    augment: str
    activate: str
    weights: str
    force: bool = False
    # Added with the robust recipe; a run stored before them gets the write-up's behaviour.
    input_size: int = 75
    optimizer: str = "sgd"
    label_smoothing: float = 0.0
    preprocessing: str = "squash"
    batch_norm_recalibration: bool = False
    ensemble: int = 1
    tta_views: int = 1
    seed: int = DEFAULT_SEED  # the first member's; member k is trained with seed + k

    @property
    def total_epochs(self) -> int:
        """Epochs over all ensemble members: what the run's progress counts."""
        return self.epochs * self.ensemble

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainingParams:
        values: dict[str, Any] = {
            "data_dir": str(settings.data_dir) if settings.data_dir else "",
            "architecture": settings.train_architecture,
            "epochs": settings.train_epochs,
            "batch_size": settings.train_batch_size,
            "augment": settings.train_augment,
            "activate": ActivationPolicy.IF_BETTER,
            "weights": settings.train_weights,
            "input_size": settings.train_input_size,
            "optimizer": settings.train_optimizer,
            "label_smoothing": settings.train_label_smoothing,
            "preprocessing": settings.train_preprocessing,
            "batch_norm_recalibration": settings.train_batch_norm_recalibration,
            "ensemble": settings.train_ensemble,
            "tta_views": settings.train_tta_views,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        params = cls(**values)
        params.validate()
        return params

    def validate(self) -> None:
        if not self.data_dir:
            raise InvalidInputError("no reference data: set PNEUMOSCAN_DATA_DIR or pass --data")
        for name, choice in CHOICES.items():
            if getattr(self, name) not in values(choice):
                raise InvalidInputError(f"{name} must be one of {', '.join(values(choice))}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InvalidInputError("epochs and batch size must be at least 1")
        if not 32 <= self.input_size <= 512:
            raise InvalidInputError("input size must lie between 32 and 512 pixels")
        if not 0 <= self.label_smoothing < 0.5:
            raise InvalidInputError("label smoothing must lie in [0, 0.5)")
        if not 1 <= self.ensemble <= 8 or not 1 <= self.tta_views <= 6:
            raise InvalidInputError("ensemble must lie in 1..8 and tta views in 1..6")
        try:
            Preprocessing.parse(self.preprocessing)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc


def request_run(
    session: Session,
    params: TrainingParams,
    trigger: str,
    trigger_key: str | None = None,
    *,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> tuple[TrainingRun, bool]:
    """Create a queued run, or find the one made for `trigger_key`; (run, created).

    Refused while another run is queued or running, unless that one has been silent for
    `stale_after` (its worker was lost): it is then recorded as failed and stops blocking.
    """
    fail_stale_runs(session, stale_after)
    if trigger_key is not None:
        existing = session.scalar(select(TrainingRun).where(TrainingRun.trigger_key == trigger_key))
        if existing is not None:
            return existing, False
    run = TrainingRun(
        trigger=trigger,
        trigger_key=trigger_key,
        params=asdict(params),
        epochs=params.total_epochs,
        in_progress=True,
    )
    try:
        with session.begin_nested():
            session.add(run)
    except IntegrityError as exc:
        if trigger_key is not None:
            same = session.scalar(select(TrainingRun).where(TrainingRun.trigger_key == trigger_key))
            if same is not None:
                return same, False  # the other scheduler's firing won
        busy = session.scalar(select(TrainingRun.id).where(TrainingRun.in_progress.is_(True)))
        raise TrainingBusyError(f"training run {busy} is already queued or running") from exc
    return run, True


def request_scheduled_run(
    session: Session,
    params: TrainingParams,
    trigger_key: str,
    *,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> tuple[TrainingRun, bool]:
    """The nightly trigger: a run when labels arrived since the last one, else a skipped record.

    Returns (run, created); only the call that created a queued run should enqueue it.
    """
    last = session.scalar(
        select(TrainingRun)
        .where(TrainingRun.status == RunStatus.COMPLETED)
        .order_by(TrainingRun.id.desc())
        .limit(1)
    )
    newest = newest_label_time(session)
    if last is not None and not params.force:
        seen = last.labels_until
        if newest is None or (seen is not None and newest <= seen):
            reason = f"no confirmed labels since run {last.id}"
            return _record_skip(session, params, trigger_key, reason), False
    try:
        return request_run(session, params, "schedule", trigger_key, stale_after=stale_after)
    except TrainingBusyError as exc:
        return _record_skip(session, params, trigger_key, exc.message), False


def _record_skip(
    session: Session, params: TrainingParams, trigger_key: str, reason: str
) -> TrainingRun:
    run = TrainingRun(
        trigger="schedule",
        trigger_key=trigger_key,
        params=asdict(params),
        epochs=params.total_epochs,
        status=RunStatus.SKIPPED,
        in_progress=None,
        decision=reason,
        finished_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(run)
    except IntegrityError:
        same = session.scalar(select(TrainingRun).where(TrainingRun.trigger_key == trigger_key))
        if same is None:
            raise
        return same
    return run


def start_run(session: Session, run_id: int) -> TrainingRun | None:
    """Mark a run running; None when it already finished (a late redelivery)."""
    run = session.get(TrainingRun, run_id, with_for_update=True)
    if run is None or run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        return None
    # RUNNING here means its worker died mid-run and the broker redelivered it: start over.
    run.status, run.started_at, run.epoch, run.history = RunStatus.RUNNING, utcnow(), 0, []
    run.heartbeat_at = run.started_at
    return run


def record_epoch(session: Session, run_id: int, epoch: int, logs: dict[str, float]) -> None:
    run = session.get(TrainingRun, run_id, with_for_update=True)
    if run is not None:
        run.epoch, run.heartbeat_at = epoch, utcnow()
        run.history = [*run.history, {"epoch": epoch, **{k: float(v) for k, v in logs.items()}}]


def fail_stale_runs(session: Session, stale_after: timedelta) -> list[int]:
    """Record runs in progress but silent for `stale_after` as failed; returns their ids."""
    cutoff = utcnow() - stale_after
    last_sign = func.coalesce(TrainingRun.heartbeat_at, TrainingRun.created_at)
    stale = list(
        session.scalars(
            select(TrainingRun.id).where(TrainingRun.in_progress.is_(True), last_sign < cutoff)
        )
    )
    if stale:
        minutes = int(stale_after.total_seconds() // 60)
        finish_run_many(
            session,
            stale,
            RunStatus.FAILED,
            error=f"no sign of life for {minutes} minutes: its worker was lost or none is running",
        )
    return stale


def queue_requested_run(
    db: Database,
    params: TrainingParams,
    requested_by: str,
    send: Callable[[int], None],
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> int:
    """A run someone asked for (the API, the reading room): recorded, committed, then sent;
    returns its id."""
    with db.session() as session:
        run, _ = request_run(session, params, "api", stale_after=stale_after)
        run.requested_by = requested_by
        session.flush()
        run_id = run.id
    send_run(db, run_id, send)
    return run_id


def send_run(db: Database, run_id: int, send: Callable[[int], None]) -> None:
    """Hand a committed run to the training queue. When the queue cannot take it the run fails
    at once, so it does not hold the one-run-at-a-time lock until it is judged stale."""
    try:
        send(run_id)
    except UnavailableError:
        with db.session() as session:
            finish_run(
                session,
                run_id,
                RunStatus.FAILED,
                error="the job queue was unavailable when the run was requested; nothing trained",
            )
        raise


def finish_run(session: Session, run_id: int, status: RunStatus, **fields: Any) -> None:
    finish_run_many(session, [run_id], status, **fields)


def finish_run_many(session: Session, run_ids: list[int], status: RunStatus, **fields: Any) -> None:
    session.execute(
        update(TrainingRun)
        .where(TrainingRun.id.in_(run_ids))
        .values(status=status, in_progress=None, finished_at=utcnow(), **fields)
    )


def get_run(session: Session, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFoundError(f"no training run {run_id}")
    return run


def list_runs(session: Session, page: int, per_page: int) -> Page:
    total = session.scalar(select(func.count()).select_from(TrainingRun)) or 0
    rows = session.scalars(
        select(TrainingRun)
        .order_by(TrainingRun.id.desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    )
    return Page(list(rows), total, page, per_page)


def version_of_run(session: Session, run_id: int) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run_id))
