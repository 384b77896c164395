"""DICOM objects made at test time with pydicom (the two real files come from ../shared/data)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

DX_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
SR_CLASS = UID("1.2.840.10008.5.1.4.1.1.88.22")  # Enhanced SR
PATIENT_NAME = "Doe^Jane"
BIRTH_DATE = "20210314"


def chest_like(rows: int = 96, columns: int = 80) -> np.ndarray:
    """0..1 values shaped like a frontal chest film: bright mediastinum, dark lungs."""
    x = np.linspace(-1, 1, columns)
    y = np.linspace(-1, 1, rows)[:, None]
    lungs = np.exp(-((np.abs(x) - 0.45) ** 2) / 0.05 - y**2 / 0.4)
    return np.clip(0.85 - 0.7 * lungs + 0.1 * y, 0, 1)


def dataset(
    values: np.ndarray | None = None,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
    frames: int = 1,
    sop_class: UID = DX_CLASS,
    **elements: Any,
) -> Dataset:
    """A DICOM object whose stored pixels are `values` (0..1) on `bits` bits."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientBirthDate, ds.PatientID = PATIENT_NAME, BIRTH_DATE, "P-1"
    ds.Modality = modality
    if body_part:
        ds.BodyPartExamined = body_part
    if view:
        ds.ViewPosition = view
    if values is not None:
        stored = np.round(values * (2**bits - 1)).astype(np.uint8 if bits <= 8 else np.uint16)
        if photometric == "MONOCHROME1":
            stored = (2**bits - 1) - stored  # the same picture, stored inverted
        if frames > 1:
            stored = np.stack([stored] * frames)
            ds.NumberOfFrames = frames
        ds.Rows, ds.Columns = values.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated = 8 if bits <= 8 else 16
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
        ds.PixelData = stored.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def voi_lut(entries: int, first: int) -> Sequence:
    """A VOI LUT item mapping [first, first + entries) linearly onto its full 16-bit output."""
    item = Dataset()
    item.LUTDescriptor = [entries, first, 16]
    item.LUTData = np.linspace(0, 65535, entries).round().astype("<u2").tobytes()
    return Sequence([item])


def encode(ds: Dataset, acr_nema: bool = False) -> bytes:
    """The file's bytes; `acr_nema` writes the old form: no preamble, no file meta."""
    buffer = io.BytesIO()
    if acr_nema:
        ds.file_meta = FileMetaDataset()
        ds.preamble = None
        ds.save_as(buffer, enforce_file_format=False, implicit_vr=True, little_endian=True)
        return buffer.getvalue()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def structured_report() -> bytes:
    return encode(dataset(None, modality="SR", body_part=None, view=None, sop_class=SR_CLASS))


# Attributes of PS3.15 Table E.1-1 (the Basic Application Level Confidentiality Profile) that a
# hospital's export commonly fills, each removed or emptied by the profile.
BASIC_PROFILE_TEXT = (
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "StationName",
    "StudyDescription",
    "SeriesDescription",
    "PhysiciansOfRecord",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "AdmittingDiagnosesDescription",
    "DerivationDescription",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientAddress",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "Occupation",
    "AdditionalPatientHistory",
    "PatientComments",
    "DeviceSerialNumber",
    "ProtocolName",
    "StudyID",
    "RequestingPhysician",
    "RequestedProcedureDescription",
    "ImageComments",
    "ContentCreatorName",
    "PatientTelephoneNumbers",
    "ResponsiblePerson",
)
BASIC_PROFILE_OTHER = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "SeriesDate",
    "StudyTime",
    "OriginalAttributesSequence",
    "ReferencedPatientSequence",
    "RequestAttributesSequence",
    "OtherPatientIDsSequence",
)


def identified(ds: Dataset, name: str = PATIENT_NAME) -> Dataset:
    """`ds` as a hospital export fills it: `name` in every text attribute of the profile's
    table, nested copies in sequences, and a private element naming the patient."""
    for keyword in BASIC_PROFILE_TEXT:
        setattr(ds, keyword, name)
    ds.PatientSex, ds.PatientAge, ds.PatientBirthTime = "F", "004Y", "101500"
    ds.StudyDate, ds.SeriesDate, ds.StudyTime = "20250102", "20250102", "093000"
    other_id = Dataset()
    other_id.PatientID, other_id.IssuerOfPatientID = "OTHER-7", name
    ds.OtherPatientIDsSequence = [other_id]
    request = Dataset()
    request.AccessionNumber, request.RequestedProcedureDescription = "ACC-99", name
    ds.RequestAttributesSequence = [request]
    referenced = Dataset()
    referenced.ReferencedSOPClassUID, referenced.ReferencedSOPInstanceUID = DX_CLASS, generate_uid()
    ds.ReferencedPatientSequence = [referenced]
    modified = Dataset()
    modified.PatientName, modified.PatientBirthDate = name, BIRTH_DATE
    original = Dataset()
    original.ModifiedAttributesSequence = [modified]
    original.ModifyingSystem, original.ReasonForTheAttributeModification = name, "CORRECT"
    ds.OriginalAttributesSequence = [original]
    block = ds.private_block(0x0009, "HOSPITAL EXPORT", create=True)
    block.add_new(0x01, "LO", name)
    return ds


def real_study(shared_data: Path, images: int = 3, **identity: str) -> list[Dataset]:
    """One study of real X-rays as a PACS holds it: the smallest `images` original-resolution
    films made DX objects, and the two real DICOM files (a DX and an ACR-NEMA CR) given the
    same patient and study (the NIH file, a Secondary Capture, filed as the DX it is)."""
    from PIL import Image

    originals = sorted(
        (p for p in (shared_data / "origres").rglob("*.jpeg")), key=lambda p: p.stat().st_size
    )[:images]
    study_uid = generate_uid()
    patient = {
        "PatientName": PATIENT_NAME,
        "PatientID": "P-1",
        "PatientBirthDate": BIRTH_DATE,
        "AccessionNumber": "A-1",
        **identity,
    }
    made = []
    for path in originals:
        with Image.open(path) as picture:
            values = np.asarray(picture.convert("L"), dtype=np.float64) / 255
        made.append(dataset(values, bits=8))
    for name in ("nih_cxr14_DX_1024.dcm", "CR-MONO1-10-chest.dcm"):
        real = pydicom.dcmread(shared_data / "dicom" / name, force=True)
        if "SOPInstanceUID" not in real:
            real.SOPInstanceUID = generate_uid()
        if real.Modality == "DX":  # the NIH file is filed as Secondary Capture
            real.SOPClassUID = DX_CLASS
        real.file_meta = FileMetaDataset()
        real.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        real.file_meta.MediaStorageSOPClassUID = real.SOPClassUID
        real.file_meta.MediaStorageSOPInstanceUID = real.SOPInstanceUID
        real.SeriesInstanceUID = generate_uid()
        made.append(real)
    for ds in made:
        ds.StudyInstanceUID = study_uid
        for keyword, value in patient.items():
            setattr(ds, keyword, value)
    return made
