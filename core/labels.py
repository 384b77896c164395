"""Labels radiologists confirm on results; they feed the next training run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import ConflictError, InvalidInputError, NotFoundError
from core.models import Image, Job, Label, utcnow
from core.results import NORMAL, PNEUMONIA
from core.storage import Span, span_of

LABELS = (NORMAL, PNEUMONIA)


@dataclass(frozen=True)
class LabelledImage:
    image_id: int
    location: str
    relative_path: str
    sha256: str
    format: str
    label: str
    labelled_at: datetime
    span: Span | None = None  # the image is these bytes of `location` (a kept upload)


def set_label(
    session: Session, image_id: int, label: str, labelled_by: str, owner: str | None = None
) -> Label:
    """Record `label` for a scored image, replacing any earlier label.

    With `owner`, only results of that owner's jobs can be labelled.
    """
    if label not in LABELS:
        raise InvalidInputError(f"label must be one of {', '.join(LABELS)}")
    if not labelled_by.strip():
        raise InvalidInputError("say who confirmed the label")
    image = session.get(Image, image_id)
    job = session.get(Job, image.job_id) if image is not None else None
    if image is None or job is None or (owner is not None and job.owner != owner):
        raise NotFoundError(f"no result {image_id}")
    if image.error is not None or image.scored_at is None:
        raise ConflictError(
            f"result {image_id} has no probability to confirm: {image.error or 'not scored yet'}"
        )
    existing = session.scalar(select(Label).where(Label.image_id == image_id).with_for_update())
    if existing is None:
        try:
            with session.begin_nested():
                existing = Label(image_id=image_id, label=label, labelled_by=labelled_by)
                session.add(existing)
            return existing
        except IntegrityError:
            # Another request labelled it at the same moment: replace that label instead.
            existing = session.scalars(select(Label).where(Label.image_id == image_id)).one()
    existing.label, existing.labelled_by, existing.labelled_at = label, labelled_by, utcnow()
    return existing


def labelled_images(session: Session, limit: int | None = None) -> list[LabelledImage]:
    """The labelled images, the `limit` most recently labelled when there are more."""
    query = (
        select(
            Image.id,
            Image.location,
            Image.relative_path,
            Image.sha256,
            Image.format,
            Label.label,
            Label.labelled_at,
            Image.member_offset,
            Image.size_bytes,
        )
        .join(Label, Label.image_id == Image.id)
        .order_by(Label.labelled_at.desc(), Image.id.desc())
        .limit(limit)
    )
    rows = sorted(session.execute(query), key=lambda row: row.id)
    return [
        LabelledImage(*row[:7], span=span_of(row.member_offset, row.size_bytes)) for row in rows
    ]


def count_labels(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Label)) or 0


def newest_label_time(session: Session) -> datetime | None:
    return session.scalar(select(func.max(Label.labelled_at)))
