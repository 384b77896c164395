"""A zip read while its upload arrives yields what the whole zip would, member by member as
the bytes come, and refuses what its central directory contradicts."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from core.config import Settings
from core.db import Database
from core.intake.entries import ArchiveError, ArchiveLimits, Candidate, Entry
from core.intake.growing_file import ArrivingWriter, UploadInterruptedError, part_path
from core.intake.safe_archive import iter_archive
from core.intake.streaming_zip import UploadStillArrivingError, iter_upload
from core.storage import Storage, sha256_of
from core.sweep import remove_orphan_uploads
from tests import hostile
from tests.images import jpeg_bytes, png_bytes

LIMITS = ArchiveLimits(max_members=1000, max_total_bytes=200 * 1024 * 1024, max_ratio=200)


def summary(entries: Iterator[Entry]) -> list[tuple[str, str]]:
    """Each entry as (path, sha256 of what was written) or (path, reason)."""
    out = []
    for entry in entries:
        if isinstance(entry, Candidate):
            # hashed on the way, correctly (in place: the bytes of the kept upload it names)
            assert entry.sha256 == sha256_of(entry.path, entry.span)
            out.append((entry.relative_path, entry.sha256))
        else:
            out.append((entry.path, entry.reason))
    return out


def outcome(entries: Callable[[], Iterator[Entry]]) -> list[tuple[str, str]] | str:
    try:
        return summary(entries())
    except ArchiveError as exc:
        return f"refused: {exc}"


class SlowUpload(threading.Thread):
    """Writes `data` as the API does, in pieces, optionally pausing until told to go on."""

    def __init__(self, final: Path, data: bytes, piece: int = 64 * 1024) -> None:
        super().__init__(daemon=True)
        self.writer = ArrivingWriter(final)  # the part file exists, locked, before ingest looks
        self.data, self.piece = data, piece
        self.pause_at: int | None = None
        self.go_on = threading.Event()
        self.fail_at: int | None = None

    def run(self) -> None:
        with contextlib.suppress(ConnectionResetError), self.writer as upload:
            for start in range(0, len(self.data), self.piece):
                if self.pause_at is not None and start >= self.pause_at:
                    assert self.go_on.wait(30)
                    self.pause_at = None
                if self.fail_at is not None and start >= self.fail_at:
                    raise ConnectionResetError("the client went away")
                upload.write(self.data[start : start + self.piece])
                time.sleep(0.001)


def arriving(tmp_path: Path, data: bytes, name: str = "arriving") -> list[tuple[str, str]] | str:
    final = tmp_path / name / "archive.zip"
    final.parent.mkdir()
    upload = SlowUpload(final, data, piece=4096)
    upload.pause_at = 0  # not one byte before the reader has opened the arriving file
    upload.start()
    result = outcome(
        lambda: iter_upload(final, tmp_path / name / "files", LIMITS, upload.go_on.set)
    )
    upload.join(30)
    assert upload.go_on.is_set()  # the reader waited for bytes: it read while they arrived
    return result


def whole(tmp_path: Path, data: bytes) -> list[tuple[str, str]] | str:
    archive = tmp_path / "whole" / "archive.zip"
    archive.parent.mkdir()
    archive.write_bytes(data)
    return outcome(lambda: iter_archive(archive, tmp_path / "whole" / "files", LIMITS))


def unseekable_zip(members: list[tuple[str, bytes]]) -> bytes:
    """A zip written to a pipe: sizes follow each member in a data descriptor."""

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.buffer = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:  # type: ignore[override]
            self.buffer += data
            return len(data)

    pipe = Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members:
            with bundle.open(name, "w") as sink:
                sink.write(data)
    return bytes(pipe.buffer)


def plain(compression: int) -> bytes:
    return hostile._zip(
        [
            ("study/a.jpeg", jpeg_bytes()),
            ("study/", b""),
            ("study/b.png", png_bytes()),
            ("notes.txt", b"not an image"),
        ],
        compression,
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: plain(zipfile.ZIP_STORED),
        lambda: plain(zipfile.ZIP_DEFLATED),
        lambda: unseekable_zip([("a.jpeg", jpeg_bytes()), ("b.png", png_bytes())]),
        hostile.zip_slip,
        hostile.absolute_path,
        hostile.drive_letter,
        hostile.backslash,
        hostile.encrypted_member,
        hostile.ratio_bomb,
        hostile.lying_sizes,
        hostile.os_litter,
        hostile.duplicate_and_unicode_names,
        lambda: hostile.nested(2),
        lambda: hostile.overlapping_bomb(entries=100, member_mb=8),
        lambda: hostile.too_many_members(1001),
        hostile.broken_central_directory,
        hostile.empty_zip,
        hostile.not_utf8_name,
        lambda: hostile._zip([("inner.zip", hostile.not_utf8_name()), hostile.GOOD]),
    ],
)
def test_read_while_arriving_gives_what_the_whole_zip_gives(
    tmp_path: Path, make: Callable[[], bytes]
) -> None:
    data = make()
    expected = whole(tmp_path, data)
    assert arriving(tmp_path, data) == expected


def test_members_are_yielded_before_the_upload_ends(tmp_path: Path) -> None:
    data = plain(zipfile.ZIP_STORED)
    final = tmp_path / "archive.zip"
    upload = SlowUpload(final, data, piece=256)
    upload.pause_at = data.index(b"PK\x03\x04", 10)  # stop after the first member's bytes
    upload.start()
    entries = iter_upload(final, tmp_path / "files", LIMITS, lambda: None)
    first = next(entries)  # would wait for the whole upload without early reading
    assert isinstance(first, Candidate)
    assert first.relative_path == "study/a.jpeg"
    assert not final.exists()
    assert part_path(final).exists()
    upload.go_on.set()
    assert [e.relative_path for e in entries if isinstance(e, Candidate)] == [
        "study/b.png",
        "notes.txt",
    ]
    upload.join(30)


def test_waiting_calls_back_so_the_claim_stays_fresh(tmp_path: Path) -> None:
    data = plain(zipfile.ZIP_STORED)
    final = tmp_path / "archive.zip"
    upload = SlowUpload(final, data, piece=256)
    upload.pause_at = 512
    upload.start()
    calls: list[float] = []

    def on_wait() -> None:
        calls.append(time.monotonic())
        if len(calls) == 5:
            upload.go_on.set()

    assert len(summary(iter_upload(final, tmp_path / "files", LIMITS, on_wait))) == 3
    assert len(calls) >= 5


def test_an_upload_that_fails_midway_is_reported_as_interrupted(tmp_path: Path) -> None:
    data = plain(zipfile.ZIP_STORED)
    final = tmp_path / "archive.zip"
    upload = SlowUpload(final, data, piece=256)
    upload.fail_at = len(data) // 2
    upload.start()
    with pytest.raises(UploadInterruptedError, match="stopped before its end"):
        summary(iter_upload(final, tmp_path / "files", LIMITS, lambda: None))
    assert not part_path(final).exists()
    assert not final.exists()


WRITER = """
import sys, time
from pathlib import Path
from core.intake.growing_file import ArrivingWriter
upload = ArrivingWriter(Path(sys.argv[1]))
upload.write(sys.stdin.buffer.read())
print("written", flush=True)
time.sleep(60)
"""


def writer_process(final: Path, data: bytes) -> subprocess.Popen[bytes]:
    """Another process (as the API is) that writes `data` to the part file and lives on,
    holding its lock, until it is killed."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(final)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    writer.stdin.write(data)
    writer.stdin.close()
    assert writer.stdout.readline() == b"written\n"
    return writer


