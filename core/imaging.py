"""Recognising images by their bytes, and the one preprocessing that scoring and training share.

A model takes `size` x `size` x 3 pixel values in 0..255 (grayscale repeated over three
channels); any rescaling to the network's range is a layer inside the saved model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.storage import Span, open_image_bytes

JPEG = "jpeg"
PNG = "png"
DICOM = "dicom"

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageDecodeError(ValueError):
    """The bytes could not be turned into model input; the message says why."""


def sniff_format(head: bytes) -> str | None:
    """The format the first 132 bytes announce, or None when they are not an image we read."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    return None


def sniff_file(path: Path, span: Span | None = None) -> str | None:
    with open_image_bytes(path, span) as handle:
        head = handle.read(132)
    fmt = sniff_format(head)
    if fmt is None:
        from core import dicom

        if dicom.looks_like_acr_nema(head):
            return DICOM  # confirmed (or refused) when ingest reads its header
    return fmt


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """Grayscale, squash-resize to `size` x `size`, repeat to three channels, as uint8."""
    gray = _to_grayscale(ImageOps.exif_transpose(image))
    resized = gray.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.uint8)
    return np.repeat(pixels[:, :, np.newaxis], 3, axis=2)


def load_model_input(
    path: Path, size: int, max_pixels: int, span: Span | None = None
) -> np.ndarray:
    """Decode a JPEG or PNG file (or `span` of it) into model input, letting JPEG decode at
    reduced scale."""
    try:
        with open_image_bytes(path, span) as source, Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} pixels, over the limit of {max_pixels}"
                )
            # JPEG only: decode straight at the smallest 1/2, 1/4 or 1/8 scale still >= size.
            image.draft("L", (size, size))
            return preprocess(image, size)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a readable image") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image is over the limit of {max_pixels} pixels: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"could not decode image: {exc}") from exc
    except Exception as exc:  # a decoder bug on crafted bytes must not fail the whole batch
        raise ImageDecodeError(f"could not decode image: {type(exc).__name__}: {exc}") from exc


def decode_for_model(
    path: Path, fmt: str, size: int, max_pixels: int, span: Span | None = None
) -> np.ndarray:
    """Model input from a JPEG, PNG or DICOM file; ImageDecodeError says why when it cannot.

    `span`: the image is those bytes of `path` (a JPEG or PNG member of a kept upload).
    """
    if fmt != DICOM:
        return load_model_input(path, size, max_pixels, span)
    from core import dicom  # pydicom is needed only where DICOM is decoded

    try:
        return preprocess(dicom.load_image(path, max_pixels), size)
    except dicom.DicomError as exc:
        raise ImageDecodeError(str(exc)) from exc
    except Exception as exc:  # a decoder bug on crafted bytes must not fail the whole batch
        raise ImageDecodeError(f"could not decode DICOM: {type(exc).__name__}: {exc}") from exc


def configure_pillow(max_pixels: int) -> None:
    """Pillow's own decompression-bomb limit, per process: it raises above twice this.

    Between once and twice the limit Pillow only warns; `load_model_input` refuses those
    images itself, so the warning says nothing new.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _to_grayscale(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Map the full 16-bit range onto 8 bits instead of letting convert("L") clip at 255.
        wide = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(wide / 257.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "L":
        return image
    return image.convert("L")
