"""DICOM headers: recognised by its bytes, checked for what it shows (a frontal chest
radiograph), read for its identifiers, and de-identified; its pixels: `core.dicom_pixels`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ImplicitVRLittleEndian,
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
    sop_class_uid: str | None
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
            sop_class_uid=_uid(ds, "SOPClassUID"),
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
