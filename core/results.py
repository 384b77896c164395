"""Writing a pass's results (idempotently, for any jobs) and reading a job's results back."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Select, Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from core import job_state
from core.jobs import Page, get_job
from core.models import DICOM_COLUMNS, Image, Job, Label, ModelVersion, utcnow

PNEUMONIA = "PNEUMONIA"
NORMAL = "NORMAL"


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one image: a probability, or an error saying why there is none."""

    image_id: int
    job_id: str
    probability: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class ResultRow:
    id: int
    path: str
    probability: float | None
    label: str | None
    threshold: float | None
    model_version: str | None
    error: str | None
    scored_at: datetime | None
    confirmed_label: str | None
    # DICOM_COLUMNS, in that order:
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    modality: str | None
    body_part: str | None
    view_position: str | None


def record_results(
    session: Session,
    results: Sequence[ImageResult],
    model: ModelVersion,
    pass_id: int | None = None,
) -> int:
    """Write the results not yet recorded, advance each job's counters by what it newly got,
    complete the jobs now done; returns how many results are new. One transaction.

    A pass delivered again finds its images already scored and changes nothing.
    """
    ids = [result.image_id for result in results]
    fresh = set(
        session.scalars(
            select(Image.id)
            .where(Image.id.in_(ids), Image.scored_at.is_(None))
            .order_by(Image.id)
            .with_for_update()
        )
    )
    new = [result for result in results if result.image_id in fresh]
    if new:
        _write_images(session, new, model, pass_id)
    by_job: dict[str, list[ImageResult]] = {}
    for result in new:
        by_job.setdefault(result.job_id, []).append(result)
    # Jobs in one order everywhere, so two passes locking the same jobs cannot deadlock.
    for job_id in sorted(by_job):
        _advance_job(session, job_id, by_job[job_id], model.version)
    for job_id in sorted({result.job_id for result in results}):
        job_state.complete_if_done(session, job_id)
    return len(new)


def _write_images(
    session: Session, results: Sequence[ImageResult], model: ModelVersion, pass_id: int | None
) -> None:
    now = utcnow()
    table = cast(Table, Image.__table__)
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.scored_at.is_(None))
        .values(
            probability=bindparam("b_probability"),
            label=bindparam("b_label"),
            threshold=bindparam("b_threshold"),
            model_version_id=bindparam("b_model"),
            error=bindparam("b_error"),
            scored_at=bindparam("b_scored_at"),
            pass_id=bindparam("b_pass"),
        )
    )
    # One statement, executed for the whole batch.
    session.connection().execute(
        statement,
        [
            {
                "b_id": r.image_id,
                "b_probability": r.probability,
                "b_label": _label(r.probability, model.threshold),
                "b_threshold": model.threshold if r.probability is not None else None,
                "b_model": model.id if r.probability is not None else None,
                "b_error": r.error,
                "b_scored_at": now,
                "b_pass": pass_id,
            }
            for r in results
        ],
    )


def _label(probability: float | None, threshold: float) -> str | None:
    if probability is None:
        return None
    return PNEUMONIA if probability >= threshold else NORMAL


def _advance_job(
    session: Session, job_id: str, results: Sequence[ImageResult], version: str
) -> None:
    errors = sum(1 for r in results if r.error is not None)
    # The arithmetic happens in the database, so concurrent batches never lose an update.
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            scored=Job.scored + (len(results) - errors),
            errors=Job.errors + errors,
            updated_at=utcnow(),
        )
    )
    if errors == len(results):
        return
    # The row is locked by the update above, so this read-modify-write cannot interleave.
    job = session.get(Job, job_id, populate_existing=True)
    if job is not None and version not in job.model_versions:
        job.model_versions = [*job.model_versions, version]


def _results_query(job_id: str, study_uid: str | None = None) -> Select:
    query = (
        select(
            Image.id,
            Image.relative_path,
            Image.probability,
            Image.label,
            Image.threshold,
            ModelVersion.version,
            Image.error,
            Image.scored_at,
            Label.label,
            *(getattr(Image, column) for column in DICOM_COLUMNS),
        )
        .outerjoin(ModelVersion, Image.model_version_id == ModelVersion.id)
        .outerjoin(Label, Label.image_id == Image.id)
        .where(Image.job_id == job_id)
        .order_by(Image.id)
    )
    return query.where(Image.study_uid == study_uid) if study_uid else query


def results_page(
    session: Session,
    job_id: str,
    page: int,
    per_page: int,
    owner: str | None = None,
    study_uid: str | None = None,
) -> Page:
    """A page of the job's results; with `study_uid`, only that DICOM study's."""
    get_job(session, job_id, owner)
    query = _results_query(job_id, study_uid)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(query.offset((page - 1) * per_page).limit(per_page))
    return Page([ResultRow(*row) for row in rows], total, page, per_page)


def iter_results(
    session: Session,
    job_id: str,
    owner: str | None = None,
    study_uid: str | None = None,
    chunk: int = 1000,
) -> Iterator[ResultRow]:
    """All results of a job (or of one of its studies), streamed from the database in chunks."""
    get_job(session, job_id, owner)
    for row in session.execute(
        _results_query(job_id, study_uid).execution_options(yield_per=chunk)
    ):
        yield ResultRow(*row)
