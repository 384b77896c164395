"""DICOM: recognised by its bytes, checked for what it shows, displayed as a viewer would.

Pixels go through the Modality LUT (rescale), then the VOI LUT or the first window, then
MONOCHROME1 is inverted, and any bit depth ends as 8-bit grayscale; after that a DICOM image
takes the same `preprocess` as a JPEG. Compressed transfer syntaxes decode through pydicom's
pixel plugins (pylibjpeg, openjpeg, rle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    UID,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from core.storage import STORAGE_FULL, open_image_bytes
from core.text import storable

RADIOGRAPHY = ("CR", "DX", "DR")
FRONTAL_VIEWS = ("AP", "PA", "")
UID_MAX_LENGTH = 64  # PS3.5 9.1: a UID is at most 64 characters (and so are our columns)
# The lengths of the image columns these values go into (core/models/jobs.py).
VALUE_LIMITS = {"modality": 16, "body_part": 64, "view_position": 16}

# What the copies pneumoscan keeps still hold: the pixels and what decoding and displaying
# them needs, the object's place in its study (PS3.15's Retain UIDs Option: the results name
# the study), and the acquisition facts the results report. Everything else, at every depth,
# private elements included, is removed: a superset of what PS3.15's Basic Application Level
# Confidentiality Profile (Table E.1-1) removes, with no table of its own to fall behind.
_LUT_ITEM = frozenset({"LUTDescriptor", "LUTData", "ModalityLUTType"})
KEPT_ELEMENTS: dict[str, frozenset[str] | None] = {
    **dict.fromkeys(
        (
            "SpecificCharacterSet",
            "SOPClassUID",
            "SOPInstanceUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "Modality",
            "BodyPartExamined",
            "ViewPosition",
            "SamplesPerPixel",
            "PhotometricInterpretation",
            "PlanarConfiguration",
            "NumberOfFrames",
            "Rows",
            "Columns",
            "PixelAspectRatio",
            "BitsAllocated",
            "BitsStored",
            "HighBit",
            "PixelRepresentation",
            "PresentationLUTShape",
            "RescaleIntercept",
            "RescaleSlope",
            "RescaleType",
            "WindowCenter",
            "WindowWidth",
            "VOILUTFunction",
            "LossyImageCompression",
            "LossyImageCompressionRatio",
            "LossyImageCompressionMethod",
            "PixelData",
            "FloatPixelData",
            "DoubleFloatPixelData",
            "PatientIdentityRemoved",
            "DeidentificationMethod",
        )
    ),
    "ModalityLUTSequence": _LUT_ITEM,
    "VOILUTSequence": _LUT_ITEM,
}
KEPT_FILE_META = frozenset(
    {
        "FileMetaInformationVersion",
        "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
    }
)
DEIDENTIFICATION_METHOD = "pneumoscan: only pixels, their display and UIDs kept"
# PS3.16 CID 7050: what was applied (the Basic Profile, with the Retain UIDs Option).
DEIDENTIFICATION_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113110", "Retain UIDs Option"),
)


class DicomError(ValueError):
    """Not a DICOM object pneumoscan can read; the message says why."""


@dataclass(frozen=True)
class DicomInfo:
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    modality: str | None
    body_part: str | None
    view_position: str | None
    transfer_syntax: str
    frames: int
    has_pixels: bool
    rows: int
    columns: int


def looks_like_acr_nema(head: bytes) -> bool:
    """Old ACR-NEMA files have no preamble: they start straight with a group 0008 element."""
    if len(head) < 8 or head[:2] != b"\x08\x00":
        return False
    explicit_vr = head[4:6].isalpha() and head[4:6].isupper()
    implicit_length = int.from_bytes(head[4:8], "little")
    return explicit_vr or implicit_length < 1 << 16


def read(path: Path, pixels: bool) -> Dataset:
    """The dataset, with an implicit VR little-endian syntax assumed when none is given."""
    try:
        with open_image_bytes(path) as handle:
            ds = pydicom.dcmread(handle, force=True, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DicomError(f"not a readable DICOM file: {exc}") from exc
    if "SOPClassUID" not in ds and "Modality" not in ds:
        raise DicomError("not a DICOM object (no SOP class, no modality)")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def read_info(path: Path) -> DicomInfo:
    """The header facts ingest needs; DicomError when a value is not what its element holds."""
    ds = read(path, pixels=False)
    with open_image_bytes(path) as handle:
        has_pixels = b"\xe0\x7f\x10\x00" in handle.read()  # the (7FE0,0010) Pixel Data tag
    try:
        return DicomInfo(
            study_uid=_uid(ds, "StudyInstanceUID"),
            series_uid=_uid(ds, "SeriesInstanceUID"),
            sop_uid=_uid(ds, "SOPInstanceUID"),
            modality=_text(ds, "Modality", VALUE_LIMITS["modality"]),
            body_part=_text(ds, "BodyPartExamined", VALUE_LIMITS["body_part"]),
            view_position=_text(ds, "ViewPosition", VALUE_LIMITS["view_position"]),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            frames=_number(ds, "NumberOfFrames", 1),
            has_pixels=has_pixels and "Rows" in ds,
            rows=_number(ds, "Rows", 0),
            columns=_number(ds, "Columns", 0),
        )
    except DicomError:
        raise
    except Exception as exc:  # a value pydicom cannot even convert: the header is broken
        raise DicomError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc


def _text(ds: Dataset, keyword: str, limit: int | None = UID_MAX_LENGTH) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    return storable(str(value), limit).strip() or None


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = _text(ds, keyword, limit=None)
    if value is not None and len(value) > UID_MAX_LENGTH:
        raise DicomError(f"{keyword} is {len(value)} characters long: not a DICOM UID (64 at most)")
    return value


def _number(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        shown = storable(repr(value), 40)
        raise DicomError(f"{keyword} is not a number ({shown})") from None


def refusal(info: DicomInfo, accept_any: bool) -> str | None:
    """Why this object should not be scored as a frontal chest radiograph, or None."""
    syntax = UID(info.transfer_syntax)
    if not syntax.is_transfer_syntax:
        shown = storable(syntax, UID_MAX_LENGTH)
        return f"transfer syntax {shown} is not a known one: its pixels cannot be read"
    if not info.has_pixels:
        return (
            f"no pixel data (modality {info.modality or 'unknown'}: a report, state or key object?)"
        )
    if info.frames > 1:
        return f"multi-frame object ({info.frames} frames); a chest radiograph is one frame"
    if accept_any:
        return None
    if info.modality not in RADIOGRAPHY:
        return f"modality {info.modality or 'unknown'} is not a radiograph (CR, DX or DR)"
    if info.body_part and info.body_part.upper() != "CHEST":
        return f"body part {info.body_part} is not CHEST"
    if (info.view_position or "").upper() not in FRONTAL_VIEWS:
        return f"view position {info.view_position} is not frontal (AP or PA)"
    return None


def deidentify(path: Path) -> None:
    """Rewrite a stored copy with nothing but `KEPT_ELEMENTS` (pixels kept, at every depth),
    the 128-byte preamble blanked (it may hold anything, another format's header too), and
    the de-identification recorded; DicomError when that cannot be done (keep no such copy)."""
    try:
        ds = pydicom.dcmread(path, force=True)
        _keep_only(ds, KEPT_ELEMENTS)
        for element in list(ds.file_meta):
            if element.keyword not in KEPT_FILE_META:
                del ds.file_meta[element.tag]
        if ds.preamble is not None:
            ds.preamble = bytes(128)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
        ds.DeidentificationMethodCodeSequence = [_code(*code) for code in DEIDENTIFICATION_CODES]
        written = path.with_name(path.name + ".deid")
        ds.save_as(written, enforce_file_format=False)
        written.replace(path)
    except Exception as exc:  # whatever pydicom raises, the copy cannot be kept
        path.with_name(path.name + ".deid").unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in STORAGE_FULL:
            raise  # our disk's trouble, not the object's: the caller stops the job
        raise DicomError(f"cannot be de-identified: {type(exc).__name__}: {exc}") from exc


def _keep_only(ds: Dataset, kept: dict[str, frozenset[str] | None]) -> None:
    for element in list(ds):
        if element.keyword not in kept:  # private elements have no keyword
            del ds[element.tag]
            continue
        item_keywords = kept[element.keyword]
        if element.VR == "SQ" and item_keywords is not None:
            for item in element.value:
                _keep_only(item, dict.fromkeys(item_keywords))


def _code(value: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
    return code


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
