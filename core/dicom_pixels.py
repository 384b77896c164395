"""DICOM pixels displayed as a viewer would: the Modality LUT (rescale), then the VOI LUT or
the first window, then MONOCHROME1 inverted, any bit depth ending as 8-bit grayscale; after
that a DICOM image takes the same `preprocess` as a JPEG. Compressed transfer syntaxes
decode through pydicom's pixel plugins (pylibjpeg, openjpeg, rle), after their code stream's
stated size is checked against the header.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from core.dicom import DicomError, read


def load_image(path: Path, max_pixels: int) -> Image.Image:
    """The object as an 8-bit grayscale image, as a viewer would display it."""
    ds = read(path, pixels=True)
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows * columns > max_pixels:
        raise DicomError(f"image is {columns}x{rows} pixels, over the limit of {max_pixels}")
    if int(ds.get("NumberOfFrames") or 1) > 1:
        raise DicomError("multi-frame object; a chest radiograph is one frame")
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if syntax in MEASURED_SYNTAXES:
        # A JPEG or JPEG 2000 decoder allocates what its own stream states, not the header.
        stated = _code_stream_size(ds)
        if stated != (columns, rows):
            shown = f"{stated[0]}x{stated[1]} pixels" if stated else "no size we can read"
            raise DicomError(
                f"its {syntax.name} code stream states {shown}, the header {columns}x{rows}: "
                "not decoded"
            )
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # the plugins raise many types; all mean "cannot decode this"
        raise DicomError(f"cannot decode transfer syntax {syntax.name} ({syntax}): {exc}") from exc
    if pixels.ndim == 3:  # colour: RGB or YBR, which pydicom converts to RGB
        return Image.fromarray(pixels.astype(np.uint8)).convert("L")
    return Image.fromarray(display_values(ds, pixels), mode="L")


# Syntaxes whose decoder sizes its output from the stream (RLE's is sized from the header).
MEASURED_SYNTAXES = frozenset(
    {*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes}
)


ROWS_PER_BLOCK = 256  # display_values' working set: this many rows in float64 at once
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "
J2K_START = b"\xff\x4f\xff\x51"  # SOC, then the SIZ marker that must follow it


# Start-of-frame markers (ITU T.81 B.1.1.3, less DHT C4, JPG C8 and DAC CC; F7 is JPEG-LS's).
JPEG_FRAME_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


def _code_stream_size(ds: Dataset) -> tuple[int, int] | None:
    """(columns, rows) as the first frame's JPEG or JPEG 2000 stream states them, or None."""
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except (ValueError, TypeError, KeyError, EOFError):
        return None
    if frame.startswith(JP2_SIGNATURE):  # a JP2 file wrapped around the code stream
        frame = frame[frame.find(b"jp2c") + 4 :] if b"jp2c" in frame else b""
    if frame.startswith(J2K_START) and len(frame) >= 24:
        x, y, x_offset, y_offset = (
            int.from_bytes(frame[i : i + 4], "big") for i in (8, 12, 16, 20)
        )
        return x - x_offset, y - y_offset
    if frame.startswith(b"\xff\xd8"):
        return _jpeg_frame_size(frame)
    return None


def _jpeg_frame_size(stream: bytes) -> tuple[int, int] | None:
    """Walk the JPEG markers up to the first start-of-frame and read its X and Y."""
    at = 2
    while at + 4 <= len(stream):
        if stream[at] != 0xFF:
            return None
        marker = stream[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            at += 2
            continue
        if marker in JPEG_FRAME_MARKERS:
            if at + 9 > len(stream):
                return None
            rows = int.from_bytes(stream[at + 5 : at + 7], "big")
            return int.from_bytes(stream[at + 7 : at + 9], "big"), rows
        at += 2 + int.from_bytes(stream[at + 2 : at + 4], "big")
    return None


def display_values(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Modality LUT, then VOI LUT or the first window, MONOCHROME1 inverted, as uint8.

    Worked out a block of rows at a time: the float64 intermediates of a whole large image
    would take some 30 bytes a pixel (see docs/performance.md, decoding memory)."""
    scale = _display_scale(ds, pixels)
    inverted = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    shown = np.empty(pixels.shape, dtype=np.uint8)
    for rows in _row_blocks(pixels):
        scaled = scale(pixels[rows])
        if inverted:
            scaled = 1.0 - scaled
        shown[rows] = np.round(np.clip(scaled, 0.0, 1.0) * 255.0)
    return shown


def _row_blocks(pixels: np.ndarray) -> list[slice]:
    return [slice(at, at + ROWS_PER_BLOCK) for at in range(0, pixels.shape[0], ROWS_PER_BLOCK)]


def _display_scale(ds: Dataset, pixels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """What maps stored values to 0..1 brightness, before any MONOCHROME1 inversion."""

    def modality(block: np.ndarray) -> np.ndarray:
        return np.asarray(apply_modality_lut(block, ds), dtype=np.float64)

    if "VOILUTSequence" in ds:
        # A lookup table is indexed by the (integer) modality values themselves.
        top = float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)

        def looked_up(block: np.ndarray) -> np.ndarray:
            indices = np.rint(modality(block)).astype(np.int64)
            return np.asarray(apply_voi_lut(indices, ds, index=0, prefer_lut=True)) / top

        return looked_up
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = ds.get("VOILUTFunction")
        return lambda block: _window(modality(block), center, width, function)
    # No window: the full range of the modality values is shown.
    ranges = [(float(v.min()), float(v.max())) for v in map(modality, _split(pixels))]
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if high <= low:
        return lambda block: np.zeros(block.shape)
    return lambda block: (modality(block) - low) / (high - low)


def _split(pixels: np.ndarray) -> list[np.ndarray]:
    return [pixels[rows] for rows in _row_blocks(pixels)]


def _first(value: Any) -> float:
    """The first of several windows (a multi-valued element), as a number."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _window(values: np.ndarray, center: float, width: float, function: Any) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2: the window as a 0..1 ramp (LINEAR, LINEAR_EXACT, SIGMOID)."""
    kind = str(function or "LINEAR").upper()
    if kind == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if kind == "LINEAR_EXACT":
        return (values - (center - width / 2.0)) / max(width, 1e-6)
    if width <= 1.0:
        return (values > center - 0.5).astype(np.float64)
    return (values - (center - 0.5)) / (width - 1.0) + 0.5
