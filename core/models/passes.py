"""Forward passes: which worker ran each, how full it was, how it ended."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, BigId, StrEnumText, UTCDateTime, utcnow


class PassOutcome(enum.StrEnum):
    RUNNING = "running"
    SCORED = "scored"  # its results are recorded
    DIED = "died"  # its worker died (or went silent): its images went back to the queue


class ScoringPass(Base):
    """One forward pass over images claimed from the queue, from any jobs."""

    __tablename__ = "scoring_passes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The wake-up message that ran it: delivered again after its worker died, it finds this.
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    worker: Mapped[str] = mapped_column(String(200))  # host:pid
    capacity: Mapped[int] = mapped_column(Integer)  # PNEUMOSCAN_BATCH_SIZE when it ran
    images: Mapped[int] = mapped_column(Integer, default=0)  # claimed
    jobs: Mapped[int] = mapped_column(Integer, default=0)
    # Images back from a pass that died: run alone in the process, split when they die again.
    suspect: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[PassOutcome] = mapped_column(
        StrEnumText(PassOutcome), default=PassOutcome.RUNNING, index=True
    )
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    precision: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
