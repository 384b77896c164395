"""A job's results (a page as JSON, or all as CSV) and rejected entries; and
/v1/results/<id>/label, where a radiologist confirms (or corrects) a result's label."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import Response, current_app, stream_with_context

from api.auth import READ, REVIEW, auth, caller
from api.context import ApiContext, api_context
from api.pagination import pagination
from api.schemas import (
    LabelIn,
    LabelOut,
    RejectedListOut,
    RejectedQuery,
    ResultsPageOut,
    ResultsQuery,
)
from core.jobs import get_job, rejected_page
from core.labels import set_label
from core.models import DICOM_COLUMNS
from core.results import iter_results, results_page

bp = APIBlueprint("results", __name__, url_prefix="/v1", tag="Results")


def init_app(app: APIFlask) -> None:
    app.register_blueprint(bp)


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
