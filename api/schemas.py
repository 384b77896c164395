"""Request and response schemas: they validate input and they are the OpenAPI document."""

from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import (
    URL,
    Boolean,
    DateTime,
    Dict,
    File,
    Float,
    Integer,
    List,
    Nested,
    String,
)
from apiflask.validators import Length, OneOf, Range
from marshmallow import ValidationError, validates_schema

from api.schemas_delivery import DicomReportOut, JobCallbackOut
from core.choices import ActivationPolicy, Architecture, Augmentation, Optimizer, values
from core.models import JobStatus, Priority


class FolderJobIn(Schema):
    folder = String(
        required=True,
        validate=Length(min=1, max=4096),
        metadata={"description": "A folder under one of PNEUMOSCAN_IMPORT_ROOTS."},
    )


class UploadJobIn(Schema):
    archive = File(metadata={"description": "A zip archive of images (one level of nested zips)."})
    images = List(
        File(),
        metadata={"description": "Image files; each part's filename is its relative path."},
    )

    @validates_schema
    def _exactly_one_source(self, data: dict[str, Any], **_: Any) -> None:
        if bool(data.get("archive")) == bool(data.get("images")):
            raise ValidationError("send either one `archive` file or one or more `images` files")


MAX_PAGE = 1_000_000  # deeper than any real list; keeps offsets inside a 64-bit integer


class PageQuery(Schema):
    page = Integer(load_default=1, validate=Range(min=1, max=MAX_PAGE))
    per_page = Integer(load_default=50, validate=Range(min=1, max=1000))


class JobsQuery(PageQuery):
    status = String(validate=OneOf([status.value for status in JobStatus]))


class SubmitQuery(Schema):
    priority = String(
        validate=OneOf([priority.value for priority in Priority]),
        metadata={
            "description": "stat: scored ahead of routine work. Default: the API key's priority "
            "(`pneumoscan keys create --priority`), else routine."
        },
    )
    callback_url = URL(
        schemes={"http", "https"},
        require_tld=False,
        validate=Length(max=2000),
        metadata={
            "description": "POSTed the job's summary when it ends, signed with the key name's "
            "secret (`PUT /v1/callback` first). Default: the name's default URL, if set."
        },
    )


class RejectedQuery(PageQuery):
    per_page = Integer(load_default=500, validate=Range(min=1, max=5000))


class ResultsQuery(PageQuery):
    per_page = Integer(load_default=500, validate=Range(min=1, max=5000))
    format = String(load_default="json", validate=OneOf(["json", "csv", "dicom"]))
    study_uid = String(
        validate=Length(max=64), metadata={"description": "Only the results of this DICOM study."}
    )


class PaginationOut(Schema):
    page = Integer()
    per_page = Integer()
    total = Integer()
    pages = Integer()


class JobOut(Schema):
    id = String()
    status = String(metadata={"enum": [status.value for status in JobStatus]})
    status_detail = String(allow_none=True)
    priority = String(metadata={"enum": [priority.value for priority in Priority]})
    images_ahead = Integer(
        allow_none=True,
        metadata={
            "description": "While images of the job wait (`GET /v1/jobs/{id}` only): images "
            "that go into forward passes before its next one."
        },
    )
    expected_start_at = DateTime(
        allow_none=True,
        metadata={"description": "When its next image should be scored, at the recent rate."},
    )
    source_kind = String()
    source_name = String()
    total = Integer(allow_none=True, metadata={"description": "Images found; null until ingested."})
    scored = Integer()
    errors = Integer(metadata={"description": "Images that could not be scored."})
    rejected = Integer(metadata={"description": "Entries that were not images, with reasons."})
    progress = Float(metadata={"description": "Share of images with a result, 0 to 1."})
    waiting_for_model = Boolean()
    model_version = String(allow_none=True, metadata={"description": "Latest version used."})
    model_versions = List(String(), metadata={"description": "Every version that scored it."})
    created_at = DateTime()
    updated_at = DateTime()
    started_at = DateTime(allow_none=True)
    finished_at = DateTime(allow_none=True)
    results_url = String()
    callback = Nested(
        JobCallbackOut,
        allow_none=True,
        metadata={"description": "`GET /v1/jobs/{id}` only: its callback and every attempt."},
    )
    dicom_reports = List(
        Nested(DicomReportOut),
        metadata={
            "description": "`GET /v1/jobs/{id}` only: the delivery of each study's report to "
            "PNEUMOSCAN_DICOM_DESTINATION (jobs from the DICOM node)."
        },
    )


class JobsPageOut(Schema):
    items = List(Nested(JobOut))
    pagination = Nested(PaginationOut)


