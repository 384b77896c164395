"""The sweep's questions, asked every `PNEUMOSCAN_SWEEP_SECONDS` by beat: which jobs stopped
moving (a lost message, a dead worker), and which uploads nobody will finish.

Every scoring step is idempotent, so the safe answer to "was this message lost?" is to
send the work again once nothing has moved for a while.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from core.intake.growing_file import PART_SUFFIX, writer_holds
from core.job_state import UNFINISHED_STATUSES
from core.models import Image, Job, JobStatus, utcnow
from core.passes import release_passes, stale_passes
from core.storage import Storage


def jobs_to_ingest_again(session: Session, stale_after: timedelta) -> list[str]:
    """Jobs whose ingest never started or never finished (a lost message, a dead worker)."""
    cutoff = utcnow() - stale_after
    return list(
        session.scalars(
            select(Job.id).where(
                Job.status.in_(UNFINISHED_STATUSES),
                Job.total.is_(None),
                Job.waiting_for_model.is_(False),
                Job.created_at < cutoff,
                (Job.ingest_started_at.is_(None)) | (Job.ingest_started_at < cutoff),
            )
        )
    )


def jobs_to_score_again(session: Session, stale_after: timedelta) -> list[str]:
    """Running jobs with unscored images and no progress for `stale_after`; marked as moved,
    so the next sweep waits another `stale_after` before sending their batches again."""
    cutoff = utcnow() - stale_after
    pending = exists().where(Image.job_id == Job.id, Image.scored_at.is_(None))
    stalled = list(
        session.scalars(
            select(Job.id).where(Job.status == JobStatus.RUNNING, Job.updated_at < cutoff, pending)
        )
    )
    if stalled:
        session.execute(update(Job).where(Job.id.in_(stalled)).values(updated_at=utcnow()))
    return stalled


def release_stale_passes(session: Session, stale_after: timedelta) -> int:
    """Passes begun `stale_after` ago and never finished: their worker was killed outright
    (its message waits for Redis's visibility timeout), so their images go back to the
    queue as suspects. Returns how many images went back."""
    return release_passes(session, stale_passes(session, utcnow() - stale_after))


def remove_orphan_uploads(session: Session, storage: Storage, older_than: timedelta) -> int:
    """Uploads nobody will finish: temporary files no live request holds, and job folders
    without a job row (the API died between storing and committing)."""
    removed = 0
    incoming = storage.incoming_dir
    for path in incoming.glob("upload-*") if incoming.is_dir() else []:
        if not writer_holds(path):
            path.unlink(missing_ok=True)
            removed += 1
    cutoff = (utcnow() - older_than).timestamp()
    uploads = storage.uploads_dir
    for folder in uploads.iterdir() if uploads.is_dir() else []:
        if folder == incoming or folder.stat().st_mtime > cutoff:
            continue
        if any(writer_holds(part) for part in folder.glob(f"*{PART_SUFFIX}")):
            continue  # a raw zip still arriving: its job row is made once it is in
        if session.get(Job, folder.name) is None:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
