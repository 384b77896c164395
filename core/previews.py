"""Pictures of a job's images for the reading room, made with Pillow (no TensorFlow).

A preview is the stored, de-identified image decoded exactly as scoring decodes it (a DICOM
windowed the same way, a JPEG upright), shrunk to fit a square of one of `PREVIEW_SIZES`, and
kept as a JPEG under the job's `derived/` folder: it goes when the job's files go.
A heatmap is made by a worker (worker/heatmaps.py); `overlay_png` turns its grid into the
transparent picture laid over the preview.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PilImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import ConflictError
from core.imaging import ImageSource, Preprocessing, decode_image
from core.models import Image, ModelVersion
from core.reading_room import ResultNotFoundError, visible_image
from core.storage import Storage, span_of

# A requested size is rounded up to one of these, so a handful of files per image at most.
PREVIEW_SIZES = (128, 256, 512, 1024)
HEATMAP_SIZE = 512
JPEG_QUALITY = 85


class NotScoredError(ConflictError):
    code = "not_scored"


@dataclass(frozen=True)
class StoredImage:
    """Where an image's bytes are, and what scored it."""

    id: int
    job_id: str
    source: ImageSource
    probability: float | None
    model_version_id: int | None
    model_version: str | None
    artifact_available: bool


def stored_image(
    session: Session, storage: Storage, image_id: int, owner: str | None = None
) -> StoredImage:
    """An image of a job `owner` may see (any job when None); others are "not found"."""
    query = select(Image, ModelVersion).outerjoin(
        ModelVersion, ModelVersion.id == Image.model_version_id
    )
    row = session.execute(visible_image(query, image_id, owner)).first()
    if row is None:
        raise ResultNotFoundError(f"no result {image_id}")
    image, version = row
    return StoredImage(
        image.id,
        image.job_id,
        ImageSource(
            storage.resolve(image.location),
            image.format,
            span_of(image.member_offset, image.size_bytes),
        ),
        image.probability,
        image.model_version_id,
        version.version if version else None,
        version is not None and version.artifact_deleted_at is None,
    )


def preview_size(requested: int) -> int:
    """The smallest stored size that is at least `requested` (the largest above them all)."""
    return next((size for size in PREVIEW_SIZES if size >= requested), PREVIEW_SIZES[-1])


def preview(storage: Storage, image: StoredImage, size: int, max_pixels: int) -> Path:
    """The preview of `image` at `size` (one of PREVIEW_SIZES), made on first request;
    ImageDecodeError when the stored image cannot be read."""
    path = storage.preview(image.job_id, image.id, size)
    if not path.is_file():
        source = image.source
        picture = decode_image(source.path, source.format, size, max_pixels, source.span)
        picture.thumbnail((size, size), PilImage.Resampling.LANCZOS)
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
        write_atomically(path, buffer.getvalue())
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all: readers never see a half-written picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# Transparent blue through yellow to red: where the model looked most is warmest and least
# transparent, where it did not look the X-ray shows through.
_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_COLOURS = np.array([[40, 60, 200], [40, 200, 200], [250, 220, 40], [230, 30, 30]], float)


def overlay_png(cam: np.ndarray, image_size: tuple[int, int], recipe: Preprocessing) -> bytes:
    """A PNG the shape of the image (longest side HEATMAP_SIZE) with `cam` (a grid of 0..1
    over the model's input) laid where the model saw: inside the recipe's trim margins, since
    the model's input is the trimmed image squashed to a square."""
    width, height = image_size
    scale = HEATMAP_SIZE / max(width, height)
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    dx, dy = round(out_w * recipe.trim), round(out_h * recipe.trim)
    grid = PilImage.fromarray(np.clip(cam, 0.0, 1.0).astype(np.float32))
    inner = np.asarray(grid.resize((out_w - 2 * dx, out_h - 2 * dy), PilImage.Resampling.BILINEAR))
    heat = np.zeros((out_h, out_w), np.float32)
    heat[dy : out_h - dy, dx : out_w - dx] = inner
    rgba = np.zeros((out_h, out_w, 4), np.uint8)
    for channel in range(3):
        rgba[..., channel] = np.interp(heat, _STOPS, _COLOURS[:, channel]).astype(np.uint8)
    rgba[..., 3] = (np.clip(heat, 0.0, 1.0) ** 0.7 * 200).astype(np.uint8)
    buffer = io.BytesIO()
    PilImage.fromarray(rgba).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
