"""The vocabulary of intake: what an upload's entries become, the job's limits, and errors.

Nothing here trusts a name: members are written under generated names inside the job's own
folder (`NameSource`), sizes are counted on the bytes actually read (`ArchiveBudget`), and
every refusal carries a reason (`Rejection`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.errors import InvalidInputError
from core.storage import Span

# Below this many bytes a high compression ratio is normal (a blank image) and harmless.
RATIO_GRACE_BYTES = 1024 * 1024
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


class ArchiveError(Exception):
    """The whole archive is refused; the message says why."""


class ArchiveLimitError(ArchiveError):
    """A limit of the whole job (members, uncompressed bytes) was passed: the job stops,
    however deep in nested archives it happened."""


class StorageWriteError(ArchiveLimitError):
    """Our own copy could not be written (the storage volume is full, or failing): the job
    stops with the reason rather than completing with images missing."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(
            f"the storage folder could not take the upload's files ({exc.strerror or exc}): "
            "the job is stopped with nothing scored; free space and submit it again"
        )


class InvalidUploadError(InvalidInputError):
    """The upload as sent cannot be taken (answered at once, nothing of it kept)."""

    code = "invalid_upload"


class UnsafePathError(ValueError):
    """One member name is refused; the message says why."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int
    max_total_bytes: int
    max_ratio: int


@dataclass(frozen=True)
class Candidate:
    """A file that may be an image: the path the user knows it by, and where it is on disk."""

    relative_path: str
    path: Path
    sha256: str | None = None  # known when the file was written here, else computed later
    span: Span | None = None  # set when the image is these bytes of `path` (a kept upload)


@dataclass(frozen=True)
class InPlace:
    """A member that need not be copied out: its bytes are in `path` from `offset` on."""

    path: Path
    offset: int


@dataclass(frozen=True)
class Rejection:
    path: str
    reason: str


Entry = Candidate | Rejection


def clean_relative_path(name: str) -> str:
    """A normalised relative POSIX path, or UnsafePathError for anything that could escape."""
    if not name or "\x00" in name:
        raise UnsafePathError("empty name or NUL byte in name")
    if "\\" in name:
        raise UnsafePathError("backslash in member name")
    if name.startswith("/") or _DRIVE_LETTER.match(name):
        raise UnsafePathError("absolute path")
    parts = [part for part in PurePosixPath(name).parts if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError("'..' in member name")
    if not parts:
        raise UnsafePathError("empty name")
    return "/".join(parts)


def is_ignored(relative_path: str) -> bool:
    """Operating-system litter: `__MACOSX/`, AppleDouble `._*` files and dotfiles."""
    parts = relative_path.split("/")
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


class ArchiveBudget:
    """Members and uncompressed bytes of one job, shared across its (nested) archives."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.members = 0
        self.bytes = 0
        self.input_bytes = 0  # size of the archive files given to us (not of nested ones)

    def count_input(self, archive: Path) -> None:
        self.input_bytes += archive.stat().st_size

    def count_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveLimitError(f"more than {self.limits.max_members} members")

    def count_bytes(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_total_bytes:
            limit_mb = self.limits.max_total_bytes // (1024 * 1024)
            raise ArchiveLimitError(f"more than {limit_mb} MB once uncompressed")
        # Overlapping entries make many members out of the same compressed bytes: each
        # member's ratio looks modest, the whole archive's does not.
        ratio_limit = self.input_bytes * self.limits.max_ratio
        if self.input_bytes and self.bytes > RATIO_GRACE_BYTES and self.bytes > ratio_limit:
            raise ArchiveLimitError(
                f"the archive expands to more than {self.limits.max_ratio} times its size "
                "(overlapping entries or a zip bomb)"
            )


class NameSource:
    """Generated file names inside the job folder: 000001, 000002, ..."""

    def __init__(self, directory: Path, counter: int = 0) -> None:
        self.directory = directory
        self.counter = counter

    @classmethod
    def after_existing(cls, directory: Path) -> NameSource:
        """Names that go on after those an earlier, interrupted expansion gave out."""
        taken = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
        return cls(directory, max(taken, default=0))

    def next_path(self) -> Path:
        self.counter += 1
        return self.directory / f"{self.counter:06d}"
