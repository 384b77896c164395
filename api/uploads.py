"""Multipart uploads stream to disk next to their final place, and are linked there, not copied.

(A zip sent as the raw body is written straight into its job's folder:
core/intake/growing_file.py.)
Every multipart file is written, while it arrives, to a temporary file under
`storage/uploads/.incoming/` that holds an `flock` for as long as its request lives: the
sweep deletes only the temporary files nobody holds (their API process died).

A client that goes quiet in the middle of a body is dropped after `upload_idle_seconds`, and
one that keeps sending too slowly (a byte now and then) once a MiB of its body takes longer
than `upload_min_kb_per_s` allows (`RateWatch`). One key name may have `max_uploads_per_owner`
uploads arriving at once (`upload_slot`). Bodies that are not uploads (JSON) are capped at
`JSON_BODY_LIMIT`; a multipart request may carry `max_upload_files` files (each holds an open
file until the request ends).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from apiflask import APIFlask, HTTPError
from flask import Request, current_app, request
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from api.context import api_context
from api.errors import api_error, render_error
from core.storage import Storage

CHUNK = 1024 * 1024
JSON_BODY_LIMIT = 1024 * 1024  # a folder job's JSON is a few hundred bytes
UPLOAD_TYPES = ("application/zip", "multipart/form-data")


def init_app(app: APIFlask, idle_seconds: int) -> None:
    """Requests whose client stops sending fail after `idle_seconds` instead of never.

    gunicorn reads a body from a blocking socket with no timeout, so a client that vanishes
    without closing its connection would hold an API thread, and the ingest reading its zip
    as it arrives a worker slot, for good. gunicorn hands the application that socket as
    `gunicorn.socket` and makes it blocking again before the connection's next request, so
    the timeout set here covers this request only. (Werkzeug's development server has no
    such key: nothing changes there.)
    """

    @app.before_request
    def _limit_idle_time() -> None:
        connection = request.environ.get("gunicorn.socket")
        if connection is not None:
            connection.settimeout(idle_seconds)

    @app.before_request
    def _limit_other_bodies() -> None:
        if request.mimetype not in UPLOAD_TYPES:
            request.max_content_length = JSON_BODY_LIMIT

    def _too_large(error: RequestEntityTooLarge) -> ResponseReturnValue:
        limit = request.max_content_length
        if request.mimetype not in UPLOAD_TYPES:
            message = f"a body that is not an upload is at most {JSON_BODY_LIMIT // 1024} KiB"
        else:
            message = f"the upload is larger than the limit of {(limit or 0) // 2**20} MB"
        return render_error(api_error(413, message, "too_large"))

    app.register_error_handler(RequestEntityTooLarge, _too_large)

    def _stopped(error: ClientDisconnected) -> ResponseReturnValue:
        message = (
            f"the request body stopped before its end: nothing arrived for {idle_seconds} s, "
            "or the client went away"
        )
        return render_error(api_error(400, message, "incomplete_upload"))

    # Werkzeug turns the socket's timeout (an OSError) into ClientDisconnected.
    app.register_error_handler(ClientDisconnected, _stopped)


def incoming_dir(storage: Storage) -> Path:
    incoming = storage.incoming_dir
    incoming.mkdir(parents=True, exist_ok=True)
    return incoming


def _locked_temporary(incoming: Path) -> IO[bytes]:
    stream = tempfile.NamedTemporaryFile(dir=incoming, prefix="upload-")  # noqa: SIM115
    fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return stream


class StreamingUploadRequest(Request):
    """Multipart files go to a locked temporary file on the storage volume as they arrive."""

    files_opened = 0

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        context = api_context(current_app)
        self.files_opened += 1
        if self.files_opened > context.settings.max_upload_files:
            raise api_error(
                413,
                f"more than {context.settings.max_upload_files} files in one request: "
                "send them as one zip archive",
                "too_many_files",
            )
        return _locked_temporary(incoming_dir(context.storage))


def persist(upload: FileStorage, target: Path) -> None:
    """Give the uploaded file its final name without copying it when possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    name = getattr(upload.stream, "name", None)
    if isinstance(name, str) and os.path.exists(name):
        try:
            os.link(name, target)
            return
        except OSError:
            pass  # another filesystem, or no hard links: copy instead
    upload.stream.seek(0)
    with target.open("wb") as sink:
        shutil.copyfileobj(upload.stream, sink, CHUNK)


