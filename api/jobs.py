"""/v1/jobs: submit a study archive, files or server folder; follow it; read its results."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any
from uuid import uuid4

from apiflask import APIBlueprint, APIFlask
from flask import current_app, request, url_for
from marshmallow import ValidationError
from werkzeug.http import parse_options_header

from api.auth import READ, SUBMIT, auth, caller
from api.context import ApiContext, api_context
from api.errors import api_error
from api.openapi import RequestBodiesPlugin
from api.pagination import pagination
from api.schemas import (
    FolderJobIn,
    JobOut,
    JobsPageOut,
    JobsQuery,
    SubmitQuery,
    UploadJobIn,
)
from api.uploads import CHUNK, UPLOAD_TYPES, persist, upload_slot, watched_upload
from core.backlog import Place, place_of
from core.callbacks import callback_of, check_callback_url
from core.deliveries import reports_of
from core.job_state import is_scoring
from core.jobs import cancel_job, get_job, list_jobs
from core.models import Callback, CallbackAttempt, DicomDelivery, Job, Priority
from core.storage import ARCHIVE_NAME
from core.submission import (
    JobStoppedDuringUploadError,
    NewJob,
    submit_archive,
    submit_files,
    submit_folder,
    submit_raw_zip,
)

bp = APIBlueprint("jobs", __name__, url_prefix="/v1", tag="Jobs")


def init_app(app: APIFlask, bodies: RequestBodiesPlugin) -> None:
    bodies.add(
        "/v1/jobs",
        "post",
        {
            "application/json": FolderJobIn,
            "multipart/form-data": UploadJobIn,
            "application/zip": {"type": "string", "format": "binary"},
        },
    )
    app.register_blueprint(bp)


@bp.post("/jobs")
@bp.auth_required(auth, roles=SUBMIT)
@bp.input(SubmitQuery, location="query", arg_name="query")
@bp.output(JobOut, status_code=202, description="The job, queued")
@bp.doc(
    responses={
        400: "Bad input",
        403: "Folder outside the import roots",
        408: "The upload arrived too slowly",
        413: "Too large",
        415: "Neither JSON nor multipart",
        429: "Too many uploads of this key name arriving at once",
        503: "Queue unavailable",
    }
)
def submit_job(query: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Submit a zip (`archive`), files with relative paths (`images`) or a server folder;
    `?priority=stat` puts its images ahead of routine ones (default: the key's priority);
    `?callback_url=` is POSTed the job's summary when it ends."""
    context = api_context(current_app)
    callback_url = query.get("callback_url")
    with context.db.session() as session:  # refused before a byte of the upload is read
        check_callback_url(session, caller().name, callback_url)
    priority = Priority(query.get("priority", caller().priority))
    new = NewJob(uuid4().hex, caller().name, priority, callback_url)
    if request.mimetype not in UPLOAD_TYPES:  # a folder job, or a body refused as it is
        return _submit(context, new)
    settings = context.settings
    with (
        upload_slot(context.storage, caller().name, settings.max_uploads_per_owner),
        watched_upload(settings.upload_min_kb_per_s),
    ):
        return _submit(context, new)


def _submit(context: ApiContext, new: NewJob) -> tuple[dict[str, Any], int, dict[str, str]]:
    db, storage, enqueue = context.db, context.storage, context.queue.ingest
    if request.mimetype == "application/zip":
        job = _submit_raw_zip(context, new)
    elif request.mimetype == "application/json":
        data = _load(FolderJobIn(), request.get_json(silent=False))
        open_to = caller().owner_filter
        job = submit_folder(db, enqueue, context.settings, data["folder"], new, open_to)
    elif request.mimetype == "multipart/form-data":
        data = _load(UploadJobIn(), _multipart_parts())
        if archive := data.get("archive"):
            name = archive.filename or ARCHIVE_NAME
            store = partial(persist, archive)
            job = submit_archive(db, storage, enqueue, store, name, new)
        else:
            files = ((f.filename or "", f.stream) for f in data["images"])
            job = submit_files(db, storage, enqueue, files, new)
    else:
        raise api_error(
            415,
            'send JSON {"folder": ...}, a zip as application/zip, '
            "or multipart/form-data with `archive` or `images`",
        )
    return _job_out(job), 202, {"Location": url_for("jobs.get_job_status", job_id=new.id)}


