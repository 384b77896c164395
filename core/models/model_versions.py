"""Registered model versions; exactly one is active at a time."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, StrEnumText, UTCDateTime, utcnow


class ModelStatus(enum.StrEnum):
    CANDIDATE = "candidate"
    ACTIVE = "active"
    RETIRED = "retired"


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        # The database itself guarantees that at most one version is active.
        Index(
            "uq_model_versions_one_active",
            "status",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[ModelStatus] = mapped_column(
        StrEnumText(ModelStatus), default=ModelStatus.CANDIDATE
    )
    architecture: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    # Relative to the storage directory.
    artifact_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    input_size: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float] = mapped_column(Float, default=0.5)
    # core.imaging.Preprocessing by name: what the version's input must be made with.
    preprocessing: Mapped[str] = mapped_column(
        String(64), default="squash", server_default="squash"
    )
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    training_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL")
    )
    # Set when the artifact was pruned (keep_inactive_models); the row stays for the record.
    artifact_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
