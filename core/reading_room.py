"""What the reading room shows: a job's images ranked by probability, filtered and paged,
one image with its neighbours in that ranking, and the counts behind the filters.

The ranking is highest probability first, unscored and failed images last. A job with DICOM
studies is ranked by study: the study whose most suspicious image is highest comes first, its
images together. A page sorts the job's rows in the database and reads one page of them, so
the last page of a 20,000-image job costs what the first does (docs/performance.md, "The
reading room").
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, Subquery, and_, case, func, select
from sqlalchemy.orm import Session

from core.errors import NotFoundError
from core.jobs import Page, get_job
from core.models import Image, Job, Label, ModelVersion
from core.results import NORMAL, PNEUMONIA


class Show(StrEnum):
    """Which of a job's images a page lists."""

    ALL = "all"
    PNEUMONIA = "pneumonia"
    NORMAL = "normal"
    ERRORS = "errors"
    UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class RankedImage:
    id: int
    path: str
    probability: float | None
    label: str | None
    error: str | None
    confirmed_label: str | None
    study_uid: str | None
    view_position: str | None


@dataclass(frozen=True)
class ImageDetail:
    id: int
    job_id: str
    path: str
    format: str
    probability: float | None
    label: str | None
    threshold: float | None
    model_version: str | None
    error: str | None
    scored_at: datetime | None
    confirmed_label: str | None
    labelled_by: str | None
    labelled_at: datetime | None
    study_uid: str | None
    series_uid: str | None
    view_position: str | None


@dataclass(frozen=True)
class Neighbours:
    """Where an image stands in its job's ranking (1-based) and the images either side."""

    position: int
    total: int
    previous_id: int | None
    next_id: int | None


class ResultNotFoundError(NotFoundError):
    code = "result_not_found"


def _where(job_id: str, show: Show) -> list[Any]:
    conditions: list[Any] = [Image.job_id == job_id]
    if show == Show.PNEUMONIA:
        conditions.append(Image.label == PNEUMONIA)
    elif show == Show.NORMAL:
        conditions.append(Image.label == NORMAL)
    elif show == Show.ERRORS:
        conditions.append(Image.error.is_not(None))
    elif show == Show.UNCONFIRMED:
        conditions += [Image.probability.is_not(None), Label.id.is_(None)]
    return conditions


def has_studies(session: Session, job_id: str) -> bool:
    """Whether any image of the job came from a DICOM study."""
    found = session.scalar(
        select(Image.id).where(Image.job_id == job_id, Image.study_uid.is_not(None)).limit(1)
    )
    return found is not None


def _ranked(job_id: str, show: Show, by_study: bool) -> Subquery:
    """The images `show` selects, with each one's study's highest probability when the
    job is ranked by study."""
    columns: list[Any] = [
        Image.id,
        Image.relative_path.label("path"),
        Image.probability,
        Image.label,
        Image.error,
        Label.label.label("confirmed_label"),
        Image.study_uid,
        Image.view_position,
    ]
    if by_study:
        columns.append(
            func.max(Image.probability).over(partition_by=Image.study_uid).label("study_top")
        )
    return (
        select(*columns)
        .outerjoin(Label, Label.image_id == Image.id)
        .where(*_where(job_id, show))
        .subquery("ranked")
    )


def _ordering(ranked: Subquery, by_study: bool) -> list[Any]:
    order = [ranked.c.probability.desc().nulls_last(), ranked.c.id]
    if not by_study:
        return order
    return [ranked.c.study_top.desc().nulls_last(), ranked.c.study_uid, *order]


def _fields(ranked: Subquery) -> list[Any]:
    return [ranked.c[field.name] for field in fields(RankedImage)]


def ranked_page(
    session: Session,
    job_id: str,
    show: Show,
    page: int,
    per_page: int,
    owner: str | None = None,
) -> Page:
    """A page of the job's images (those `show` selects), in ranking order."""
    get_job(session, job_id, owner)
    by_study = has_studies(session, job_id)
    ranked = _ranked(job_id, show, by_study)
    total = session.scalar(select(func.count()).select_from(ranked)) or 0
    rows = session.execute(
        select(*_fields(ranked))
        .order_by(*_ordering(ranked, by_study))
        .offset((page - 1) * per_page)
        .limit(per_page)
    )
    return Page([RankedImage(*row) for row in rows], total, page, per_page)


def counts(session: Session, job_id: str) -> dict[Show, int]:
    """How many images each filter shows."""
    confirmed = Label.id.is_not(None)
    row = session.execute(
        select(
            func.count(),
            func.count(case((Image.label == PNEUMONIA, 1))),
            func.count(case((Image.label == NORMAL, 1))),
            func.count(case((Image.error.is_not(None), 1))),
            func.count(case((and_(Image.probability.is_not(None), ~confirmed), 1))),
        )
        .select_from(Image)
        .outerjoin(Label, Label.image_id == Image.id)
        .where(Image.job_id == job_id)
    ).one()
    return dict(zip(Show, row, strict=True))


def visible_image(query: Select, image_id: int, owner: str | None) -> Select:
    """`query` narrowed to one image of a job `owner` may see (any job when None)."""
    query = query.join(Job, Job.id == Image.job_id).where(Image.id == image_id)
    return query.where(Job.owner == owner) if owner is not None else query


def image_detail(session: Session, image_id: int, owner: str | None = None) -> ImageDetail:
    """One image with its result and confirmed label; another owner's is "not found"."""
    query = (
        select(
            Image.id,
            Image.job_id,
            Image.relative_path,
            Image.format,
            Image.probability,
            Image.label,
            Image.threshold,
            ModelVersion.version,
            Image.error,
            Image.scored_at,
            Label.label,
            Label.labelled_by,
            Label.labelled_at,
            Image.study_uid,
            Image.series_uid,
            Image.view_position,
        )
        .outerjoin(ModelVersion, ModelVersion.id == Image.model_version_id)
        .outerjoin(Label, Label.image_id == Image.id)
    )
    row = session.execute(visible_image(query, image_id, owner)).first()
    if row is None:
        raise ResultNotFoundError(f"no result {image_id}")
    values: tuple[Any, ...] = tuple(row)
    return ImageDetail(*values)


def neighbours(session: Session, job_id: str, image_id: int, show: Show) -> Neighbours | None:
    """The image's place in the ranking `show` selects, or None when it is not among them."""
    by_study = has_studies(session, job_id)
    ranked = _ranked(job_id, show, by_study)
    numbered = select(
        ranked.c.id, func.row_number().over(order_by=_ordering(ranked, by_study)).label("position")
    ).subquery("numbered")
    position = session.scalar(select(numbered.c.position).where(numbered.c.id == image_id))
    if position is None:
        return None
    around = dict(
        session.execute(
            select(numbered.c.position, numbered.c.id).where(
                numbered.c.position.in_([position - 1, position + 1])
            )
        ).all()
    )
    total = session.scalar(select(func.count()).select_from(ranked)) or 0
    return Neighbours(position, total, around.get(position - 1), around.get(position + 1))
