"""Submitting a job: store its source, record it, hand it to ingest; nothing left after a failure.

Plain functions behind `POST /v1/jobs` (and anything else that submits). Each takes the
`enqueue` function that sends a job id to ingest, the way ingest takes `release`; the job row
is committed before it is called, so a worker always finds the job. A queue that cannot take
the job fails it at once (its status says why) and removes what was stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from core import callbacks, job_state
from core.config import Settings
from core.db import Database
from core.errors import UnavailableError
from core.intake.entries import InvalidUploadError
from core.intake.growing_file import ArrivingWriter
from core.intake.received import save_received_files
from core.intake.safe_archive import EMPTY_ZIP_MAGIC, ZIP_MAGIC, is_zip_file
from core.jobs import create_job, discard_job, get_job, resolve_import_folder
from core.models import Job, Priority, SourceKind
from core.storage import Storage

Enqueue = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True)
class NewJob:
    """The job a submission makes: its id (chosen before anything is stored), the key name
    that owns it, and how urgent it is."""

    id: str
    owner: str
    priority: Priority = Priority.ROUTINE
    # Where the job's summary is POSTed when it ends; None: the owner's default URL, if any.
    callback_url: str | None = None


# A raw zip upload is judged fast enough to expand while it arrives after this many bytes.
EARLY_INGEST_AFTER = 16 * 1024 * 1024
# How often an upload whose job is already queued looks whether it was cancelled (or failed
# by its ingest) meanwhile: then the rest of the body is not written, only read.
STOPPED_LOOK_SECONDS = 1.0


class IncompleteUploadError(InvalidUploadError):
    code = "incomplete_upload"


class JobStoppedDuringUploadError(job_state.JobFinishedError):
    """The job of an upload still arriving was cancelled, or its ingest failed it."""

    def __init__(self, job: Job, still_sending: bool = True) -> None:
        super().__init__(
            f"job {job.id} was {job.status} while its upload arrived "
            f"({job.status_detail}); what was scored of it is kept"
        )
        self.job_id, self.status = job.id, job.status
        # False when the body itself broke off: there is nothing more to read of it.
        self.still_sending = still_sending


def submit_folder(
    db: Database,
    enqueue: Enqueue,
    settings: Settings,
    folder: str,
    new: NewJob,
    open_to: str | None,
) -> Job:
    """A folder on the import volume, scored where it lies (`open_to`: the key name whose
    roots it must lie under, None for an admin)."""
    resolved = resolve_import_folder(
        folder, settings.import_roots, settings.import_root_owners, open_to
    )
    return _record_and_enqueue(db, None, enqueue, new, SourceKind.FOLDER, str(resolved))


def submit_files(
    db: Database,
    storage: Storage,
    enqueue: Enqueue,
    files: Iterable[tuple[str, BinaryIO]],
    new: NewJob,
) -> Job:
    """Files sent one by one, each with its relative path."""
    count = _stored(storage, new.id, lambda: save_received_files(storage, new.id, files))
    source = f"{count} uploaded files"
    return _record_and_enqueue(db, storage, enqueue, new, SourceKind.IMAGES, source)


def submit_archive(
    db: Database,
    storage: Storage,
    enqueue: Enqueue,
    store: Callable[[Path], None],
    name: str,
    new: NewJob,
) -> Job:
    """A zip received whole (a multipart part): `store` puts it at the path it is given."""

    def store_zip() -> None:
        target = storage.job_archive(new.id)
        store(target)
        if not is_zip_file(target):
            raise InvalidUploadError("`archive` is not a zip file")

    _stored(storage, new.id, store_zip)
    return _record_and_enqueue(db, storage, enqueue, new, SourceKind.ARCHIVE, name)


def submit_raw_zip(
    db: Database,
    storage: Storage,
    enqueue: Enqueue,
    chunks: Iterator[bytes],
    expected: int | None,
    name: str,
    new: NewJob,
    early_rate: float,
) -> Job:
    """A zip sent as the whole body, read from `chunks`: the fastest way in. When it arrives
    at `early_rate` bytes/s or faster (0: never), the job is queued while it arrives and
    ingest reads it as it comes (core/intake/streaming_zip.py); a failed upload leaves no job
    behind."""
    first = _first_zip_chunk(chunks)
    job: Job | None = None
    job_id = new.id
    archive = storage.job_archive(job_id)
    try:
        with ArrivingWriter(archive) as upload:
            upload.write(first)
            started = last_look = time.monotonic()
            for chunk in chunks:
                upload.write(chunk)
                if job is None and _arrives_fast(upload.size, started, early_rate):
                    job = _record_and_enqueue(db, storage, enqueue, new, SourceKind.ARCHIVE, name)
                elif job is not None and time.monotonic() - last_look > STOPPED_LOOK_SECONDS:
                    last_look = time.monotonic()
                    _raise_if_stopped(db, job_id)  # the part file goes with the exception
            _check_complete(upload.size, expected)
        if job is not None:
            _raise_if_stopped(db, job_id, archive)
        return job or _record_and_enqueue(db, storage, enqueue, new, SourceKind.ARCHIVE, name)
    except JobStoppedDuringUploadError:
        raise
    except BaseException:
        if job is not None and (stopped := _stopped(db, job_id)) is not None:
            raise JobStoppedDuringUploadError(stopped, still_sending=False) from None
        if job is not None:
            with db.session() as session:
                discard_job(session, job_id)
        storage.remove_job(job_id)
        raise


def _stored(storage: Storage, job_id: str, store: Callable[[], T]) -> T:
    """Run `store`; whatever it wrote of the job goes when it fails."""
    try:
        return store()
    except BaseException:
        storage.remove_job(job_id)
        raise


def _record_and_enqueue(
    db: Database,
    storage: Storage | None,
    enqueue: Enqueue,
    new: NewJob,
    kind: SourceKind,
    source: str,
) -> Job:
    try:
        with db.session() as session:
            job = create_job(session, kind, source, new.id, new.owner, new.priority)
            callbacks.attach(session, new.id, new.owner, new.callback_url)
    except BaseException:
        if storage is not None:
            storage.remove_job(new.id)
        raise
    # Only once the job row is committed may a worker look for it.
    try:
        enqueue(job.id)
    except UnavailableError:
        with db.session() as session:
            job_state.fail(
                get_job(session, job.id),
                "the job queue is unavailable; nothing was scored, submit again",
            )
        if storage is not None:
            storage.remove_job(job.id)
        raise
    return job


def _stopped(db: Database, job_id: str) -> Job | None:
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None or not job_state.is_finished(job):
            return None
        session.expunge(job)
        return job


def _raise_if_stopped(db: Database, job_id: str, archive: Path | None = None) -> None:
    if (job := _stopped(db, job_id)) is not None:
        if archive is not None:  # complete already: its ingest ended, nobody else removes it
            archive.unlink(missing_ok=True)
        raise JobStoppedDuringUploadError(job)


def _first_zip_chunk(chunks: Iterator[bytes]) -> bytes:
    first = next(chunks, b"")
    if not first:
        raise InvalidUploadError("the body is empty")
    if first[:4] not in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
        raise InvalidUploadError("the body is not a zip file")
    return first


def _check_complete(received: int, expected: int | None) -> None:
    """gunicorn ends a body quietly when its client goes away: count what came."""
    if expected is not None and received != expected:
        raise IncompleteUploadError(f"the upload ended after {received} of {expected} bytes")


def _arrives_fast(size: int, started: float, rate: float) -> bool:
    """Whether the upload so far came at `rate` bytes/s (0: never judged fast)."""
    return bool(rate) and size >= EARLY_INGEST_AFTER and size >= rate * (time.monotonic() - started)
