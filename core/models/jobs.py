"""Scoring jobs, one row per image (holding its result), and entries refused at ingest."""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import uuid4

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, BigId, StrEnumText, UTCDateTime, utcnow


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
# The image columns taken from a DICOM header (empty for JPEG and PNG), in the order results
# and the CSV show them; `core.dicom.DicomInfo` has a field of the same name for each.
DICOM_COLUMNS = ("study_uid", "series_uid", "sop_uid", "modality", "body_part", "view_position")


class SourceKind(enum.StrEnum):
    ARCHIVE = "archive"
    IMAGES = "images"
    FOLDER = "folder"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: uuid4().hex)
    # Changed only through core/job_state.py, the job's lifecycle.
    status: Mapped[JobStatus] = mapped_column(
        StrEnumText(JobStatus), default=JobStatus.QUEUED, index=True
    )
    status_detail: Mapped[str | None] = mapped_column(Text)
    # The API key name that submitted it; keys of that name see it, admins see every job.
    owner: Mapped[str | None] = mapped_column(String(200), index=True)
    source_kind: Mapped[SourceKind] = mapped_column(StrEnumText(SourceKind))
    source_name: Mapped[str] = mapped_column(Text)
    # None until ingest has counted the images.
    total: Mapped[int | None] = mapped_column(Integer)
    scored: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    waiting_for_model: Mapped[bool] = mapped_column(Boolean, default=False)
    # Every model version that produced a result of this job, in order of first use.
    model_versions: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Claimed by the one ingest that expands the source; a stale claim may be taken over.
    ingest_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Ingests started (claims taken); past `max_ingest_attempts` the job fails instead.
    ingest_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set while an ingest that gave way to a slow upload waits to go on: the byte of the
    # upload it goes on from. Whoever takes the claim next takes the work from there.
    ingest_resume_at: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def done(self) -> int:
        return self.scored + self.errors

    @property
    def progress(self) -> float:
        if not self.total:
            return 1.0 if self.status == JobStatus.COMPLETED else 0.0
        return min(1.0, self.done / self.total)


class Image(Base):
    """One image of a job; the result columns stay empty until a batch scores it."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("job_id", "relative_path"),
        Index("ix_images_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    relative_path: Mapped[str] = mapped_column(Text)
    # Relative to the storage directory for uploads; absolute for import-volume folders.
    location: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # Set when `location` is a kept upload and the image is `size_bytes` bytes from here.
    member_offset: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(16))
    threshold: Mapped[float | None] = mapped_column(Float)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    error: Mapped[str | None] = mapped_column(Text)
    scored_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # DICOM only; nothing that names the patient is kept.
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))


class BatchAttempt(Base):
    """How often a batch (one score_batch message) was started: a batch that keeps killing its
    worker is split after a few attempts, down to the one image that does it."""

    __tablename__ = "batch_attempts"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class RejectedEntry(Base):
    """An archive member or file that was not turned into an image, and why."""

    __tablename__ = "rejected_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
