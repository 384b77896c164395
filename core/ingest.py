"""Ingest: turn a job's upload or folder into image rows and rejected entries."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert

from core.archive import (
    ArchiveBudget,
    ArchiveError,
    ArchiveLimits,
    Candidate,
    Expansion,
    Rejection,
    collect_folder,
    expand_archive,
    is_ignored,
    is_zip_file,
)
from core.config import Settings
from core.db import Database
from core.imaging import DICOM, sniff_file
from core.jobs import MANIFEST, WAITING_FOR_MODEL, get_job
from core.models import Image, Job, JobStatus, RejectedEntry, SourceKind, utcnow
from core.recovery import claim_ingest
from core.registry import active_version
from core.storage import Storage, sha256_of

ARCHIVE_NAME = "archive.zip"


@dataclass(frozen=True)
class IngestOutcome:
    """What ingest left behind: whether scoring may start now."""

    job_id: str
    total: int
    ready_to_score: bool


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_members=settings.max_archive_members,
        max_total_bytes=settings.max_archive_mb * 1024 * 1024,
        max_ratio=settings.max_compression_ratio,
    )


def ingest_job(db: Database, storage: Storage, settings: Settings, job_id: str) -> IngestOutcome:
    """Expand the job's source and record its images; safe to run again after a crash."""
    with db.session() as session:
        job = get_job(session, job_id)
        if job.total is not None or job.status != JobStatus.QUEUED:
            # Already ingested (a redelivered message): scoring is released by the caller.
            return IngestOutcome(job_id, job.total or 0, job.status == JobStatus.RUNNING)
        kind, source_name = job.source_kind, job.source_name
    with db.session() as session:
        if not claim_ingest(session, job_id, settings.stall_after):
            # Another delivery is expanding this job right now; it will finish the work.
            return IngestOutcome(job_id, 0, False)
    # Files are expanded outside any transaction so the database is not held meanwhile.
    files_dir = storage.job_files_dir(job_id)
    shutil.rmtree(files_dir, ignore_errors=True)  # leftovers of an attempt that crashed
    try:
        expansion = _expand_source(storage, settings, job_id, SourceKind(kind), source_name)
    except ArchiveError as exc:
        outcome = _fail(db, job_id, str(exc))
    else:
        images, rejected = _classify(expansion, storage, settings.dicom_accept_any)
        outcome = _record(db, job_id, images, rejected)
    # Once recorded, the expanded files are the job's record; the archive, which may carry
    # patients' names in DICOM headers, is not kept.
    (storage.job_dir(job_id) / ARCHIVE_NAME).unlink(missing_ok=True)
    return outcome


def _expand_source(
    storage: Storage, settings: Settings, job_id: str, kind: SourceKind, source_name: str
) -> Expansion:
    limits = archive_limits(settings)
    files_dir = storage.job_files_dir(job_id)
    if kind == SourceKind.ARCHIVE:
        return expand_archive(storage.job_dir(job_id) / ARCHIVE_NAME, files_dir, limits)
    if kind == SourceKind.FOLDER:
        folder = Path(source_name)
        root = next(
            (r for r in settings.import_roots if r == folder or r in folder.parents), folder
        )
        return collect_folder(root, folder, files_dir, limits)
    return _expand_received(storage, job_id, files_dir, limits)


def _expand_received(
    storage: Storage, job_id: str, files_dir: Path, limits: ArchiveLimits
) -> Expansion:
    received = storage.job_dir(job_id) / "received"
    expansion = Expansion()
    budget = ArchiveBudget(limits)
    for entry in json.loads((received / MANIFEST).read_text()):
        path, relative = received / entry["file"], entry["relative_path"]
        if is_ignored(relative):
            continue
        if is_zip_file(path):
            try:
                nested = expand_archive(path, files_dir / entry["file"], limits, budget)
            except ArchiveError as exc:
                expansion.rejected.append(Rejection(relative, f"archive refused: {exc}"))
                continue
            expansion.extend(_prefixed(nested, relative))
        else:
            expansion.candidates.append(Candidate(relative, path))
    return expansion


