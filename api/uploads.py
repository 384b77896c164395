"""Multipart uploads stream to disk next to their final place, and are linked there, not copied.

(A zip sent as the raw body is written straight into its job's folder: core/arriving.py.)
Every multipart file is written, while it arrives, to a temporary file under
`storage/uploads/.incoming/` that holds an `flock` for as long as its request lives: the
sweep deletes only the temporary files nobody holds (their API process died).

A client that goes quiet in the middle of a body is dropped after `upload_idle_seconds`.
Bodies that are not uploads (JSON) are capped at `JSON_BODY_LIMIT`; a multipart request may
carry `max_upload_files` files (each holds an open file until the request ends).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from apiflask import APIFlask
from flask import Request, current_app, request
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from api.context import api_context
from api.errors import api_error, render_error
from core.recovery import INCOMING
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
    incoming = storage.root / "uploads" / INCOMING
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