# Slots: one empty lock file per (owner, slot) on the storage volume, held with `flock` for
# as long as an upload's request lives, so the cap holds across API processes, and a process
# that dies lets go of its slots with its locks. They are never removed (removing a lock file
# another request has just opened would let two hold "the same" slot).


@contextlib.contextmanager
def upload_slot(storage: Storage, owner: str, limit: int) -> Iterator[None]:
    """Hold one of `owner`'s `limit` upload slots while the body arrives, or answer 429."""
    slots = storage.upload_slots_dir
    slots.mkdir(parents=True, exist_ok=True)
    stem = hashlib.sha256(owner.encode()).hexdigest()[:16]
    for index in range(limit):
        descriptor = os.open(slots / f"{stem}-{index}", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        try:
            yield
        finally:
            os.close(descriptor)  # the lock goes with it
        return
    error = api_error(
        429,
        f"{limit} uploads of {owner!r} are already arriving: send this one when one of them "
        "has ended",
        "too_many_uploads",
    )
    error.headers = {"Retry-After": "30"}
    raise error


MIB = 1024 * 1024


class _CountedInput:
    """The request's input stream, counting what is read; where each MiB began is noted."""

    def __init__(self, stream: Any, expected: int | None) -> None:
        self._stream = stream
        self.expected = expected
        self.received = 0
        self.mib_started = time.monotonic()  # when the MiB now arriving began
        self._mib_base = 0
        self.cut = False

    def read(self, size: int = -1) -> bytes:
        return self._count(self._stream.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._count(self._stream.readline(size))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.received >= self.expected

    def _count(self, data: bytes) -> bytes:
        self.received += len(data)
        if self.received - self._mib_base >= MIB:
            self._mib_base, self.mib_started = self.received, time.monotonic()
        return data


class RateWatch:
    """Cuts the connection of an upload whose current MiB has taken longer than the minimum
    rate allows (the idle limit sees only silence: a byte every 50 s would pass it for ever).

    One watcher thread per API process looks at every upload in flight; cutting shuts the
    socket for reading, so the request's blocked read returns at once and it fails as a body
    that ended early, with the reason."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[_CountedInput, socket.socket, float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, min_kb_per_s: int) -> Iterator[_CountedInput | None]:
        """Count this request's body and cut it when too slow (under gunicorn only)."""
        connection = request.environ.get("gunicorn.socket")
        if connection is None or not min_kb_per_s:
            yield None
            return
        counted = _CountedInput(request.environ["wsgi.input"], request.content_length)
        request.environ["wsgi.input"] = counted  # before anything reads the body
        with self._lock:
            self._watched[id(counted)] = (counted, connection, MIB / (min_kb_per_s * 1024))
            if self._thread is None:  # started in the serving process, after gunicorn's fork
                self._thread = threading.Thread(target=self._run, name="rate-watch", daemon=True)
                self._thread.start()
        try:
            yield counted
        finally:
            with self._lock:
                self._watched.pop(id(counted), None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            with self._lock:
                watched = list(self._watched.values())
            now = time.monotonic()
            for counted, connection, window in watched:
                if counted.cut or counted.complete or now - counted.mib_started <= window:
                    continue
                counted.cut = True
                with contextlib.suppress(OSError):  # gone already
                    connection.shutdown(socket.SHUT_RD)


WATCH_SECONDS = 0.25
RATE_WATCH = RateWatch()


@contextlib.contextmanager
def watched_upload(min_kb_per_s: int) -> Iterator[None]:
    """The request's body under the minimum rate; a body cut for it fails with that reason."""
    with RATE_WATCH.watch(min_kb_per_s) as counted:
        try:
            yield
        except Exception:
            if counted is not None and counted.cut:
                raise _too_slow(min_kb_per_s) from None
            raise
        if counted is not None and counted.cut:
            raise _too_slow(min_kb_per_s)


def _too_slow(min_kb_per_s: int) -> HTTPError:
    seconds = MIB / (min_kb_per_s * 1024)
    return api_error(
        408,
        f"the upload arrived slower than the minimum of {min_kb_per_s} KB/s (a MiB took "
        f"more than {seconds:g} s): it is dropped; send it again over a faster link",
        "upload_too_slow",
    )