def _submit_raw_zip(context: ApiContext, new: NewJob) -> Job:
    """A zip sent as the whole body (no multipart parsing); its job may be queued while it
    still arrives (core/submission.py)."""
    _, options = parse_options_header(request.headers.get("Content-Disposition", ""))
    try:
        return submit_raw_zip(
            context.db,
            context.storage,
            context.queue.ingest,
            iter(partial(request.stream.read, CHUNK), b""),
            request.content_length,
            options.get("filename") or ARCHIVE_NAME,
            new,
            context.settings.early_ingest_mb_per_s * 1024 * 1024,
        )
    except JobStoppedDuringUploadError as stopped:
        if stopped.still_sending:
            _drain_body()  # so the client, still sending, reads the answer
        error = api_error(409, stopped.message, stopped.code)
        error.detail = {"job_id": stopped.job_id, "status": stopped.status}
        raise error from None


def _drain_body() -> None:
    while request.stream.read(CHUNK):
        pass


def _multipart_parts() -> dict[str, Any]:
    parts = (
        ("archive", request.files.get("archive")),
        ("images", request.files.getlist("images") or None),
    )
    return {key: value for key, value in parts if value is not None}


def _load(schema: Any, data: Any) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = schema.load(data if data is not None else {})
        return loaded
    except ValidationError as exc:
        error = api_error(400, "Validation error", "validation_error")
        error.detail = {"body": exc.messages}
        raise error from exc


@bp.get("/jobs")
@bp.auth_required(auth, roles=READ)
@bp.input(JobsQuery, location="query")
@bp.output(JobsPageOut)
def list_job_statuses(query_data: dict[str, Any]) -> dict[str, Any]:
    """Jobs, newest first, optionally filtered by status."""
    context = api_context(current_app)
    with context.db.session() as session:
        page = list_jobs(
            session,
            query_data["page"],
            query_data["per_page"],
            query_data.get("status"),
            owner=caller().owner_filter,
        )
    return {"items": [_job_out(job) for job in page.items], "pagination": pagination(page)}


@bp.get("/jobs/<job_id>")
@bp.auth_required(auth, roles=READ)
@bp.output(JobOut)
@bp.doc(responses={404: "No such job"})
def get_job_status(job_id: str) -> dict[str, Any]:
    """Status, counts, progress, model versions and timestamps of one job."""
    with api_context(current_app).db.session() as session:
        job = get_job(session, job_id, caller().owner_filter)
        max_wait = timedelta(seconds=api_context(current_app).settings.max_wait_seconds)
        shown = _job_out(job, place_of(session, job.id, max_wait) if is_scoring(job) else None)
        shown["dicom_reports"] = [_report_out(report) for report in reports_of(session, job.id)]
        shown["callback"] = _callback_out(callback_of(session, job.id))
        return shown


@bp.post("/jobs/<job_id>/cancel")
@bp.auth_required(auth, roles=SUBMIT)
@bp.output(JobOut, status_code=202, description="Cancelled; a batch already scoring finishes")
@bp.doc(responses={404: "No such job", 409: "Already finished"})
def cancel(job_id: str) -> dict[str, Any]:
    """Stop a job; results already written stay."""
    with api_context(current_app).db.session() as session:
        return _job_out(cancel_job(session, job_id, caller().owner_filter))


def _callback_out(found: tuple[Callback, list[CallbackAttempt]] | None) -> dict[str, Any] | None:
    if found is None:
        return None
    callback, attempts = found
    return {
        "url": callback.url,
        "state": callback.state,
        "next_attempt_at": callback.next_attempt_at if callback.state == "pending" else None,
        "delivered_at": callback.delivered_at,
        "attempts": [
            {
                "number": a.number,
                "started_at": a.started_at,
                "http_status": a.http_status,
                "error": a.error,
                "duration_ms": a.duration_ms,
            }
            for a in attempts
        ],
    }


def _report_out(report: DicomDelivery) -> dict[str, Any]:
    return {
        "study_uid": report.study_uid,
        "destination": report.destination,
        "state": report.state,
        "attempts": report.attempts,
        "last_status": report.last_status,
        "next_attempt_at": report.next_attempt_at if report.state == "pending" else None,
        "delivered_at": report.delivered_at,
        "report_uid": report.report_uid,
    }


def _job_out(job: Job, place: Place | None = None) -> dict[str, Any]:
    versions = list(job.model_versions or [])
    return {
        "id": job.id,
        "status": job.status,
        "status_detail": job.status_detail,
        "priority": job.priority,
        "images_ahead": place.images_ahead if place else None,
        "expected_start_at": place.expected_start_at if place else None,
        "source_kind": job.source_kind,
        "source_name": job.source_name,
        "total": job.total,
        "scored": job.scored,
        "errors": job.errors,
        "rejected": job.rejected,
        "progress": round(job.progress, 4),
        "waiting_for_model": job.waiting_for_model,
        "model_version": versions[-1] if versions else None,
        "model_versions": versions,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "results_url": url_for("results.job_results", job_id=job.id),
    }
