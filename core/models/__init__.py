"""The tables, grouped by module; import them from here."""

from core.models.api_keys import ApiKey
from core.models.base import Base, utcnow
from core.models.deliveries import (
    Callback,
    CallbackAttempt,
    CallbackSecret,
    DeliveryState,
    DicomDelivery,
)
from core.models.jobs import (
    DICOM_COLUMNS,
    DICOM_STORED,
    FINISHED_STATUSES,
    Image,
    Job,
    JobStatus,
    Priority,
    RejectedEntry,
    SourceKind,
)
from core.models.model_versions import ModelStatus, ModelVersion
from core.models.passes import PassOutcome, ScoringPass
from core.models.training import Label, RunStatus, TrainingRun
from core.models.ui_sessions import UiSession

__all__ = [
    "DICOM_COLUMNS",
    "DICOM_STORED",
    "FINISHED_STATUSES",
    "ApiKey",
    "Base",
    "Callback",
    "CallbackAttempt",
    "CallbackSecret",
    "DeliveryState",
    "DicomDelivery",
    "Image",
    "Job",
    "JobStatus",
    "Label",
    "ModelStatus",
    "ModelVersion",
    "PassOutcome",
    "Priority",
    "RejectedEntry",
    "RunStatus",
    "ScoringPass",
    "SourceKind",
    "TrainingRun",
    "UiSession",
    "utcnow",
]
