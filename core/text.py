"""Text from uploads made safe to store: both databases refuse some strings outright.

PostgreSQL's text cannot hold a NUL character; neither database driver encodes a lone
surrogate (what Python makes of a file name that is not UTF-8); a bounded column refuses a
longer value on PostgreSQL. Names, reasons and DICOM values all come from the uploader.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
ELLIPSIS = "\u2026"


def storable(text: str, limit: int | None = None) -> str:
    """`text` with NULs and lone surrogates replaced, cut to `limit` characters."""
    cleaned = text.replace("\x00", REPLACEMENT)
    if not is_encodable(cleaned):
        try:  # a name os.fsdecode made of bytes that are not UTF-8: show what can be shown
            raw = cleaned.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = cleaned.encode("utf-8", "replace")
        cleaned = raw.decode("utf-8", "replace")
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + ELLIPSIS
    return cleaned


def is_encodable(text: str) -> bool:
    """Whether `text` is valid Unicode to store as it is (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def without_paths(message: str, root: object) -> str:
    """`message` with the storage folder's absolute path taken out: a reason shown to a
    client names the file as the job knows it, not where the server keeps it."""
    return message.replace(f"{root}/", "").replace(str(root), "storage")
