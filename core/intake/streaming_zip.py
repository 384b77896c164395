"""Expanding a zip while its upload is still arriving.

The API writes a zip sent as the raw request body to `archive.zip.part` under an exclusive
`flock` and renames it to `archive.zip` once the last byte is in (`ArrivingWriter`). Ingest
need not wait for that: each member of a zip is preceded by a local header giving its name,
method and sizes, so a member can be extracted as soon as its bytes are on disk and its
scoring released while the rest of the upload arrives (`iter_upload`). The arriving file is
kept (hard-linked into the job's files) and its stored JPEG and PNG members are read there,
not copied out (`core/intake/kept_members.py`).

A zip's authority is its central directory, at the very end. Once the upload is complete,
every member read early must be listed there at its offset with the same name, method, CRC
and sizes, and must not be something only the directory shows (a symbolic link); the
directory's other entries are then extracted as `safe_archive` extracts any zip. An archive
whose local headers and central directory disagree is refused whole: what was read early is
not what the archive says it holds. Reading early stops at the first member whose local
header cannot be trusted on its own (sizes in a trailing data descriptor, zip64 sizes,
encryption, a method other than stored or deflated); the rest is read from the directory.

A reader given `patience` does not wait longer than that for bytes that have not come: it
raises `UploadStillArrivingError` with the offset it can go on from (the local header of the
first member none of whose entries it yielded), and a later call with `resume_at` carries on
from there. Ingest uses it to give its worker slot back while a slow upload arrives.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

from core.intake.entries import (
    ArchiveBudget,
    ArchiveError,
    ArchiveLimits,
    Entry,
    InPlace,
    NameSource,
)
from core.intake.growing_file import ArrivingFile, StillWaitingError, part_path
from core.intake.kept_members import keep_upload
from core.intake.safe_archive import (
    COPY_CHUNK,
    NOT_UTF8_NAME,
    ZIP_MAGIC,
    MemberReader,
    MemberRefusedError,
    iter_archive,
    iter_member,
    member_reader,
    member_refusal,
    open_zip,
)

# signature, version, flags, method, time, date, CRC-32, compressed size, size, name and
# extra field lengths: the 30 bytes before each member's name.
LOCAL_HEADER = struct.Struct("<4s5H3L2H")
ENCRYPTED, DATA_DESCRIPTOR, UTF8_NAME = 0x1, 0x8, 0x800
ZIP64_SIZE = 0xFFFFFFFF


class UploadStillArrivingError(Exception):
    """Reading early stopped to wait elsewhere; call again with `resume_at` to go on.

    Every entry yielded before it belongs to a member before `resume_at`, and no entry of a
    member at or after it was yielded."""

    def __init__(self, resume_at: int) -> None:
        super().__init__(f"the upload is still arriving; reading goes on from byte {resume_at}")
        self.resume_at = resume_at


def iter_upload(
    final: Path,
    dest: Path,
    limits: ArchiveLimits,
    on_wait: Callable[[], None],
    patience: float | None = None,
    resume_at: int | None = None,
) -> Iterator[Entry]:
    """The entries of an uploaded zip: read while it arrives if it still is, else whole.

    With `patience`, raises `UploadStillArrivingError` instead of waiting longer than that
    for the upload's next bytes; `resume_at` (its `resume_at`) goes on where that stopped.
    """
    try:
        source = ArrivingFile(part_path(final), final, on_wait, patience=patience)
    except FileNotFoundError:
        if resume_at is None:
            yield from iter_archive(final, dest, limits)
            return
        # It came in while ingest waited elsewhere: a file nobody holds that has its final
        # name is a complete upload to this reader.
        source = ArrivingFile(final, final, on_wait)
    try:
        yield from _iter_arriving(source, dest, limits, resume_at or 0)
    finally:
        source.close()


def _iter_arriving(
    source: ArrivingFile, dest: Path, limits: ArchiveLimits, resume_at: int
) -> Iterator[Entry]:
    dest.mkdir(parents=True, exist_ok=True)
    budget, names = ArchiveBudget(limits), NameSource.after_existing(dest)
    kept = keep_upload(source.link, dest)  # stored images are read from it, not copied out
    early: dict[int, zipfile.ZipInfo] = {}
    go_on_from = resume_at
    try:
        _replay(source, resume_at, early, budget)
        # Members read in sequence cannot overlap: the archive-wide ratio, which catches
        # entries sharing compressed bytes, waits for the archive's size; each member's
        # ratio holds now.
        while (info := _next_local_member(source)) is not None:
            early[info.header_offset] = info
            in_place = InPlace(kept, source.position) if kept else None
            data_end = source.position + info.compress_size
            for entry in iter_member(info, _early_reader(source), "", names, budget, 0, in_place):
                # A member's entries come once its bytes are all read (a refusal may come
                # before): after the first, this member is done whatever is still to wait for.
                go_on_from = data_end
                yield entry
            source.skip_to(data_end)  # what a refused member left unread
            go_on_from = data_end
        source.wait_until_complete()
    except StillWaitingError:
        raise UploadStillArrivingError(go_on_from) from None
    budget.count_input(source.final)
    with open_zip(source.final) as bundle:
        members = bundle.infolist()
        rest = _reconcile(early, members)
        if not members:
            raise ArchiveError("the archive is empty")
        read = member_reader(bundle)
        for info in rest:
            yield from iter_member(info, read, "", names, budget, depth=0)


def _replay(
    source: ArrivingFile, resume_at: int, early: dict[int, zipfile.ZipInfo], budget: ArchiveBudget
) -> None:
    """Go over the members before `resume_at` (read by an earlier call) without reading them
    again: their local headers, for the check against the central directory, and their
    counts (each at its declared size; a nested zip's members are not counted again)."""
    while source.position < resume_at:
        info = _next_local_member(source)
        if info is None:
            raise ArchiveError("the upload changed under its ingest: the archive is refused")
        early[info.header_offset] = info
        if not info.is_dir():
            budget.count_member()
            if not member_refusal(info):
                budget.count_bytes(info.file_size)
        source.skip_to(source.position + info.compress_size)


def _next_local_member(source: ArrivingFile) -> zipfile.ZipInfo | None:
    """The next member as its local header describes it, or None where reading early ends."""
    offset = source.position
    head = source.read(LOCAL_HEADER.size)
    if len(head) < LOCAL_HEADER.size or head[:4] != ZIP_MAGIC:
        return None  # the central directory (or something a zip reader would not accept)
    _, _, flags, method, _, _, crc, compressed, size, name_length, extra_length = (
        LOCAL_HEADER.unpack(head)
    )
    if (
        flags & (ENCRYPTED | DATA_DESCRIPTOR)
        or method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
        or ZIP64_SIZE in (compressed, size)
    ):
        return None
    name = source.read(name_length)
    if len(source.read(extra_length)) < extra_length or len(name) < name_length:
        return None
    # Decoded and normalised as zipfile does for the central directory's names.
    try:
        info = zipfile.ZipInfo(name.decode("utf-8" if flags & UTF8_NAME else "cp437"))
    except UnicodeDecodeError as exc:  # as zipfile would refuse it once the upload is in
        raise ArchiveError(NOT_UTF8_NAME) from exc
    info.flag_bits, info.compress_type, info.CRC = flags, method, crc
    info.compress_size, info.file_size, info.header_offset = compressed, size, offset
    return info


def _early_reader(source: ArrivingFile) -> MemberReader:
    """A member's bytes straight from the arriving file, checked against its local header."""

    def read(info: zipfile.ZipInfo) -> Generator[bytes, None, None]:
        inflater = (
            zlib.decompressobj(-zlib.MAX_WBITS)
            if info.compress_type == zipfile.ZIP_DEFLATED
            else None
        )
        # As zipfile does: no more than the declared size comes out, and the CRC-32 decides.
        remaining, left, crc = info.compress_size, info.file_size, 0
        while remaining and left:
            raw = source.read(min(COPY_CHUNK, remaining))
            if not raw:
                raise MemberRefusedError("corrupt member: the archive ends inside it")
            remaining -= len(raw)
            for piece in _inflate(inflater, raw) if inflater else (raw,):
                piece = piece[:left]
                crc, left = zlib.crc32(piece, crc), left - len(piece)
                yield piece
                if not left:
                    break
        if crc != info.CRC:  # worded as zipfile words it, for the same member read whole
            raise MemberRefusedError(f"corrupt member: Bad CRC-32 for file {info.filename!r}")
        if left:
            raise MemberRefusedError("corrupt member: shorter than its header says")

    return read


def _inflate(inflater: zlib._Decompress, data: bytes) -> Iterator[bytes]:
    """Decompressed pieces of at most COPY_CHUNK bytes: a bomb never sits in memory whole."""
    while data and not inflater.eof:
        piece = inflater.decompress(data, COPY_CHUNK)
        data = inflater.unconsumed_tail
        if piece:
            yield piece


def _reconcile(
    early: dict[int, zipfile.ZipInfo], members: list[zipfile.ZipInfo]
) -> list[zipfile.ZipInfo]:
    """Check what was read early against the central directory; returns what is left to read."""
    rest: list[zipfile.ZipInfo] = []
    confirmed: set[int] = set()
    for listed in members:
        local = early.get(listed.header_offset)
        if local is None or listed.header_offset in confirmed:
            rest.append(listed)
            continue
        if reason := member_refusal(listed):
            raise ArchiveError(
                f"member {listed.filename!r}: the archive's central directory refuses it "
                f"({reason}) after it was read as a file: the archive is refused"
            )
        if _facts(local) != _facts(listed):
            raise ArchiveError(
                f"member {listed.filename!r}: its local header and the archive's central "
                "directory disagree: the archive is refused"
            )
        confirmed.add(listed.header_offset)
    if unlisted := sorted(early.keys() - confirmed):
        raise ArchiveError(
            f"member {early[unlisted[0]].filename!r} is not in the archive's central "
            "directory: the archive is refused"
        )
    return rest


def _facts(info: zipfile.ZipInfo) -> tuple[str, int, int, int, int]:
    return info.filename, info.compress_type, info.CRC, info.compress_size, info.file_size
