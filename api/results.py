"""A job's results (a page as JSON, or all as CSV) and rejected entries;
/v1/results/<id>/label, where a radiologist confirms (or corrects) a result's label; and the
pictures of a result: its image and its heatmap."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import Response, current_app, send_file, stream_with_context

from api.auth import READ, REVIEW, auth, caller
from api.context import ApiContext, api_context
from api.errors import api_error
from api.pagination import pagination
from api.schemas import (
    HeatmapPendingOut,
    LabelIn,
    LabelOut,
    PreviewQuery,
    RejectedListOut,
    RejectedQuery,
    ResultsPageOut,
    ResultsQuery,
)
from core.imaging import ImageDecodeError
from core.jobs import get_job, rejected_page
from core.labels import set_label
from core.models import DICOM_COLUMNS
from core.previews import NotScoredError, preview, preview_size, stored_image
from core.results import iter_results, results_page

bp = APIBlueprint("results", __name__, url_prefix="/v1", tag="Results")


def init_app(app: APIFlask) -> None:
    app.register_blueprint(bp)


RESULTS_RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {
        "description": "A page of results, all of them as CSV, or the DICOM reports as a zip",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    404: {"description": "No such job (or, for `format=dicom`, no scored DICOM image)"},
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


@bp.get("/jobs/<job_id>/rejected")
@bp.auth_required(auth, roles=READ)
@bp.input(RejectedQuery, location="query")
@bp.output(RejectedListOut)
@bp.doc(tags=["Jobs"], responses={404: "No such job"})
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
@bp.doc(tags=["Jobs"], responses=RESULTS_RESPONSES)
def job_results(job_id: str, query_data: dict[str, Any]) -> Any:
    """A page of results as JSON, every result as CSV with `?format=csv`, or with
    `?format=dicom` a zip of each DICOM study's report (a Comprehensive 3D SR, TID 1500)."""
    context = api_context(current_app)
    owner = caller().owner_filter
    if query_data["format"] == "dicom":
        return _dicom_reports(context, job_id, owner, query_data.get("study_uid"))
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


def _dicom_reports(
    context: ApiContext, job_id: str, owner: str | None, study_uid: str | None
) -> Response:
    """Reports with no patient module: pneumoscan keeps none (the node's sent copies have it)."""
    import zipfile

    from pydicom.filewriter import dcmwrite

    from core.dicom_report import build_report, study_findings

    with context.db.session() as session:
        complete = get_job(session, job_id, owner).status == "completed"
        studies = study_findings(session, job_id)
    if study_uid:
        studies = {uid: found for uid, found in studies.items() if uid == study_uid}
    if not studies:
        raise api_error(404, "the job has no scored DICOM image to report", "no_dicom_results")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for uid, findings in studies.items():
            report = io.BytesIO()
            # A partial report has other content than the final one, so another UID.
            purpose = "download" if complete else f"download of {len(findings)}"
            dcmwrite(report, build_report(job_id, uid, findings, None, purpose, complete))
            archive.writestr(f"{uid}.dcm", report.getvalue())
    return Response(
        buffer.getvalue(),
        mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="pneumoscan-{job_id}-dicom.zip"'},
    )


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


@bp.put("/results/<int(max=9223372036854775807):result_id>/label")
@bp.auth_required(auth, roles=REVIEW)
@bp.input(LabelIn, location="json")
@bp.output(LabelOut)
@bp.doc(responses={404: "No such result", 409: "The image was never scored"})
def put_label(result_id: int, json_data: dict[str, Any]) -> dict[str, Any]:
    """Confirm a label (recorded with the key's name); a later label replaces an earlier one.

    Needs a `review` (or `admin`) key: the label feeds the next training run of the model
    everyone's images are scored with.
    """
    with api_context(current_app).db.session() as session:
        who = caller()
        label = set_label(session, result_id, json_data["label"], who.name, who.owner_filter)
        return {
            "result_id": result_id,
            "label": label.label,
            "labelled_by": label.labelled_by,
            "labelled_at": label.labelled_at,
        }


IMAGE_RESPONSES: dict[int | str, Any] = {
    200: {"description": "The image as a JPEG", "content": {"image/jpeg": {}}},
    404: {"description": "No such result"},
    422: {"description": "The stored image cannot be decoded"},
}


@bp.get("/results/<int(max=9223372036854775807):result_id>/image")
@bp.auth_required(auth, roles=READ)
@bp.input(PreviewQuery, location="query")
@bp.doc(responses=IMAGE_RESPONSES)
def result_image(result_id: int, query_data: dict[str, Any]) -> Any:
    """A preview of the stored, de-identified image (DICOM windowed as scoring reads it),
    made on first request and kept with the job's files."""
    context = api_context(current_app)
    with context.db.session() as session:
        image = stored_image(session, context.storage, result_id, caller().owner_filter)
    try:
        path = preview(
            context.storage,
            image,
            preview_size(query_data["size"]),
            context.settings.max_image_pixels,
        )
    except ImageDecodeError as exc:
        raise api_error(422, f"the stored image cannot be shown: {exc}", "undecodable") from exc
    return _private_file(path, "image/jpeg")


HEATMAP_RESPONSES: dict[int | str, Any] = {
    200: {
        "description": "The heatmap, a transparent PNG laid over the image",
        "content": {"image/png": {}},
    },
    202: {"description": "Being made: ask again after `Retry-After` seconds"},
    404: {"description": "No such result"},
    409: {"description": "The image has no score, or its model version's artifact was pruned"},
    422: {"description": "No heatmap can be made for it (the reason is given)"},
    503: {"description": "The queue is unavailable"},
}
HEATMAP_RETRY_SECONDS = 2
# A request for a heatmap is sent again only if it has not come within this long.
HEATMAP_ASK_AGAIN_SECONDS = 120


@bp.get("/results/<int(max=9223372036854775807):result_id>/heatmap")
@bp.auth_required(auth, roles=READ)
@bp.output(HeatmapPendingOut, status_code=202)
@bp.doc(responses=HEATMAP_RESPONSES)
def result_heatmap(result_id: int) -> Any:
    """Where the model looked (Grad-CAM), made by a worker with the version that scored the
    image: `202` with `Retry-After` until it exists, then the PNG."""
    context = api_context(current_app)
    with context.db.session() as session:
        image = stored_image(session, context.storage, result_id, caller().owner_filter)
    path = context.storage.heatmap(image.job_id, image.id)
    if path.is_file():
        return _private_file(path, "image/png")
    failed = path.with_suffix(".error")
    if failed.is_file():
        raise api_error(422, failed.read_text(), "no_heatmap")
    if image.probability is None:
        raise NotScoredError(f"result {result_id} has no score to explain")
    if not image.artifact_available:
        raise api_error(409, f"model version {image.model_version} was pruned", "artifact_deleted")
    asked = path.with_suffix(".requested")
    if not asked.exists() or time.time() - asked.stat().st_mtime > HEATMAP_ASK_AGAIN_SECONDS:
        context.queue.heatmap(image.id)
        asked.parent.mkdir(parents=True, exist_ok=True)
        asked.touch()
    return (
        {"status": "pending", "retry_after": HEATMAP_RETRY_SECONDS},
        202,
        {"Retry-After": str(HEATMAP_RETRY_SECONDS)},
    )


def _private_file(path: Path, mimetype: str) -> Response:
    """A picture of a patient's image: the browser may keep it, shared caches may not."""
    response = send_file(path, mimetype=mimetype, conditional=True, max_age=3600)
    response.cache_control.private = True
    response.cache_control.public = False
    return response
