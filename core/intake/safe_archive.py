"""The safe zip reader: an uploaded zip expanded member by member into generated names.

Declared sizes and names are not trusted: every member is counted against the job's budget
as it is decompressed, a ratio too high for its own size is a zip bomb, links and encrypted
or exotically compressed members are refused, and one level of nested zip is followed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from functools import partial
from pathlib import Path
from typing import IO, TypeVar

from core.imaging import JPEG, PNG, sniff_format
from core.intake.entries import (
    RATIO_GRACE_BYTES,
    ArchiveBudget,
    ArchiveError,
    ArchiveLimitError,
    ArchiveLimits,
    Candidate,
    Entry,
    InPlace,
    NameSource,
    Rejection,
    StorageWriteError,
    UnsafePathError,
    clean_relative_path,
    is_ignored,
)
from core.storage import Span

T = TypeVar("T")
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
COPY_CHUNK = 1024 * 1024


def is_zip_file(path: Path) -> bool:
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        head = os.read(descriptor, 4)
    finally:
        os.close(descriptor)
    return head in (ZIP_MAGIC, EMPTY_ZIP_MAGIC)


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
        yield from zip_entries(target, relative, names, budget, "nested archive", depth + 1)
    finally:
        target.unlink(missing_ok=True)


def zip_entries(
    archive: Path, relative: str, names: NameSource, budget: ArchiveBudget, kind: str, depth: int
) -> Iterator[Entry]:
    """The entries of a zip that is one entry of an upload, under `relative`/ (`depth` 1: no
    zip inside it is followed); a zip that cannot be read is one refused entry ("<kind>
    refused: why"), while a limit of the whole job still stops the job."""
    try:
        yield from _iter_zip(archive, relative + "/", names, budget, depth)
    except ArchiveLimitError:
        raise
    except ArchiveError as exc:
        yield Rejection(relative, f"{kind} refused: {exc}")


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
