"""Scoring jobs, one row per image (holding its result, and its place in the scoring queue),
and entries refused at ingest."""

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
    text,
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
# And kept besides, for the DICOM reports.
DICOM_STORED = (*DICOM_COLUMNS, "sop_class_uid")


class Priority(enum.StrEnum):
    """How soon a job's images are scored: stat ahead of routine, and routine no later than
    `PNEUMOSCAN_MAX_WAIT_SECONDS` after submission (then it counts as stat)."""

    STAT = "stat"
    ROUTINE = "routine"


class SourceKind(enum.StrEnum):
    ARCHIVE = "archive"
    IMAGES = "images"
    FOLDER = "folder"
    # Instances a PACS sent to the DICOM node, one study (worker/dicom_node/).
    DICOM = "dicom"


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
    priority: Mapped[Priority] = mapped_column(
        StrEnumText(Priority), default=Priority.ROUTINE, server_default=Priority.ROUTINE.value
    )
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


UNSCORED = text("scored_at IS NULL")
SUSPECT = text("scored_at IS NULL AND starts > 0")


class Image(Base):
    """One image of a job; the result columns stay empty until a pass scores it.

    An unscored image of a running job is in the scoring queue (core/scoring_queue.py):
    `pass_id` is set while a pass holds it and stays to say which pass scored it.
    """

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("job_id", "relative_path"),
        Index("ix_images_job_id_id", "job_id", "id"),
        # The queue: a job's unscored images in order, and those whose pass died.
        Index(
            "ix_images_unscored", "job_id", "id", postgresql_where=UNSCORED, sqlite_where=UNSCORED
        ),
        Index("ix_images_suspect", "id", postgresql_where=SUSPECT, sqlite_where=SUSPECT),
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
    pass_id: Mapped[int | None] = mapped_column(
        ForeignKey("scoring_passes.id", ondelete="SET NULL"), index=True
    )
    # Passes that took this image; more than one without a result means a worker died in it.
    starts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # DICOM only; nothing that names the patient is kept.
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    # What the image's report names it by (core/dicom_report.py).
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))


class RejectedEntry(Base):
    """An archive member or file that was not turned into an image, and why."""

    __tablename__ = "rejected_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
