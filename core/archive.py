"""Turning an uploaded zip, a set of uploaded files or a server folder into candidate files.

Nothing here trusts a name: members are written under generated names inside the job's own
folder, sizes are counted on the bytes actually read, and every refusal carries a reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar

from core.imaging import JPEG, PNG, sniff_format
from core.storage import Span

T = TypeVar("T")
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
COPY_CHUNK = 1024 * 1024
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


@dataclass
class Expansion:
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @classmethod
    def collect(cls, entries: Iterable[Candidate | Rejection]) -> Expansion:
        expansion = cls()
        for entry in entries:
            if isinstance(entry, Candidate):
                expansion.candidates.append(entry)
            else:
                expansion.rejected.append(entry)
        return expansion


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


def is_zip_file(path: Path) -> bool:
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        head = os.read(descriptor, 4)
    finally:
        os.close(descriptor)
    return head in (ZIP_MAGIC, EMPTY_ZIP_MAGIC)


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


Entry = Candidate | Rejection


def iter_archive(
    archive: Path, dest: Path, limits: ArchiveLimits, budget: ArchiveBudget | None = None
) -> Iterator[Entry]:
    """Extract `archive` into `dest` member by member, yielding each candidate or refusal as
    soon as it is known; one level of nested zip is followed, deeper is refused.

    Pass one `budget` for several archives of the same job so the limits hold for the job.
    """
    dest.mkdir(parents=True, exist_ok=True)
    budget = budget or ArchiveBudget(limits)
    budget.count_input(archive)
    yield from _iter_zip(archive, "", NameSource(dest), budget, depth=0)


def expand_archive(
    archive: Path, dest: Path, limits: ArchiveLimits, budget: ArchiveBudget | None = None
) -> Expansion:
    """`iter_archive`, all at once."""
    return Expansion.collect(iter_archive(archive, dest, limits, budget))


def open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except UnicodeDecodeError as exc:  # zipfile decodes every name of the directory at once
        raise ArchiveError(NOT_UTF8_NAME) from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"not a readable zip archive: {exc}") from exc


NOT_UTF8_NAME = (
    "not a readable zip archive: a member name marked as UTF-8 is not UTF-8 (the program "
    "that made the zip wrote it wrongly)"
)


def _iter_zip(
    archive: Path, prefix: str, names: NameSource, budget: ArchiveBudget, depth: int
) -> Iterator[Entry]:
    with open_zip(archive) as bundle:
        members = bundle.infolist()
        if not members and depth == 0:
            raise ArchiveError("the archive is empty")
        for info in members:
            yield from iter_member(info, member_reader(bundle), prefix, names, budget, depth)


# The decompressed bytes of a member, in pieces of at most COPY_CHUNK.
MemberReader = Callable[[zipfile.ZipInfo], Generator[bytes, None, None]]


def member_reader(bundle: zipfile.ZipFile) -> MemberReader:
    def read(info: zipfile.ZipInfo) -> Generator[bytes, None, None]:
        with bundle.open(info) as source:
            while chunk := source.read(COPY_CHUNK):
                yield chunk

    return read


def iter_member(
    info: zipfile.ZipInfo,
    read: MemberReader,
    prefix: str,
    names: NameSource,
    budget: ArchiveBudget,
    depth: int,
    in_place: InPlace | None = None,
) -> Iterator[Entry]:
    """The one member's candidate or refusal (or, for a nested zip, its members').

    With `in_place`, a stored member that is a JPEG or PNG is read (counted, checked,
    hashed) but not copied: its candidate is the span of `in_place.path` it occupies.
    """
    if info.is_dir():
        return
    budget.count_member()
    try:
        relative = prefix + clean_relative_path(info.filename)
    except UnsafePathError as exc:
        yield Rejection(prefix + info.filename, f"unsafe path: {exc}")
        return
    if is_ignored(relative[len(prefix) :]):
        return
    reason = member_refusal(info)
    if reason:
        yield Rejection(relative, reason)
        return
    target = names.next_path()
    chunks = read(info)
    if info.compress_type != zipfile.ZIP_STORED:
        in_place = None  # its bytes in the upload are not the image's
    try:
        digest, copied = _copy_member(chunks, info.compress_size, target, budget, in_place)
    except MemberRefusedError as exc:
        target.unlink(missing_ok=True)
        yield Rejection(relative, str(exc))
        return
    finally:
        chunks.close()
    if not copied:
        assert in_place is not None
        yield Candidate(relative, in_place.path, digest, Span(in_place.offset, info.file_size))
    elif is_zip_file(target):
        yield from _iter_nested(target, relative, names, budget, depth)
    else:
        yield Candidate(relative, target, digest)


def _iter_nested(
    target: Path, relative: str, names: NameSource, budget: ArchiveBudget, depth: int
) -> Iterator[Entry]:
    try:
        if depth >= 1:
            yield Rejection(relative, "nested archive more than one level deep")
            return
        yield from _iter_zip(target, relative + "/", names, budget, depth + 1)
    except ArchiveLimitError:
        raise
    except ArchiveError as exc:
        yield Rejection(relative, f"nested archive refused: {exc}")
    finally:
        target.unlink(missing_ok=True)


def member_refusal(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted member"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"unsupported compression method {info.compress_type}"
    return None


class MemberRefusedError(Exception):
    """One member cannot be read; the message says why."""


def _writing(write: Callable[[], T]) -> T:
    """A write to our own storage: its failure is the storage's, never the member's."""
    try:
        return write()
    except OSError as exc:
        raise StorageWriteError(exc) from exc


def _copy_member(
    chunks: Iterator[bytes],
    compress_size: int,
    target: Path,
    budget: ArchiveBudget,
    in_place: InPlace | None,
) -> tuple[str, bool]:
    """Write the member to `target`, unless `in_place` and its first bytes are a JPEG or
    PNG; returns its sha256, hashed on the way (one pass), and whether it was written."""
    # Declared sizes lie in crafted archives: count what decompression actually yields.
    ratio_limit = max(compress_size, 1) * budget.limits.max_ratio
    written = 0
    digest = hashlib.sha256()
    sink: IO[bytes] | None = None
    try:
        for chunk in chunks:
            if not written and not (in_place and sniff_format(chunk[:132]) in (JPEG, PNG)):
                sink = _writing(lambda: target.open("wb"))
            written += len(chunk)
            budget.count_bytes(len(chunk))  # every byte decompressed counts, refused or not
            if written > RATIO_GRACE_BYTES and written > ratio_limit:
                raise MemberRefusedError(
                    f"compression ratio above {budget.limits.max_ratio}:1 (zip bomb?)"
                )
            digest.update(chunk)
            if sink is not None:
                _writing(partial(sink.write, chunk))
        if not written:
            _writing(target.touch)  # an empty member is an empty file (and refused as no image)
            return digest.hexdigest(), True
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
        raise MemberRefusedError(f"corrupt member: {exc}") from exc
    finally:
        if sink is not None:
            _writing(sink.close)  # a full disk may show only when the buffer is flushed
    return digest.hexdigest(), sink is not None


def iter_folder(
    root: Path, folder: Path, archives_dest: Path, limits: ArchiveLimits
) -> Iterator[Entry]:
    """Regular files under `folder`, read in place; zips among them expanded into
    `archives_dest`. No link is followed: a folder that is (or lies behind) a link now, or is
    no longer under `root`, is refused whole, and a link or anything else that is not a
    regular file (a FIFO, a socket, a device) is a rejected entry."""
    check_folder_still_inside(root, folder)
    budget = ArchiveBudget(limits)
    names = NameSource(archives_dest)
    for path, relative, mode in _walk(folder):
        budget.count_member()
        if is_ignored(relative):
            continue
        if not mode:
            yield Rejection(relative, "removed while the folder was being read")
        elif stat.S_ISLNK(mode):
            yield Rejection(relative, "symbolic link (only regular files are read)")
        elif not stat.S_ISREG(mode):
            yield Rejection(relative, "not a regular file (a FIFO, socket or device)")
        elif _readable_zip(path):
            archives_dest.mkdir(parents=True, exist_ok=True)
            yield from _iter_zip_in_folder(path, relative, names, budget)
        else:
            yield Candidate(relative, path)


def check_folder_still_inside(root: Path, folder: Path) -> None:
    """Refuse a folder that was replaced (by a link, or moved) since it was submitted."""
    real_root = Path(os.path.realpath(root))
    if Path(os.path.realpath(folder)) != folder or not _inside(folder, real_root):
        raise ArchiveError(
            f"{folder} is no longer a folder under the import root {root} (it was replaced "
            "by a link or moved since the job was submitted): nothing was read"
        )
    if not folder.is_dir():
        raise ArchiveError(f"{folder} is no longer a folder: nothing was read")


def _readable_zip(path: Path) -> bool:
    try:
        return is_zip_file(path)
    except OSError:
        return False  # classified, with the reason it cannot be read, as a candidate


def collect_folder(
    root: Path, folder: Path, archives_dest: Path, limits: ArchiveLimits
) -> Expansion:
    """`iter_folder`, all at once."""
    return Expansion.collect(iter_folder(root, folder, archives_dest, limits))


def _iter_zip_in_folder(
    path: Path, relative: str, names: NameSource, budget: ArchiveBudget
) -> Iterator[Entry]:
    budget.count_input(path)
    try:
        yield from _iter_zip(path, relative + "/", names, budget, depth=1)
    except ArchiveLimitError:
        raise
    except ArchiveError as exc:
        yield Rejection(relative, f"archive refused: {exc}")


def _walk(folder: Path) -> Iterator[tuple[Path, str, int]]:
    """(path, path under `folder`, mode of the entry itself: 0 when it vanished) of every entry
    but directories, in name order; a directory is entered only when it is not a link."""
    for directory, subdirs, files, directory_fd in os.fwalk(folder, follow_symlinks=False):
        subdirs.sort()
        modes = {name: _mode(name, directory_fd) for name in [*files, *subdirs]}
        for name in sorted(n for n in modes if n in files or stat.S_ISLNK(modes[n])):
            path = Path(directory) / name
            yield path, path.relative_to(folder).as_posix(), modes[name]


def _mode(name: str, directory_fd: int) -> int:
    try:
        return os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return 0


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
