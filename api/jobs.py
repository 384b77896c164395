"""/v1/jobs: submit a study archive, files or server folder; follow it; read its results."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

from apiflask import APIBlueprint, APIFlask, HTTPError
from flask import Response, current_app, request, stream_with_context, url_for
from marshmallow import ValidationError
from werkzeug.datastructures import FileStorage
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
    RejectedListOut,
    RejectedQuery,
    ResultsPageOut,
    ResultsQuery,
    UploadJobIn,
)
from api.uploads import CHUNK, UPLOAD_TYPES, persist, upload_slot, watched_upload
from core.archive import EMPTY_ZIP_MAGIC, ZIP_MAGIC, is_zip_file
from core.arriving import ArrivingWriter
from core.broker.queue import QueueUnavailableError
from core.ingest import ARCHIVE_NAME
from core.jobs import (
    JobFinishedError,
    cancel_job,
    create_job,
    discard_job,
    get_job,
    list_jobs,
    rejected_page,
    resolve_import_folder,
    save_uploaded_images,
)
from core.models import DICOM_COLUMNS, FINISHED_STATUSES, Job, JobStatus, SourceKind, utcnow
from core.results import iter_results, results_page

log = logging.getLogger(__name__)
bp = APIBlueprint("jobs", __name__, url_prefix="/v1", tag="Jobs")
# A raw zip upload is judged fast enough to expand while it arrives after this many bytes.
EARLY_INGEST_AFTER = 16 * 1024 * 1024

RESULTS_RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {
        "description": "A page of results, or all of them as CSV",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    404: {"description": "No such job"},
}
CSV_COLUMNS = [
    "id",
    "path",
    "probability",
    "label",
    "threshold",
    "model_version",
    "error",
    "confirmed_label",
    *DICOM_COLUMNS,
]


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
def submit_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Submit a zip (`archive`), files with relative paths (`images`) or a server folder."""
    context = api_context(current_app)
    if request.mimetype not in UPLOAD_TYPES:  # a folder job, or a body refused as it is
        return _submit(context)
    settings = context.settings
    with (
        upload_slot(context.storage, caller().name, settings.max_uploads_per_owner),
        watched_upload(settings.upload_min_kb_per_s),
    ):
        return _submit(context)


def _submit(context: ApiContext) -> tuple[dict[str, Any], int, dict[str, str]]:
    job_id = uuid4().hex
    if request.mimetype == "application/zip":
        job = _submit_raw_archive(context, job_id)
    else:
        try:
            kind, source_name = _store_source(context, job_id)
        except BaseException:
            context.storage.remove_job(job_id)
            raise
        job = _create_and_enqueue(context, job_id, kind, source_name)
    return _job_out(job), 202, {"Location": url_for("jobs.get_job_status", job_id=job_id)}


def _create_and_enqueue(context: ApiContext, job_id: str, kind: SourceKind, source: str) -> Job:
    try:
        with context.db.session() as session:
            job = create_job(session, kind, source, job_id, owner=caller().name)
    except BaseException:
        context.storage.remove_job(job_id)
        raise
    # Only once the job row is committed may a worker look for it.
    _enqueue_ingest(context, job)
    return job


def _submit_raw_archive(context: ApiContext, job_id: str) -> Job:
    """A zip sent as the whole body: the fastest way in (no multipart parsing). When it arrives
    fast, the job is queued while it arrives and ingest reads it as it comes (core/arriving.py);
    a failed upload leaves no job behind either way."""
    first = _first_zip_chunk()
    _, options = parse_options_header(request.headers.get("Content-Disposition", ""))
    name = options.get("filename") or ARCHIVE_NAME
    early_rate = context.settings.early_ingest_mb_per_s * 1024 * 1024
    job: Job | None = None
    archive = context.storage.job_dir(job_id) / ARCHIVE_NAME
    try:
        with ArrivingWriter(archive) as upload:
            upload.write(first)
            started = last_look = time.monotonic()
            while chunk := request.stream.read(CHUNK):
                upload.write(chunk)
                if job is None and _arrives_fast(upload.size, started, early_rate):
                    job = _create_and_enqueue(context, job_id, SourceKind.ARCHIVE, name)
                elif job is not None and time.monotonic() - last_look > STOPPED_LOOK_SECONDS:
                    last_look = time.monotonic()
                    _raise_if_stopped(context, job_id)  # the part file goes with the exception
            _check_complete(upload.size)
        if job is not None:
            _raise_if_stopped(context, job_id, archive)
        return job or _create_and_enqueue(context, job_id, SourceKind.ARCHIVE, name)
    except JobStoppedDuringUploadError as stopped:
        _drain_body()  # so the client, still sending, reads the answer
        raise stopped.answer() from None
    except BaseException:
        if job is not None and (stopped_job := _stopped(context, job_id)) is not None:
            raise JobStoppedDuringUploadError(stopped_job).answer() from None  # ingest failed it
        if job is not None:
            with context.db.session() as session:
                discard_job(session, job_id)
        context.storage.remove_job(job_id)
        raise