def test_a_writer_process_that_dies_interrupts_the_upload(tmp_path: Path) -> None:
    """Killed outright (no cleanup runs): its lock goes with it, the part file stays behind."""
    data = plain(zipfile.ZIP_STORED)
    final = tmp_path / "archive.zip"
    # The first member, and a bit of the next.
    writer = writer_process(final, data[: data.index(b"PK\x03\x04", 10) + 10])
    entries = iter_upload(final, tmp_path / "files", LIMITS, lambda: None)
    assert isinstance(next(entries), Candidate)  # the first member was whole: read early
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(10)
    with pytest.raises(UploadInterruptedError):
        list(entries)
    assert part_path(final).exists()
    assert not final.exists()


def test_a_member_hidden_from_the_central_directory_refuses_the_archive(tmp_path: Path) -> None:
    """Local headers that the directory does not list: other zip readers would not see them."""
    hidden = hostile._zip([("hidden.jpeg", jpeg_bytes())])
    shown = hostile._zip([("shown.jpeg", png_bytes())])
    local_part = hidden[: hidden.index(b"PK\x01\x02")]
    data = local_part + shown  # the directory at the end lists shown.jpeg at offset 0 only
    assert isinstance(whole(tmp_path, data), list)  # zipfile itself reads it without a word
    assert arriving(tmp_path, data) == (
        "refused: member 'hidden.jpeg' is not in the archive's central directory: "
        "the archive is refused"
    )


