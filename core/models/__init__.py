"""The tables, grouped by module; import them from here."""

from core.models.base import Base, utcnow
from core.models.jobs import (
    FINISHED_STATUSES,
    Image,
    Job,
    JobStatus,
    RejectedEntry,
    SourceKind,
)
from core.models.model_versions import ModelStatus, ModelVersion

__all__ = [
    "FINISHED_STATUSES",
    "Base",
    "Image",
    "Job",
    "JobStatus",
    "ModelStatus",
    "ModelVersion",
    "RejectedEntry",
    "SourceKind",
    "utcnow",
]
