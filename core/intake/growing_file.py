"""A file one process writes while another reads it: a raw zip upload arriving.

The API writes a zip sent as the raw request body to `archive.zip.part` under an exclusive
`flock` and renames it to `archive.zip` once the last byte is in (`ArrivingWriter`). A reader
(`ArrivingFile`) waits for bytes that have not come yet, and knows the upload complete when
the writer let go of its lock after the rename, interrupted when it let go without it.
`writer_holds` is the one answer to "is a writer still holding this file" for the API's
multipart bodies, a raw zip's part file, ingest and the sweep.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from core.intake.entries import ArchiveError

PART_SUFFIX = ".part"
POLL_SECONDS = 0.05


class UploadInterruptedError(ArchiveError):
    """The upload stopped before its end: its client or the API process went away."""


class StillWaitingError(Exception):
    """The reader waited its patience out for bytes that have not come."""


def part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


def writer_holds(path: Path) -> bool:
    """Whether a process holds the lock every upload takes while it is written (False for a
    file that is not there)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return _writer_holds_open(descriptor)
    finally:
        os.close(descriptor)


def _writer_holds_open(descriptor: int) -> bool:
    """`writer_holds` for a file already open (it may have been renamed since)."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(descriptor, fcntl.LOCK_UN)
    return False


class ArrivingWriter:
    """The API's side: write the body to the part file, holding its lock, then rename it.

    Leaving the `with` block by an exception removes the part file, so a reader sees the
    writer gone without a complete file: the upload was interrupted.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self.part = part_path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: every chunk is on disk (in the page cache) for the reader at once.
        self._file = self.part.open("xb", buffering=0)
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.size += len(chunk)

    def __enter__(self) -> ArrivingWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                os.rename(self.part, self.final)  # complete: before the lock is let go
            else:
                self.part.unlink(missing_ok=True)
        finally:
            self._file.close()


class ArrivingFile:
    """The reader's side: a file another process is still writing, read as if it were whole.

    A read waits for its bytes; the file ends once the writer has let go of its lock after
    renaming it to its final name. A writer that let go without the rename (its request
    failed, its process died) interrupted the upload.
    """

    def __init__(
        self,
        part: Path,
        final: Path,
        on_wait: Callable[[], None],
        poll: float = POLL_SECONDS,
        patience: float | None = None,
    ) -> None:
        self._file = part.open("rb", buffering=0)  # FileNotFoundError: already renamed
        self.final = final
        self.on_wait = on_wait
        self.poll = poll
        self.patience = patience  # seconds a read may wait for bytes (None: as long as it takes)
        self.position = 0
        self.complete = False
        if self._writer_gone():
            self._settle()  # a part file left by a writer that is already gone

    def read(self, size: int) -> bytes:
        """`size` bytes from the current position; fewer only at the end of the whole file."""
        pieces = []
        since = time.monotonic()
        while size > 0:
            piece = self._file.read(size)
            if piece:
                pieces.append(piece)
                size -= len(piece)
                self.position += len(piece)
                since = time.monotonic()
            elif self.complete:
                break
            else:
                self._wait(since)
        return b"".join(pieces)

    def skip_to(self, offset: int) -> None:
        since, seen = time.monotonic(), -1
        while not self.complete and (size := os.fstat(self._file.fileno()).st_size) < offset:
            if size != seen:
                since, seen = time.monotonic(), size
            self._wait(since)
        self._file.seek(offset)
        self.position = offset

    def wait_until_complete(self) -> int:
        """Wait for the last byte; returns the file's size."""
        since, seen = time.monotonic(), -1
        while not self.complete:
            if (size := os.fstat(self._file.fileno()).st_size) != seen:
                since, seen = time.monotonic(), size
            self._wait(since)
        return os.fstat(self._file.fileno()).st_size

    def close(self) -> None:
        self._file.close()

    def link(self, target: Path) -> None:
        """A hard link to the file being read, under whatever name it has now."""
        # linkat(2) with AT_SYMLINK_FOLLOW on /proc/self/fd/N links the open file itself;
        # os.link calls linkat only when given a directory descriptor.
        fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.link(str(self._file.fileno()), target, src_dir_fd=fds, follow_symlinks=True)
        finally:
            os.close(fds)

    def _wait(self, since: float) -> None:
        """Wait a little for more bytes; `since`: when the last of them came."""
        if self._writer_gone():
            self._settle()  # bytes written just before the writer let go are read next
            return
        if self.patience is not None and time.monotonic() - since > self.patience:
            raise StillWaitingError
        self.on_wait()
        time.sleep(self.poll)

    def _writer_gone(self) -> bool:
        return not _writer_holds_open(self._file.fileno())

    def _settle(self) -> None:
        try:
            renamed = os.path.samestat(os.fstat(self._file.fileno()), os.stat(self.final))
        except FileNotFoundError:
            renamed = False
        if not renamed:
            raise UploadInterruptedError(
                "the upload stopped before its end (the connection or the API went away); "
                "submit the archive again"
            )
        self.complete = True