class ResultOut(Schema):
    id = Integer()
    path = String()
    probability = Float(allow_none=True)
    label = String(allow_none=True)
    threshold = Float(allow_none=True)
    model_version = String(allow_none=True)
    error = String(allow_none=True)
    scored_at = DateTime(allow_none=True)
    confirmed_label = String(allow_none=True, metadata={"description": "A radiologist's label."})
    study_uid = String(allow_none=True, metadata={"description": "DICOM StudyInstanceUID."})
    series_uid = String(allow_none=True, metadata={"description": "DICOM SeriesInstanceUID."})
    sop_uid = String(allow_none=True, metadata={"description": "DICOM SOPInstanceUID."})
    modality = String(allow_none=True)
    body_part = String(allow_none=True, metadata={"description": "DICOM BodyPartExamined."})
    view_position = String(allow_none=True, metadata={"description": "DICOM ViewPosition."})


class ResultsPageOut(Schema):
    job_id = String()
    status = String()
    items = List(Nested(ResultOut))
    pagination = Nested(PaginationOut)


class RejectedOut(Schema):
    path = String()
    reason = String()


class RejectedListOut(Schema):
    items = List(Nested(RejectedOut))
    pagination = Nested(PaginationOut)


class CheckOut(Schema):
    name = String()
    ok = Boolean()
    detail = String(allow_none=True)


class HealthOut(Schema):
    status = String()
    checks = List(Nested(CheckOut))


class ErrorBody(Schema):
    code = String(required=True)
    message = String(required=True)
    details = Dict(allow_none=True)


class ErrorOut(Schema):
    error = Nested(ErrorBody, required=True)


class TrainingRunIn(Schema):
    architecture = String(validate=OneOf(values(Architecture)))
    epochs = Integer(validate=Range(min=1, max=500))
    batch_size = Integer(validate=Range(min=1, max=4096))
    augment = String(validate=OneOf(values(Augmentation)))
    weights = String(validate=OneOf(["none", "imagenet"]))
    activate = String(
        load_default=ActivationPolicy.IF_BETTER.value, validate=OneOf(values(ActivationPolicy))
    )
    input_size = Integer(validate=Range(min=32, max=512))
    optimizer = String(validate=OneOf(values(Optimizer)))
    label_smoothing = Float(validate=Range(min=0, max=0.5, max_inclusive=False))
    preprocessing = String(
        validate=Length(max=64),
        metadata={"description": "squash, equalize, trimN or trimN+equalize"},
    )
    batch_norm_recalibration = Boolean()
    ensemble = Integer(validate=Range(min=1, max=8))
    tta_views = Integer(validate=Range(min=1, max=6))


class TrainingRunOut(Schema):
    id = Integer()
    status = String(metadata={"enum": ["queued", "running", "completed", "failed", "skipped"]})
    trigger = String()
    params = Dict()
    epoch = Integer()
    epochs = Integer()
    progress = Float()
    history = List(Dict(), metadata={"description": "Per-epoch loss and metrics."})
    metrics = Dict(allow_none=True)
    version = String(allow_none=True, metadata={"description": "The model version it produced."})
    activated = Boolean()
    decision = String(allow_none=True, metadata={"description": "Why it was (not) activated."})
    error = String(allow_none=True)
    labels_used = Integer()
    created_at = DateTime()
    started_at = DateTime(allow_none=True)
    finished_at = DateTime(allow_none=True)


class TrainingRunsPageOut(Schema):
    items = List(Nested(TrainingRunOut))
    pagination = Nested(PaginationOut)


class ModelOut(Schema):
    version = String()
    status = String(metadata={"enum": ["candidate", "active", "retired"]})
    architecture = String(allow_none=True)
    source = String()
    input_size = Integer()
    threshold = Float()
    preprocessing = String(metadata={"description": "the input the version was trained on"})
    sha256 = String()
    metrics = Dict(allow_none=True)
    training_run_id = Integer(allow_none=True)
    artifact_available = Boolean()
    created_at = DateTime()
    activated_at = DateTime(allow_none=True)


class ModelsOut(Schema):
    items = List(Nested(ModelOut))


class PreviewQuery(Schema):
    size = Integer(
        load_default=512,
        validate=Range(min=16, max=1024),
        metadata={
            "description": "Longest side wanted, in pixels; served at the next of "
            "128, 256, 512, 1024 at or above it."
        },
    )


class HeatmapPendingOut(Schema):
    status = String(metadata={"description": "`pending`: a worker is making it"})
    retry_after = Integer(metadata={"description": "Seconds to wait before asking again"})


class LabelIn(Schema):
    label = String(required=True, validate=OneOf(["NORMAL", "PNEUMONIA"]))


class LabelOut(Schema):
    result_id = Integer()
    label = String()
    labelled_by = String()
    labelled_at = DateTime()


class ActivatedModelOut(ModelOut):
    """ModelOut again under its own name: a class already nested in ModelsOut cannot also be
    registered by APIFlask for a deeper path without apispec registering it twice."""
