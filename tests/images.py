"""Small synthetic images made at test time (real X-rays come from the shared data folder)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def gradient(size: tuple[int, int] = (200, 160)) -> Image.Image:
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float64)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    return Image.fromarray(((x + y) / 2).astype(np.uint8), mode="L")


def jpeg_bytes(image: Image.Image | None = None, **save: object) -> bytes:
    buffer = io.BytesIO()
    (image or gradient()).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def png_bytes(image: Image.Image | None = None) -> bytes:
    buffer = io.BytesIO()
    (image or gradient()).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    """A JPEG whose bytes stop a third of the way through: recognised, never decodable."""
    data = jpeg_bytes(gradient((400, 300)))
    return data[: len(data) // 3]
