"""Files uploaded one by one (multipart `images`): stored under generated names with a
manifest of the relative paths their sender gave, then read back as entries."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from core.intake.entries import (
    ArchiveBudget,
    ArchiveLimits,
    Candidate,
    Entry,
    InvalidUploadError,
    NameSource,
    UnsafePathError,
    clean_relative_path,
    is_ignored,
)
from core.intake.safe_archive import is_zip_file, zip_entries
from core.storage import Storage

MANIFEST = "manifest.json"
COPY_CHUNK = 1024 * 1024


def save_received_files(
    storage: Storage, job_id: str, files: Iterable[tuple[str, BinaryIO]]
) -> int:
    """Write uploaded files under generated names plus a manifest of their relative paths."""
    received = storage.received_dir(job_id)
    received.mkdir(parents=True, exist_ok=True)
    manifest = []
    for index, (name, stream) in enumerate(files, start=1):
        try:
            relative = clean_relative_path(name)
        except UnsafePathError as exc:
            raise InvalidUploadError(f"file name {name!r} refused: {exc}") from exc
        stored = f"{index:06d}"
        with (received / stored).open("wb") as sink:
            while chunk := stream.read(COPY_CHUNK):
                sink.write(chunk)
        manifest.append({"file": stored, "relative_path": relative})
    if not manifest:
        raise InvalidUploadError("no files in the upload")
    (received / MANIFEST).write_text(json.dumps(manifest))
    return len(manifest)


def iter_received(storage: Storage, job_id: str, limits: ArchiveLimits) -> Iterator[Entry]:
    """The received files as entries; a zip among them is expanded (and a zip inside it)."""
    received, files_dir = storage.received_dir(job_id), storage.job_files_dir(job_id)
    budget = ArchiveBudget(limits)
    for item in json.loads((received / MANIFEST).read_text()):
        path, relative = received / item["file"], item["relative_path"]
        if is_ignored(relative):
            continue
        if not is_zip_file(path):
            yield Candidate(relative, path)
            continue
        dest = files_dir / item["file"]
        dest.mkdir(parents=True, exist_ok=True)
        budget.count_input(path)
        yield from zip_entries(path, relative, NameSource(dest), budget, "archive", depth=0)