def test_a_member_only_the_directory_calls_a_symbolic_link_refuses_the_archive(
    tmp_path: Path,
) -> None:
    result = arriving(tmp_path, hostile.symlink_member())
    assert isinstance(result, str)
    assert "'link.jpeg'" in result
    assert "symbolic link" in result


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
@pytest.mark.parametrize(
    "make",
    [lambda: plain(zipfile.ZIP_STORED), lambda: plain(zipfile.ZIP_DEFLATED), hostile.zip_slip],
)
def test_a_reader_out_of_patience_gives_way_and_goes_on_where_it_stopped(
    tmp_path: Path, make: Callable[[], bytes], fraction: float
) -> None:
    """The upload pauses anywhere (inside a member, between members, before its directory):
    the reader stops after `patience`, and a second reader from its resume point yields the
    rest, so that together they yield what the whole zip does, each entry once."""
    data = make()
    expected = whole(tmp_path, data)
    final = tmp_path / "arriving" / "archive.zip"
    final.parent.mkdir()
    upload = SlowUpload(final, data, piece=128)
    upload.pause_at = int(len(data) * fraction) // 128 * 128
    upload.start()
    files = tmp_path / "arriving" / "files"
    first: list[tuple[str, str]] = []
    try:
        for entry in iter_upload(final, files, LIMITS, lambda: None, patience=0.3):
            first += summary(iter([entry]))
        raise AssertionError("the reader waited for the rest instead of giving way")
    except UploadStillArrivingError as stopped:
        resume_at = stopped.resume_at
    # It goes on from a member's (or the directory's) start, never from inside a member.
    assert data[resume_at : resume_at + 4] in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06")
    upload.go_on.set()
    upload.join(30)  # the rest may come while the reader is away: then it reads it whole
    if fraction == 1.0:
        assert final.exists()
    rest = summary(iter_upload(final, files, LIMITS, lambda: None, resume_at=resume_at))
    assert first + rest == expected


def test_an_upload_already_complete_is_read_whole(tmp_path: Path) -> None:
    data = plain(zipfile.ZIP_DEFLATED)
    final = tmp_path / "archive.zip"
    final.write_bytes(data)
    assert summary(iter_upload(final, tmp_path / "files", LIMITS, lambda: None)) == whole(
        tmp_path, data
    )


def test_the_sweep_keeps_a_slow_upload_and_removes_one_whose_writer_died(
    settings: Settings,
) -> None:
    """A raw zip too slow for early ingest has no job row until it is complete; the sweep,
    which removes job folders without a row, must leave it alone while its writer lives."""
    storage = Storage(settings.storage_dir)
    final = storage.job_dir("0123456789abcdef0123456789abcdef") / "archive.zip"
    final.parent.mkdir(parents=True)
    writer = writer_process(final, b"PK\x03\x04")
    an_hour_ago = time.time() - 3600
    os.utime(final.parent, (an_hour_ago, an_hour_ago))
    with Database(settings.database_url).session() as session:
        assert remove_orphan_uploads(session, storage, timedelta(minutes=10)) == 0
    assert part_path(final).exists()
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(10)
    with Database(settings.database_url).session() as session:
        assert remove_orphan_uploads(session, storage, timedelta(minutes=10)) == 1
    assert not final.parent.exists()
