"""Uploads stream to disk next to their final place, and are linked there, not copied."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from flask import Request, current_app
from werkzeug.datastructures import FileStorage

from api.context import api_context
from core.recovery import INCOMING


class StreamingUploadRequest(Request):
    """Writes each uploaded file to a temporary file on the storage volume while it arrives.

    The temporary file disappears with the request; `persist` links it to its job folder.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        incoming = api_context(current_app).storage.root / "uploads" / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        stream = tempfile.NamedTemporaryFile(dir=incoming, prefix="upload-")  # noqa: SIM115
        # Held while this process lives: the sweep deletes only files nobody holds.
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return stream


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
        shutil.copyfileobj(upload.stream, sink, 1024 * 1024)
