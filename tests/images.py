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


def chest_like(size: int = 224, seed: int = 3) -> Image.Image:
    """A textured image with a mid-grey body and dark lungs: enough structure to equalise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    body = 170 - 90 * np.exp(-(((x - 0.3) ** 2 + (y - 0.5) ** 2) / 0.02))
    body -= 90 * np.exp(-(((x - 0.7) ** 2 + (y - 0.5) ** 2) / 0.02))
    pixels = np.clip(body + rng.normal(0, 12, body.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


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