# How often an upload whose job is already queued looks whether it was cancelled (or failed
# by its ingest) meanwhile: then the rest of the body is not written, only read.
STOPPED_LOOK_SECONDS = 1.0


class JobStoppedDuringUploadError(Exception):
    """The job of an upload still arriving was cancelled, or its ingest failed it."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.id)
        self.job_id, self.status, self.detail = job.id, job.status, job.status_detail

    def answer(self) -> HTTPError:
        message = (
            f"job {self.job_id} was {self.status} while its upload arrived "
            f"({self.detail}); what was scored of it is kept"
        )
        error = api_error(409, message, JobFinishedError.code)
        error.detail = {"job_id": self.job_id, "status": self.status}
        return error


def _stopped(context: ApiContext, job_id: str) -> Job | None:
    with context.db.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.status not in FINISHED_STATUSES:
            return None
        session.expunge(job)
        return job


def _raise_if_stopped(context: ApiContext, job_id: str, archive: Path | None = None) -> None:
    if (job := _stopped(context, job_id)) is not None:
        if archive is not None:  # complete already: its ingest ended, nobody else removes it
            archive.unlink(missing_ok=True)
        raise JobStoppedDuringUploadError(job)


def _drain_body() -> None:
    while request.stream.read(CHUNK):
        pass


def _first_zip_chunk() -> bytes:
    first: bytes = request.stream.read(CHUNK)
    if not first:
        raise api_error(400, "the body is empty", "invalid_upload")
    if first[:4] not in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
        raise api_error(400, "the body is not a zip file", "invalid_upload")
    return first


def _check_complete(received: int) -> None:
    """gunicorn ends a body quietly when its client goes away: count what came."""
    expected = request.content_length
    if expected is not None and received != expected:
        message = f"the upload ended after {received} of {expected} bytes"
        raise api_error(400, message, "incomplete_upload")


def _arrives_fast(size: int, started: float, rate: float) -> bool:
    """Whether the upload so far came at `rate` bytes/s (0: never judged fast)."""
    return bool(rate) and size >= EARLY_INGEST_AFTER and size >= rate * (time.monotonic() - started)


def _store_source(context: ApiContext, job_id: str) -> tuple[SourceKind, str]:
    if request.mimetype == "application/json":
        data = _load(FolderJobIn(), request.get_json(silent=False))
        settings = context.settings
        folder = resolve_import_folder(
            data["folder"],
            settings.import_roots,
            settings.import_root_owners,
            caller().owner_filter,
        )
        return SourceKind.FOLDER, str(folder)
    if request.mimetype == "multipart/form-data":
        data = _load(
            UploadJobIn(),
            {
                key: value
                for key, value in (
                    ("archive", request.files.get("archive")),
                    ("images", request.files.getlist("images") or None),
                )
                if value is not None
            },
        )
        if data.get("archive"):
            return SourceKind.ARCHIVE, _store_archive(context, job_id, data["archive"])
        count = save_uploaded_images(
            context.storage, job_id, ((f.filename or "", f.stream) for f in data["images"])
        )
        return SourceKind.IMAGES, f"{count} uploaded files"
    raise api_error(
        415,
        'send JSON {"folder": ...}, a zip as application/zip, '
        "or multipart/form-data with `archive` or `images`",
    )


def _store_archive(context: ApiContext, job_id: str, upload: FileStorage) -> str:
    target = context.storage.job_dir(job_id) / ARCHIVE_NAME
    persist(upload, target)
    if not is_zip_file(target):
        raise api_error(400, "`archive` is not a zip file", "invalid_upload")
    return upload.filename or ARCHIVE_NAME


def _load(schema: Any, data: Any) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = schema.load(data if data is not None else {})
        return loaded
    except ValidationError as exc:
        error = api_error(400, "Validation error", "validation_error")
        error.detail = {"body": exc.messages}
        raise error from exc


def _enqueue_ingest(context: ApiContext, job: Job) -> None:
    try:
        context.queue.ingest(job.id)
    except QueueUnavailableError:
        with context.db.session() as session:
            stored = get_job(session, job.id)
            stored.status, stored.finished_at = JobStatus.FAILED, utcnow()
            stored.status_detail = "the job queue is unavailable; nothing was scored, submit again"
        context.storage.remove_job(job.id)
        raise


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
        return _job_out(get_job(session, job_id, caller().owner_filter))


@bp.post("/jobs/<job_id>/cancel")
@bp.auth_required(auth, roles=SUBMIT)
@bp.output(JobOut, status_code=202, description="Cancelled; a batch already scoring finishes")
@bp.doc(responses={404: "No such job", 409: "Already finished"})
def cancel(job_id: str) -> dict[str, Any]:
    """Stop a job; results already written stay."""
    with api_context(current_app).db.session() as session:
        return _job_out(cancel_job(session, job_id, caller().owner_filter))


@bp.get("/jobs/<job_id>/rejected")
@bp.auth_required(auth, roles=READ)
@bp.input(RejectedQuery, location="query")
@bp.output(RejectedListOut)
@bp.doc(responses={404: "No such job"})
def rejected(job_id: str, query_data: dict[str, Any]) -> dict[str, Any]:
    """A page of the entries of the upload that were not scored as images, with the reason."""
    with api_context(current_app).db.session() as session:
        page = rejected_page(
            session, job_id, query_data["page"], query_data["per_page"], caller().owner_filter
        )
        return {
            "items": [{"path": r.path, "reason": r.reason} for r in page.items],
            "pagination": pagination(page),
        }


@bp.get("/jobs/<job_id>/results")
@bp.auth_required(auth, roles=READ)
@bp.input(ResultsQuery, location="query")
@bp.output(ResultsPageOut)
@bp.doc(responses=RESULTS_RESPONSES)
def results(job_id: str, query_data: dict[str, Any]) -> Any:
    """A page of results as JSON, or every result as CSV with `?format=csv`."""
    context = api_context(current_app)
    owner = caller().owner_filter
    if query_data["format"] == "csv":
        with context.db.session() as session:
            get_job(session, job_id, owner)  # 404 before the streaming starts
        return Response(
            stream_with_context(_csv_lines(context, job_id, owner, query_data.get("study_uid"))),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="pneumoscan-{job_id}.csv"'},
        )
    with context.db.session() as session:
        job = get_job(session, job_id, owner)
        page = results_page(
            session,
            job_id,
            query_data["page"],
            query_data["per_page"],
            owner,
            query_data.get("study_uid"),
        )
        status = job.status
    return {
        "job_id": job_id,
        "status": status,
        "items": [vars(row) for row in page.items],
        "pagination": pagination(page),
    }


def _csv_lines(
    context: ApiContext, job_id: str, owner: str | None, study_uid: str | None
) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    with context.db.session() as session:
        for row in iter_results(session, job_id, owner, study_uid):
            writer.writerow([csv_cell(getattr(row, column)) for column in CSV_COLUMNS])
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A value as a CSV cell: text that a spreadsheet would run as a formula stays text."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _job_out(job: Job) -> dict[str, Any]:
    versions = list(job.model_versions or [])
    return {
        "id": job.id,
        "status": job.status,
        "status_detail": job.status_detail,
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
        "results_url": url_for("jobs.results", job_id=job.id),
    }
