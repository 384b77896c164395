"""Ingest: turn a job's upload or folder into image rows and rejected entries.

Images are recorded as the source is expanded, a few batches at a time, and each full batch
is handed to `release` (which enqueues its scoring) at once: scoring starts while the rest of
the archive is still being expanded.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from core import job_state
from core.archive import (
    ArchiveBudget,
    ArchiveError,
    ArchiveLimitError,
    ArchiveLimits,
    Candidate,
    Entry,
    Rejection,
    StorageWriteError,
    is_ignored,
    is_zip_file,
    iter_archive,
    iter_folder,
)
from core.arriving import UploadStillArrivingError, iter_upload
from core.config import Settings
from core.db import Database
from core.imaging import DICOM, sniff_file
from core.jobs import MANIFEST
from core.kept import finish_kept_upload
from core.models import (
    DICOM_COLUMNS,
    BatchAttempt,
    Image,
    Job,
    RejectedEntry,
    SourceKind,
)
from core.recovery import (
    IngestClaim,
    claim_ingest,
    defer_ingest,
    refresh_ingest_claim,
    release_ingest_claim,
)
from core.registry import active_version
from core.retention import keep_only_images
from core.storage import STORAGE_FULL, Storage, sha256_of
from core.text import is_encodable, storable, without_paths

log = logging.getLogger(__name__)

ARCHIVE_NAME = "archive.zip"
# A longer name would not fit PostgreSQL's index of (job, path) (2,704 bytes an entry).
MAX_PATH_BYTES = 2048
MAX_SHOWN_PATH = 2000  # a rejected entry's path as shown (refused names may be any length)
BATCHES_PER_FLUSH = 2  # rows are written, and batches released, this many batches at a time

Release = Callable[[list[int]], None]


@dataclass(frozen=True)
class IngestOutcome:
    """What ingest left behind."""

    job_id: str
    total: int
    scoring: bool  # the job is running with a model, not waiting for one
    released: bool = False  # this call already handed every batch to `release`
    deferred: bool = False  # gave way to a slow upload: send the ingest again in a while


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_members=settings.max_archive_members,
        max_total_bytes=settings.max_archive_mb * 1024 * 1024,
        max_ratio=settings.max_compression_ratio,
    )


def ingest_job(
    db: Database,
    storage: Storage,
    settings: Settings,
    job_id: str,
    release: Release | None = None,
) -> IngestOutcome:
    """Expand the job's source and record its images; safe to run again after a crash.

    The job always ends: a member that cannot be handled is a rejected entry with its reason,
    an archive refused whole or anything unexpected fails the job once with the reason (its
    upload removed), and an ingest started `max_ingest_attempts` times without finishing
    (its worker died, or the database kept refusing what it wrote) fails the job too.
    """
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:  # its upload failed (and took the job) while ingest waited elsewhere
            return IngestOutcome(job_id, 0, False)
        if job.total is not None or job_state.is_finished(job):
            # Already ingested (a redelivered message): scoring is released by the caller.
            scoring = job_state.is_scoring(job)
            done = IngestOutcome(job_id, job.total or 0, scoring)
            stopped_while_away = job.ingest_resume_at is not None
            claim = None
        else:
            kind, source_name = SourceKind(job.source_kind), job.source_name
            claim = claim_ingest(session, job_id, settings.stall_after)
            if claim is None:
                # Another delivery is expanding this job right now; it will finish the work.
                return IngestOutcome(job_id, 0, False)
            if claim.attempt <= settings.max_ingest_attempts and claim.resume_at is None:
                _forget_partial_ingest(session, job_id)
    if claim is None:
        if stopped_while_away:  # stopped while its ingest had given way to the upload
            _keep_only_images(db, storage, job_id)
        return done
    if claim.attempt > settings.max_ingest_attempts:
        return _fail(db, storage, job_id, GAVE_UP.format(times=claim.attempt - 1))
    try:
        outcome = _expand(db, storage, settings, job_id, kind, source_name, release, claim)
    except ArchiveError as exc:
        return _fail(db, storage, job_id, str(exc))
    except (OperationalError, InterfaceError):
        # The database went away or refused a write: the task runs again (counted above).
        _let_go(db, job_id)
        raise
    except Exception as exc:  # a bug or an input nobody foresaw: the job ends, with the reason
        log.exception("job %s: ingest failed", job_id)
        reason = f"ingest failed: {type(exc).__name__}: {without_paths(str(exc), storage.root)}"
        return _fail(db, storage, job_id, reason)
    if not outcome.deferred:  # else the upload is still arriving; its ingest goes on later
        _keep_only_images(db, storage, job_id)
    return outcome


def _keep_only_images(db: Database, storage: Storage, job_id: str) -> None:
    """Once recorded, the images are the job's record; the upload, which may carry patients'
    names in DICOM headers, is not kept (nor anything of it but its images)."""
    finish_kept_upload(db, storage, job_id)
    keep_only_images(db, storage, job_id)


GAVE_UP = (
    "ingest was started {times} times and never finished (its worker stopped, or the database "
    "refused what it wrote): the job is stopped; submit its images again, in smaller parts if "
    "this repeats"
)


def _expand(
    db: Database,
    storage: Storage,
    settings: Settings,
    job_id: str,
    kind: SourceKind,
    source_name: str,
    release: Release | None,
    claim: IngestClaim,
) -> IngestOutcome:
    # Files are expanded outside any transaction so the database is not held meanwhile.
    recorder = _Recorder(db, storage, settings, job_id, release)
    if claim.resume_at is None:
        shutil.rmtree(storage.job_files_dir(job_id), ignore_errors=True)
    else:
        recorder.go_on()  # from where an ingest that gave way to a slow upload stopped
    keep_claim = _claim_keeper(db, job_id, settings.stall_seconds / 4)
    entries = _iter_source(storage, settings, job_id, kind, source_name, keep_claim, claim)
    try:
        for entry in entries:
            if not recorder.add(entry):
                break  # the job was cancelled meanwhile
    except UploadStillArrivingError as waiting:
        # Everything read so far is recorded before the slot is given back.
        if recorder.flush():
            with db.session() as session:
                defer_ingest(session, job_id, waiting.resume_at)
            log.info("job %s: its upload is still arriving; ingest goes on later", job_id)
            return IngestOutcome(job_id, 0, False, released=True, deferred=True)
    return recorder.finish()


def _let_go(db: Database, job_id: str) -> None:
    """Give the claim back so the retry can take it; when the database is down, the claim
    goes stale instead and the sweep sends the ingest again."""
    try:
        with db.session() as session:
            release_ingest_claim(session, job_id)
    except (OperationalError, InterfaceError):
        log.warning("job %s: ingest claim not released (database unreachable)", job_id)


def _claim_keeper(db: Database, job_id: str, every_seconds: float) -> Callable[[], None]:
    """Called while ingest waits for an upload: refreshes its claim every so often."""
    last = time.monotonic()

    def keep() -> None:
        nonlocal last
        if time.monotonic() - last >= every_seconds:
            with db.session() as session:
                refresh_ingest_claim(session, job_id)
            last = time.monotonic()

    return keep


def _forget_partial_ingest(session: Session, job_id: str) -> None:
    """Rows of an ingest whose worker died: drop them and start clean (their files go too)."""
    session.execute(delete(BatchAttempt).where(BatchAttempt.job_id == job_id))
    session.execute(delete(RejectedEntry).where(RejectedEntry.job_id == job_id))
    session.execute(delete(Image).where(Image.job_id == job_id))
    job_state.reset_for_reingest(session, job_id)


class _Recorder:
    """Classifies entries as they come and writes them a few batches at a time."""

    def __init__(
        self,
        db: Database,
        storage: Storage,
        settings: Settings,
        job_id: str,
        release: Release | None,
    ) -> None:
        self.db, self.storage, self.settings, self.job_id = db, storage, settings, job_id
        self.release = release
        self.images: list[dict] = []
        self.rejected: list[Rejection] = []
        self.seen: set[str] = set()
        self.scoring: bool | None = None  # decided at the first write: is a model active?
        self.released_up_to = 0  # image ids up to here were handed to `release`
        self.chunk = settings.batch_size * BATCHES_PER_FLUSH

    def add(self, entry: Entry) -> bool:
        """Record one entry; False when the job was stopped and ingest should end."""
        if isinstance(entry, Rejection):
            self.rejected.append(entry)
        else:
            row = _classify_readable(
                entry,
                self.storage,
                self.storage.job_dir(self.job_id),
                self.settings.dicom_accept_any,
                self.seen,
            )
            if isinstance(row, Rejection):
                self.rejected.append(row)
            else:
                self.images.append(row)
        if len(self.images) >= self.chunk:
            return self._flush(final=False)
        return True

    def go_on(self) -> None:
        """Take up the rows an earlier part of this ingest recorded (it gave way to a slow
        upload): their names stay taken, and their full batches were released."""
        with self.db.session() as session:
            ids_and_paths = session.execute(
                select(Image.id, Image.relative_path)
                .where(Image.job_id == self.job_id)
                .order_by(Image.id)
            ).all()
        self.seen = {path for _, path in ids_and_paths}
        # Each write released every full batch of the rows not yet released, in id order.
        released = len(ids_and_paths) - len(ids_and_paths) % self.settings.batch_size
        self.released_up_to = ids_and_paths[released - 1][0] if released else 0

    def flush(self) -> bool:
        """Write what is held and release its full batches; False when the job was stopped."""
        return self._flush(final=False)

    def finish(self) -> IngestOutcome:
        self._flush(final=True)
        with self.db.session() as session:
            job = session.get(Job, self.job_id)
            if job is None:  # its submission failed while it was being read
                return IngestOutcome(self.job_id, 0, False, released=True)
            return IngestOutcome(
                self.job_id, job.total or 0, job_state.is_scoring(job), released=True
            )

    def _flush(self, final: bool) -> bool:
        with self.db.session() as session:
            job = session.get(Job, self.job_id, with_for_update=True)
            if job is None or job_state.is_finished(job):
                return False  # cancelled (or failed) while being ingested
            self._write(session, job)
            if final:
                self._close(session, job)
            batches = self._full_batches(session, final) if self.scoring else []
        # Enqueued only after the commit, so a worker always finds the rows.
        for image_ids in batches:
            if self.release is not None:
                self.release(image_ids)
        return True

    def _write(self, session: Session, job: Job) -> None:
        if self.images:
            session.execute(insert(Image), [{**row, "job_id": self.job_id} for row in self.images])
        if self.rejected:
            session.execute(
                insert(RejectedEntry),
                [
                    {
                        "job_id": self.job_id,
                        "path": storable(r.path, MAX_SHOWN_PATH),
                        "reason": storable(without_paths(r.reason, self.storage.root), 2000),
                    }
                    for r in self.rejected
                ],
            )
        job.rejected += len(self.rejected)
        self.images, self.rejected = [], []
        if self.scoring is None:
            self.scoring = active_version(session) is not None
            if self.scoring:
                job_state.start(job)

    def _close(self, session: Session, job: Job) -> None:
        total = session.scalar(select(func.count()).where(Image.job_id == self.job_id)) or 0
        job.total = total
        if total == 0:
            job_state.fail(job, f"no scorable images found ({job.rejected} entries rejected)")
            self.scoring = False
        elif not self.scoring:
            job_state.park(job)
        else:
            session.flush()  # every batch may have finished already
            job_state.complete_if_done(session, self.job_id)

    def _full_batches(self, session: Session, final: bool) -> list[list[int]]:
        ids = list(
            session.scalars(
                select(Image.id)
                .where(Image.job_id == self.job_id, Image.id > self.released_up_to)
                .order_by(Image.id)
            )
        )
        size = self.settings.batch_size
        cut = len(ids) if final else len(ids) - len(ids) % size
        if cut:
            self.released_up_to = ids[cut - 1]
        return [ids[start : min(start + size, cut)] for start in range(0, cut, size)]


def _iter_source(
    storage: Storage,
    settings: Settings,
    job_id: str,
    kind: SourceKind,
    source_name: str,
    on_wait: Callable[[], None],
    claim: IngestClaim,
) -> Iterator[Entry]:
    limits = archive_limits(settings)
    files_dir = storage.job_files_dir(job_id)
    if kind == SourceKind.ARCHIVE:  # read while it arrives if its upload is still going on
        return iter_upload(
            storage.job_dir(job_id) / ARCHIVE_NAME,
            files_dir,
            limits,
            on_wait,
            patience=settings.early_ingest_wait_seconds,
            resume_at=claim.resume_at,
        )
    if kind == SourceKind.FOLDER:
        folder = Path(source_name)
        root = next((r for r in settings.import_roots if r == folder or r in folder.parents), None)
        if root is None:
            raise ArchiveError(f"{folder} is no longer under an import root: nothing was read")
        return iter_folder(root, folder, files_dir, limits)
    return _iter_received(storage, job_id, files_dir, limits)


def _iter_received(
    storage: Storage, job_id: str, files_dir: Path, limits: ArchiveLimits
) -> Iterator[Entry]:
    received = storage.job_dir(job_id) / "received"
    budget = ArchiveBudget(limits)
    for item in json.loads((received / MANIFEST).read_text()):
        path, relative = received / item["file"], item["relative_path"]
        if is_ignored(relative):
            continue
        if not is_zip_file(path):
            yield Candidate(relative, path)
            continue
        try:
            for entry in iter_archive(path, files_dir / item["file"], limits, budget):
                if isinstance(entry, Candidate):
                    yield Candidate(f"{relative}/{entry.relative_path}", entry.path, entry.sha256)
                else:
                    yield Rejection(f"{relative}/{entry.path}", entry.reason)
        except ArchiveLimitError:
            raise
        except ArchiveError as exc:
            yield Rejection(relative, f"archive refused: {exc}")


def _classify_readable(
    candidate: Candidate, storage: Storage, job_dir: Path, accept_any: bool, seen: set[str]
) -> dict | Rejection:
    """`_classify`, with a file that cannot be read (gone, not permitted, not UTF-8 named)
    refused with the reason instead of ending the ingest; our copy of a refused file goes."""
    ours = candidate.span is None and _is_ours(candidate.path, job_dir)
    if not (is_encodable(candidate.relative_path) and is_encodable(str(candidate.path))):
        row: dict | Rejection = Rejection(candidate.relative_path, "file name is not valid UTF-8")
    elif len(candidate.relative_path.encode()) > MAX_PATH_BYTES:
        row = Rejection(candidate.relative_path, f"name longer than {MAX_PATH_BYTES} bytes")
    else:
        try:
            row = _classify(candidate, storage, ours, accept_any, seen)
        except OSError as exc:
            if exc.errno in STORAGE_FULL:  # de-identifying our copy needed room it had not
                raise StorageWriteError(exc) from exc
            row = Rejection(candidate.relative_path, f"cannot be read: {exc.strerror or exc}")
    if ours and isinstance(row, Rejection):
        candidate.path.unlink(missing_ok=True)  # our copy of something never scored
    return row


def _is_ours(path: Path, job_dir: Path) -> bool:
    """A file this job's ingest wrote (never an import-volume file, nor another job's)."""
    return job_dir in path.parents and not path.is_symlink()


def _classify(
    candidate: Candidate, storage: Storage, ours: bool, accept_any_dicom: bool, seen: set[str]
) -> dict | Rejection:
    """An image row for the candidate, or the reason it is not one."""
    fmt = sniff_file(candidate.path, candidate.span)
    reason: str | None = None if fmt else "not a JPEG, PNG or DICOM image"
    facts: dict[str, str | None] = {}
    if fmt == DICOM:
        reason, facts = _dicom_facts(candidate.path, ours, accept_any_dicom)
    if reason:
        return Rejection(candidate.relative_path, reason)
    if fmt == DICOM and candidate.sha256:
        candidate = Candidate(candidate.relative_path, candidate.path)  # de-identified: rehash
    return {
        "relative_path": _unique(candidate.relative_path, seen),
        "location": storage.relative(candidate.path),
        "format": fmt,
        "size_bytes": candidate.span.length if candidate.span else candidate.path.stat().st_size,
        "member_offset": candidate.span.offset if candidate.span else None,
        "sha256": candidate.sha256 or sha256_of(candidate.path),
        **facts,
    }


def _dicom_facts(
    path: Path, ours: bool, accept_any: bool
) -> tuple[str | None, dict[str, str | None]]:
    """(why it is refused, or None; its identifiers and acquisition facts)."""
    from core import dicom

    try:
        info = dicom.read_info(path)
        reason = dicom.refusal(info, accept_any)
        if reason:
            return reason, {}
        if ours:
            dicom.deidentify(path)  # our own copy: nothing of the patient stays on our disks
    except dicom.DicomError as exc:
        return str(exc), {}
    return None, {column: getattr(info, column) for column in DICOM_COLUMNS}


def _unique(relative_path: str, seen: set[str]) -> str:
    """Keep members with the same name apart: the second becomes 'name (2)'."""
    candidate, n = relative_path, 1
    while candidate in seen:
        n += 1
        candidate = f"{relative_path} ({n})"
    seen.add(candidate)
    return candidate


def _fail(db: Database, storage: Storage, job_id: str, reason: str) -> IngestOutcome:
    """End the job as failed with `reason`, once, and remove everything of its upload."""
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None and not job_state.is_finished(job):
            job_state.fail(job, reason)
            job.total = job.total or 0
    storage.remove_job(job_id)
    return IngestOutcome(job_id, 0, False)
