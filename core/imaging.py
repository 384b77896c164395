"""Recognising images by their bytes, and the one preprocessing that scoring and training share.

A model takes `size` x `size` x 3 pixel values in 0..255 (grayscale repeated over three
channels); any rescaling to the network's range is a layer inside the saved model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.storage import Span, open_image_bytes

JPEG = "jpeg"
PNG = "png"
DICOM = "dicom"

ROWS_PER_BLOCK = 256
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageDecodeError(ValueError):
    """The bytes could not be turned into model input; the message says why."""


def sniff_format(head: bytes) -> str | None:
    """The format the first 132 bytes announce, or None when they are not an image we read.

    DICOM is recognised first: its 128-byte preamble is free for any use (a dual-format file
    may start as a JPEG or TIFF), and a DICOM read as a JPEG would be kept whole, patient
    name included, without de-identification."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
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


@dataclass(frozen=True)
class Preprocessing:
    """What happens between the decoded grayscale image and the model's input, per version.

    `trim`: the fraction cut from each edge before resizing (film borders, collimation,
    lead markers). `equalize`: histogram equalisation of the trimmed image, which makes the
    input the same under any monotonic change of brightness, contrast or gamma; the histogram
    is taken over the central window only (`EQUALIZE_MARGIN` off each edge), so a black frame,
    a label or a ruler at the border does not decide how the lungs are mapped. Written as
    a short name (`squash`, `equalize`, `trim8`, `trim8+equalize`) on the model version.
    """

    trim: float = 0.0
    equalize: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.trim < 0.25:
            raise ValueError(f"trim must lie in [0, 0.25), not {self.trim}")

    @property
    def name(self) -> str:
        parts = [f"trim{round(self.trim * 100)}"] if self.trim else []
        if self.equalize:
            parts.append("equalize")
        return "+".join(parts) or SQUASH

    @classmethod
    def parse(cls, name: str) -> Preprocessing:
        """The recipe a name stands for; ValueError names what is wrong with it."""
        trim, equalize = 0.0, False
        for part in name.strip().split("+"):
            if part == "equalize":
                equalize = True
            elif part.startswith("trim") and part[4:].isdigit():
                trim = int(part[4:]) / 100
            elif part != SQUASH:
                raise ValueError(
                    f"unknown preprocessing {part!r} in {name!r}: use squash, equalize, "
                    "trimN (N percent per edge) or trimN+equalize"
                )
        return cls(trim, equalize)


SQUASH = "squash"
DEFAULT_PREPROCESSING = Preprocessing()
EQUALIZE_MARGIN = 0.2


def preprocess(
    image: Image.Image, size: int, recipe: Preprocessing = DEFAULT_PREPROCESSING
) -> np.ndarray:
    """Grayscale, trim, equalise (as the recipe says), squash-resize to `size` x `size`,
    repeat to three channels, as uint8: the one preprocessing scoring and training share."""
    return prepare(_to_grayscale(ImageOps.exif_transpose(image)), size, recipe)


def prepare(
    gray: Image.Image, size: int, recipe: Preprocessing = DEFAULT_PREPROCESSING
) -> np.ndarray:
    """`preprocess` of an image `decode_image` gave (upright and grayscale already)."""
    if recipe.trim:
        width, height = gray.size
        dx, dy = round(width * recipe.trim), round(height * recipe.trim)
        gray = gray.crop((dx, dy, width - dx, height - dy))
    if recipe.equalize:
        gray = ImageOps.equalize(gray, _central_window(gray.size))
    resized = gray.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.uint8)
    return np.repeat(pixels[:, :, np.newaxis], 3, axis=2)


def _central_window(size: tuple[int, int]) -> Image.Image:
    width, height = size
    dx, dy = round(width * EQUALIZE_MARGIN), round(height * EQUALIZE_MARGIN)
    mask = Image.new("L", size, 0)
    mask.paste(255, (dx, dy, width - dx, height - dy))
    return mask


def load_model_input(
    path: Path,
    size: int,
    max_pixels: int,
    span: Span | None = None,
    recipe: Preprocessing = DEFAULT_PREPROCESSING,
) -> np.ndarray:
    """Decode a JPEG or PNG file (or `span` of it) into model input, letting JPEG decode at
    reduced scale."""
    return prepare(decode_image(path, JPEG, size, max_pixels, span), size, recipe)


def decode_for_model(
    path: Path,
    fmt: str,
    size: int,
    max_pixels: int,
    span: Span | None = None,
    recipe: Preprocessing = DEFAULT_PREPROCESSING,
) -> np.ndarray:
    """Model input from a JPEG, PNG or DICOM file; ImageDecodeError says why when it cannot.

    `span`: the image is those bytes of `path` (a JPEG or PNG member of a kept upload).
    """
    return prepare(decode_image(path, fmt, size, max_pixels, span), size, recipe)


class ImageSource(NamedTuple):
    """Where an image's bytes are and what they are."""

    path: Path
    format: str
    span: Span | None = None


def decode_batch(
    sources: Sequence[ImageSource],
    size: int,
    max_pixels: int,
    recipe: Preprocessing,
    pool: Executor,
) -> list[np.ndarray | ImageDecodeError]:
    """Model input for each source, decoded in parallel on `pool` (scoring and training alike);
    a source that cannot be decoded is its error, in its place."""

    def decode(source: ImageSource) -> np.ndarray | ImageDecodeError:
        try:
            return decode_for_model(
                source.path, source.format, size, max_pixels, source.span, recipe
            )
        except ImageDecodeError as exc:
            return exc

    return list(pool.map(decode, sources))


def decode_image(
    path: Path, fmt: str, size: int, max_pixels: int, span: Span | None = None
) -> Image.Image:
    """The decoded image, upright and grayscale (a JPEG at the smallest 1/2, 1/4 or 1/8 scale
    still >= `size` on both sides, in memory: the file is closed); ImageDecodeError says why."""
    if fmt == DICOM:
        return _decode_dicom(path, max_pixels)
    try:
        with open_image_bytes(path, span) as source, Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} pixels, over the limit of {max_pixels}"
                )
            image.draft("L", (size, size))  # JPEG only; other formats ignore it
            # exif_transpose returns a loaded copy, so the image outlives its file.
            return _to_grayscale(ImageOps.exif_transpose(image))
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


def _decode_dicom(path: Path, max_pixels: int) -> Image.Image:
    from core import dicom, dicom_pixels  # pydicom is needed only where DICOM is decoded

    try:
        return _to_grayscale(dicom_pixels.load_image(path, max_pixels))
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
        # A block of rows at a time: the whole image in float64 would take 8 bytes a pixel.
        wide = np.asarray(image)
        narrow = np.empty(wide.shape, dtype=np.uint8)
        for at in range(0, wide.shape[0], ROWS_PER_BLOCK):
            narrow[at : at + ROWS_PER_BLOCK] = np.clip(
                wide[at : at + ROWS_PER_BLOCK] / 257.0, 0, 255
            )
        return Image.fromarray(narrow, mode="L")
    if image.mode == "L":
        return image
    return image.convert("L")
