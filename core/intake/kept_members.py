"""Images read where they lie in their uploaded zip, and what is kept of that zip.

A zip sent as the raw request body and read while it arrives (`streaming_zip`) is linked into
the job's files folder as `upload.zip` before its first member is read. Its stored
(uncompressed) JPEG and PNG members are then not copied out: their image rows point at the
kept upload, at the member's offset (`Image.member_offset`, `size_bytes` long), and scoring
and training read those bytes where they are. Every other member is extracted as from any zip.

Once ingest has ended, nothing else of the upload stays: the kept upload is blanked (zeros
over every byte that is not an image row's: local headers, the central directory, DICOM
originals, refused members), or removed when no row of a recorded job points into it. A
marker made before the link and removed after the blanking lets the sweep finish the work of
an ingest that died in between.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import job_state
from core.db import Database
from core.models import Image, Job
from core.storage import KEPT_NAME, PENDING_NAME, Span, Storage

BLANK_CHUNK = 1024 * 1024


def keep_upload(link: Callable[[Path], None], files_dir: Path) -> Path | None:
    """Link the arriving upload (with `link`) as the job's kept upload; None when it cannot
    be linked (then every member is copied out, as before)."""
    files_dir.mkdir(parents=True, exist_ok=True)
    (files_dir / PENDING_NAME).touch()  # before the link: no unblanked upload without it
    kept = files_dir / KEPT_NAME
    try:
        link(kept)
    except FileExistsError:  # linked by an earlier part of this ingest, which gave way
        return kept
    except OSError:  # no /proc/self/fd, or a file system without hard links
        return None
    return kept


def finish_kept_upload(db: Database, storage: Storage, job_id: str) -> None:
    """Blank the kept upload of an ingest that has ended, or remove it; idempotent."""
    pending, kept = storage.kept_upload_pending(job_id), storage.kept_upload(job_id)
    if not pending.exists():
        return
    with db.session() as session:
        spans = kept_spans(session, job_id)
    if spans:
        blank_outside(kept, spans)
    else:
        kept.unlink(missing_ok=True)
    pending.unlink(missing_ok=True)


def kept_spans(session: Session, job_id: str) -> list[Span]:
    """Where the images of a recorded job lie in its kept upload (none for a job that was
    cancelled, failed or never recorded: its kept upload goes)."""
    job = session.get(Job, job_id)
    if job is None or job_state.is_stopped(job) or job.total is None:
        return []
    rows = session.execute(
        select(Image.member_offset, Image.size_bytes).where(
            Image.job_id == job_id, Image.member_offset.is_not(None)
        )
    )
    return [Span(offset, length) for offset, length in rows if offset is not None]


def blank_outside(path: Path, spans: list[Span]) -> None:
    """Write zeros over every byte of `path` outside `spans`; the spans' bytes are untouched,
    so a batch reading them meanwhile reads what it would have."""
    zeros = memoryview(bytes(BLANK_CHUNK))
    descriptor = os.open(path, os.O_RDWR)
    try:
        end = os.fstat(descriptor).st_size
        position = 0
        for span in [*sorted(spans), Span(end, 0)]:
            while position < span.offset:
                position += os.pwrite(
                    descriptor, zeros[: min(BLANK_CHUNK, span.offset - position)], position
                )
            position = max(position, span.offset + span.length)
    finally:
        os.close(descriptor)


def jobs_with_unfinished_kept_uploads(session: Session, storage: Storage) -> list[str]:
    """Jobs whose ingest ended (or whose row is gone) with their kept upload not blanked: an
    ingest that died after recording the job. Jobs still being ingested are left alone."""
    found = []
    for job_id in storage.jobs_with_pending_kept_uploads():
        job = session.get(Job, job_id)
        if job is None or job.total is not None or job_state.is_finished(job):
            found.append(job_id)
    return found
