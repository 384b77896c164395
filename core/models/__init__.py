"""The tables, grouped by module; import them from here."""

from core.models.api_keys import ApiKey
from core.models.base import Base, utcnow
from core.models.jobs import (
    DICOM_COLUMNS,
    FINISHED_STATUSES,
    BatchAttempt,
    Image,
    Job,
    JobStatus,
    RejectedEntry,
    SourceKind,
)
from core.models.model_versions import ModelStatus, ModelVersion
from core.models.training import Label, RunStatus, TrainingRun

__all__ = [
    "DICOM_COLUMNS",
    "FINISHED_STATUSES",
    "ApiKey",
    "Base",
    "BatchAttempt",
    "Image",
    "Job",
    "JobStatus",
    "Label",
    "ModelStatus",
    "ModelVersion",
    "RejectedEntry",
    "RunStatus",
    "SourceKind",
    "TrainingRun",
    "utcnow",
]
