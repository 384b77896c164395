"""What an entry of an upload becomes: an image row (sniffed, hashed, DICOM read and
de-identified) or a rejected entry with its reason."""

from __future__ import annotations

from pathlib import Path

from core.imaging import DICOM, sniff_file
from core.intake.entries import Candidate, Rejection, StorageWriteError
from core.models import DICOM_STORED
from core.storage import STORAGE_FULL, Storage, sha256_of
from core.text import is_encodable

# A longer name would not fit PostgreSQL's index of (job, path) (2,704 bytes an entry).
MAX_PATH_BYTES = 2048


def classify_entry(
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
    return None, {column: getattr(info, column) for column in DICOM_STORED}


def _unique(relative_path: str, seen: set[str]) -> str:
    """Keep members with the same name apart: the second becomes 'name (2)'."""
    candidate, n = relative_path, 1
    while candidate in seen:
        n += 1
        candidate = f"{relative_path} ({n})"
    seen.add(candidate)
    return candidate
