"""A study's findings as a DICOM Comprehensive 3D SR (TID 1500 Measurement Report), the
shape of the IHE AI Results profile, built with highdicom.

One Measurement and Qualitative Evaluation Group (TID 1501) per scored image: the finding
(pneumonia), its qualitative evaluation (present or absent at the model version's
threshold), the probability as a measurement, the algorithm (model name, version,
threshold) and the image as its source. The model versions are the Contributing Equipment.

pneumoscan keeps no patient data, so a report is built without it; what is sent back to a
PACS gets the patient and study identity the node held in memory (`Identity`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Image, ModelVersion

MANUFACTURER = "pneumoscan"
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent
PROBABILITY = Code("PROBABILITY", "99PNEUMOSCAN", "Probability of pneumonia")
NO_UNITS = Code("1", "UCUM", "no units")
CHEST_RADIOGRAPH = Code("30745-4", "LN", "XR Chest Views")
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")
REPORT_SERIES_NUMBER = 9701
# The patient and study attributes a report carries; the node copies them from the
# instances it received (held in memory only) into what it sends back.
IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
Identity = Mapping[str, object]


@dataclass(frozen=True)
class Finding:
    """One scored image of a study, with what scored it."""

    sop_class_uid: str
    sop_uid: str
    series_uid: str
    probability: float
    threshold: float
    model_version: str
    architecture: str | None


def identity_of(dataset: Dataset) -> dict[str, object]:
    """The patient and study attributes of a received instance, to keep in memory."""
    return {keyword: dataset.get(keyword) for keyword in IDENTITY_KEYWORDS if keyword in dataset}


def study_findings(session: Session, job_id: str) -> dict[str, list[Finding]]:
    """The scored DICOM images of a job, by study, in the order they were recorded."""
    rows = session.execute(
        select(
            Image.study_uid,
            Image.sop_class_uid,
            Image.sop_uid,
            Image.series_uid,
            Image.probability,
            Image.threshold,
            ModelVersion.version,
            ModelVersion.architecture,
        )
        .join(ModelVersion, Image.model_version_id == ModelVersion.id)
        .where(
            Image.job_id == job_id,
            Image.probability.is_not(None),
            Image.study_uid.is_not(None),
            Image.sop_class_uid.is_not(None),
            Image.sop_uid.is_not(None),
            Image.series_uid.is_not(None),
        )
        .order_by(Image.id)
    )
    studies: dict[str, list[Finding]] = {}
    for study_uid, *fields in rows:
        studies.setdefault(study_uid, []).append(Finding(*fields))  # type: ignore[arg-type]
    return studies


def report_uid(job_id: str, study_uid: str, purpose: str) -> UID:
    """The same report gets the same UID when it is made again (a retried send, a second
    download), and reports with different content (`purpose`) get different ones."""
    return generate_uid(entropy_srcs=[job_id, study_uid, purpose])


def build_report(
    job_id: str,
    study_uid: str,
    findings: Sequence[Finding],
    identity: Identity | None = None,
    purpose: str = "download",
    complete: bool = True,
) -> Dataset:
    """The study's SR; `identity` fills the patient and study modules (empty without it);
    `complete` is False while the job still scores (CompletionFlag PARTIAL)."""
    if not findings:
        raise ValueError(f"study {study_uid} has no scored image to report")
    evidence = [_evidence(study_uid, finding, identity or {}) for finding in findings]
    groups = [_group(job_id, number, finding) for number, finding in enumerate(findings, 1)]
    versions = dict.fromkeys((f.architecture, f.model_version) for f in findings)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=report_uid(job_id, study_uid, "device"),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=_model_name(findings[0].architecture),
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_RADIOGRAPH,
        imaging_measurements=groups,
    )
    report = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content[0],
        series_instance_uid=report_uid(job_id, study_uid, f"{purpose} series"),
        series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=report_uid(job_id, study_uid, purpose),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=complete,
        series_description="pneumoscan: pneumonia (AI result, not verified)",
        contributing_equipment=[
            hd.ContributingEquipment(
                manufacturer=MANUFACTURER,
                purpose_of_reference=PROCESSING_EQUIPMENT,
                manufacturer_model_name=_model_name(architecture),
                software_versions=version,
            )
            for architecture, version in versions
        ],
    )
    return report


def _model_name(architecture: str | None) -> str:
    return f"pneumoscan {architecture or 'model'}"


def _group(
    job_id: str, number: int, finding: Finding
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    present = finding.probability >= finding.threshold
    algorithm = hd.sr.AlgorithmIdentification(
        name=_model_name(finding.architecture),
        version=finding.model_version,
        parameters=[f"threshold={finding.threshold:.6g}"],
    )
    source = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=finding.sop_class_uid,
        referenced_sop_instance_uid=finding.sop_uid,
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=report_uid(job_id, finding.sop_uid, "tracking"),
            identifier=f"pneumonia, image {number}",
        ),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=PNEUMONIA, value=PRESENT if present else ABSENT)
        ],
        measurements=[
            hd.sr.Measurement(
                name=PROBABILITY,
                value=round(finding.probability, 6),
                unit=NO_UNITS,
                algorithm_id=algorithm,
            )
        ],
        source_images=[source],
    )


def _evidence(study_uid: str, finding: Finding, identity: Identity) -> Dataset:
    """What highdicom reads of a referenced image: its UIDs, and the patient and study
    attributes the report copies (empty when pneumoscan holds none)."""
    image = Dataset()
    image.SOPClassUID, image.SOPInstanceUID = finding.sop_class_uid, finding.sop_uid
    image.StudyInstanceUID, image.SeriesInstanceUID = study_uid, finding.series_uid
    for keyword in IDENTITY_KEYWORDS:
        setattr(image, keyword, identity.get(keyword) or "")
    return image