def _prefixed(expansion: Expansion, prefix: str) -> Expansion:
    return Expansion(
        [Candidate(f"{prefix}/{c.relative_path}", c.path) for c in expansion.candidates],
        [Rejection(f"{prefix}/{r.path}", r.reason) for r in expansion.rejected],
    )


def _classify(
    expansion: Expansion, storage: Storage, accept_any_dicom: bool
) -> tuple[list[dict], list[Rejection]]:
    images: list[dict] = []
    rejected = list(expansion.rejected)
    seen: set[str] = set()
    for candidate in expansion.candidates:
        fmt = sniff_file(candidate.path)
        reason: str | None = None if fmt else "not a JPEG, PNG or DICOM image"
        facts: dict[str, str | None] = {}
        if fmt == DICOM:
            reason, facts = _dicom_facts(candidate.path, storage, accept_any_dicom)
        if reason:
            rejected.append(Rejection(candidate.relative_path, reason))
            if storage.root in candidate.path.resolve().parents:
                candidate.path.unlink()  # our copy of something never scored is not kept
            continue
        images.append(
            {
                "relative_path": _unique(candidate.relative_path, seen),
                "location": storage.relative(candidate.path),
                "format": fmt,
                "size_bytes": candidate.path.stat().st_size,
                "sha256": sha256_of(candidate.path),
                **facts,
            }
        )
    return images, rejected


def _dicom_facts(
    path: Path, storage: Storage, accept_any: bool
) -> tuple[str | None, dict[str, str | None]]:
    """(why it is refused, or None; its identifiers and acquisition facts)."""
    from core import dicom

    try:
        info = dicom.read_info(path)
    except dicom.DicomError as exc:
        return str(exc), {}
    reason = dicom.refusal(info, accept_any)
    if reason:
        return reason, {}
    if storage.root in path.resolve().parents:
        dicom.deidentify(path)  # our own copy: keep no name or birth date on our disks
    return None, {
        "study_uid": info.study_uid,
        "series_uid": info.series_uid,
        "sop_uid": info.sop_uid,
        "modality": info.modality,
        "body_part": info.body_part,
        "view_position": info.view_position,
    }


def _unique(relative_path: str, seen: set[str]) -> str:
    """Keep members with the same name apart: the second becomes 'name (2)'."""
    candidate, n = relative_path, 1
    while candidate in seen:
        n += 1
        candidate = f"{relative_path} ({n})"
    seen.add(candidate)
    return candidate


def _record(
    db: Database, job_id: str, images: list[dict], rejected: list[Rejection]
) -> IngestOutcome:
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.total is not None or job.status != JobStatus.QUEUED:
            return IngestOutcome(job_id, 0, False)  # cancelled, or ingested by another delivery
        if images:
            session.execute(insert(Image), [{**image, "job_id": job_id} for image in images])
        if rejected:
            session.execute(
                insert(RejectedEntry),
                [{"job_id": job_id, "path": r.path, "reason": r.reason} for r in rejected],
            )
        job.total, job.rejected = len(images), len(rejected)
        if not images:
            job.status, job.finished_at = JobStatus.FAILED, utcnow()
            job.status_detail = f"no scorable images found ({len(rejected)} entries rejected)"
            return IngestOutcome(job_id, 0, False)
        if active_version(session) is None:
            job.waiting_for_model, job.status_detail = True, WAITING_FOR_MODEL
            return IngestOutcome(job_id, len(images), False)
        job.status, job.started_at = JobStatus.RUNNING, utcnow()
        return IngestOutcome(job_id, len(images), True)


def _fail(db: Database, job_id: str, reason: str) -> IngestOutcome:
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None and job.status == JobStatus.QUEUED:
            job.status, job.status_detail, job.finished_at = JobStatus.FAILED, reason, utcnow()
            job.total = 0
    return IngestOutcome(job_id, 0, False)
