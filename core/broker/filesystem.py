"""kombu's filesystem transport (the embedded broker), with messages that appear whole.

kombu creates a message file under its final name and only then writes it: a consumer
polling in between takes the empty file, cannot decode it and stops its worker with an
"Unrecoverable error" (seen once in CI, the message lost with it). Here a message is written
under a name no consumer reads (kombu takes only `<time>_<uuid>.<queue>.msg`) and renamed
into place once whole.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

WRITING_SUFFIX = ".writing"


class Channel(filesystem.Channel):
    # kombu's base class names the second argument `message`, its filesystem channel `payload`.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        writing = final + WRITING_SUFFIX
        try:
            with open(writing, "wb") as sink:
                sink.write(str_to_bytes(dumps(payload)))
            os.rename(writing, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
