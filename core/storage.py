"""Where files live under the storage directory, and the hashing used for them."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, NamedTuple

HASH_CHUNK = 1024 * 1024
KEPT_NAME = "upload.zip"
PENDING_NAME = "upload.zip.unblanked"
# A write to the storage volume failed for want of room: the volume's trouble, not the input's.
STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# A zip upload, as it arrives and as ingest reads it; also the source name of a nameless one.
ARCHIVE_NAME = "archive.zip"


class Span(NamedTuple):
    """Where an image's bytes lie inside a larger file: a stored member of a kept upload."""

    offset: int
    length: int


class Storage:
    """Every path of uploads, expanded archives and model artifacts below one root.

    ```
    uploads/<job>/archive.zip          a zip upload (archive.zip.part while it arrives)
    uploads/<job>/received/            files sent one by one, and their manifest
    uploads/<job>/files/               the images ingest keeps, under generated names
    uploads/<job>/files/upload.zip     a fast raw zip kept as it came (blanked at the end),
                   upload.zip.unblanked  while it may still hold bytes that must go
    uploads/<job>/derived/             previews and heatmaps of its images, made on demand
    uploads/.incoming/                 a multipart body while it arrives
    upload-slots/                      the per-name upload cap's lock files
    models/<version>/, models/.staging/
    ```
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def uploads_dir(self) -> Path:
        return self.root / "uploads"

    @property
    def incoming_dir(self) -> Path:
        """Multipart bodies while they arrive, each held by its request's lock."""
        return self.uploads_dir / ".incoming"

    @property
    def upload_slots_dir(self) -> Path:
        return self.root / "upload-slots"

    def job_dir(self, job_id: str) -> Path:
        return self.uploads_dir / job_id

    def job_archive(self, job_id: str) -> Path:
        return self.job_dir(job_id) / ARCHIVE_NAME

    def received_dir(self, job_id: str) -> Path:
        """Files uploaded one by one, under generated names, with their manifest."""
        return self.job_dir(job_id) / "received"

    def job_files_dir(self, job_id: str) -> Path:
        """Where a job's images are written, under generated names (never the member names)."""
        return self.job_dir(job_id) / "files"

    def derived_dir(self, job_id: str) -> Path:
        """Pictures made from a job's images for the reading room: they go with the job."""
        return self.job_dir(job_id) / "derived"

    def preview(self, job_id: str, image_id: int, size: int) -> Path:
        return self.derived_dir(job_id) / f"{image_id}.{size}.jpg"

    def heatmap(self, job_id: str, image_id: int) -> Path:
        """The heatmap PNG; `.error` beside it says why there is none, `.requested` when it
        was last asked of a worker."""
        return self.derived_dir(job_id) / f"{image_id}.heatmap.png"

    def kept_upload(self, job_id: str) -> Path:
        """A fast raw zip whose stored images are read where they lie in it."""
        return self.job_files_dir(job_id) / KEPT_NAME

    def kept_upload_pending(self, job_id: str) -> Path:
        """Present while the kept upload may still hold bytes that are not images."""
        return self.job_files_dir(job_id) / PENDING_NAME

    def jobs_with_pending_kept_uploads(self) -> list[str]:
        return [
            marker.parent.parent.name for marker in self.uploads_dir.glob(f"*/files/{PENDING_NAME}")
        ]

    def model_dir(self, version: str) -> Path:
        return self.root / "models" / version

    def staging_dir(self) -> Path:
        """A new empty folder on the storage volume, to be moved into place when complete."""
        staging = self.root / "models" / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=staging))
        path.chmod(0o755)  # mkdtemp makes it private; artifacts are read by other processes
        return path

    def relative(self, path: Path) -> str:
        """`path` relative to the root when inside it, else absolute (import-volume files)."""
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path.resolve())

    def resolve(self, location: str) -> Path:
        """The inverse of `relative`."""
        return self.root / location

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


def sha256_of(path: Path, span: Span | None = None) -> str:
    digest = hashlib.sha256()
    with open_image_bytes(path, span) as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def open_image_bytes(path: Path, span: Span | None = None) -> BinaryIO:
    """The image's bytes as a file: the whole file, or the span of it the image occupies.

    Only a regular file is opened, and never through a link: an import-volume file replaced by
    a link (or a FIFO, which would block the reader for ever) since ingest looked at it is an
    error, not a read of whatever it points at."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.ENXIO, "not a regular file", str(path))
        if span is None:
            os.set_blocking(descriptor, True)
            return os.fdopen(descriptor, "rb")
        data = os.pread(descriptor, span.length, span.offset)
    except BaseException:
        os.close(descriptor)
        raise
    os.close(descriptor)
    if len(data) != span.length:
        raise OSError(f"{path} ends inside the image's bytes (at {span.offset}+{len(data)})")
    return io.BytesIO(data)


def span_of(member_offset: int | None, size_bytes: int) -> Span | None:
    """An image row's span, when its bytes lie inside a kept upload."""
    return None if member_offset is None else Span(member_offset, size_bytes)
