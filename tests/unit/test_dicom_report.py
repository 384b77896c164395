"""The study report (TID 1500 in a Comprehensive 3D SR): what it says of each image, the
identity it carries only when given one, UIDs stable across rebuilds, and a valid object."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.uid import generate_uid

from core.dicom_report import Finding, build_report
from tests.conftest import unavailable
from tests.dicoms import DX_CLASS

CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"


def findings(study_series: str) -> list[Finding]:
    return [
        Finding(DX_CLASS, generate_uid(), study_series, 0.91, 0.42, "v-2", "inception_resnet_v2"),
        Finding(CR_CLASS, generate_uid(), study_series, 0.10, 0.42, "v-2", "inception_resnet_v2"),
        Finding(DX_CLASS, generate_uid(), study_series, 0.42, 0.42, "v-1", "baseline_cnn"),
    ]


def test_each_image_gets_its_finding_at_its_threshold_and_its_source() -> None:
    study, found = generate_uid(), findings(generate_uid())
    report = build_report("job", study, found)
    groups = hd.sr.Comprehensive3DSR.from_dataset(report).content.get_image_measurement_groups()
    seen = []
    for group in groups:
        (source,) = group.source_images
        (evaluation,) = group.get_qualitative_evaluations()
        (probability,) = group.get_measurements()
        seen.append(
            (source.referenced_sop_instance_uid, evaluation.value.meaning, probability.value)
        )
    assert seen == [
        (found[0].sop_uid, "Present", 0.91),
        (found[1].sop_uid, "Absent", 0.10),
        (found[2].sop_uid, "Present", 0.42),  # at the threshold counts as present
    ]
    ours = [e for e in report.ContributingEquipmentSequence if e.Manufacturer == "pneumoscan"]
    assert [(e.ManufacturerModelName, e.SoftwareVersions) for e in ours] == [
        ("pneumoscan inception_resnet_v2", "v-2"),
        ("pneumoscan baseline_cnn", "v-1"),
    ]
    assert report.StudyInstanceUID == study
    assert report.CompletionFlag == "COMPLETE"
    assert report.VerificationFlag == "UNVERIFIED"


def test_identity_only_when_given_and_uids_stable_per_purpose() -> None:
    study, found = generate_uid(), findings(generate_uid())
    plain = build_report("job", study, found)
    assert plain.PatientName == ""
    assert plain.PatientID == ""
    sent = build_report("job", study, found, {"PatientName": "Doe^Jane", "PatientID": "P-1"}, "x")
    assert sent.PatientName == "Doe^Jane"
    assert sent.PatientID == "P-1"
    assert build_report("job", study, found).SOPInstanceUID == plain.SOPInstanceUID
    assert sent.SOPInstanceUID != plain.SOPInstanceUID
    assert build_report("other job", study, found).SOPInstanceUID != plain.SOPInstanceUID
    with pytest.raises(ValueError, match="no scored image"):
        build_report("job", study, [])


def test_dciodvfy_finds_no_error(tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        unavailable("dciodvfy (dicom3tools) is not installed: apt-get install dicom3tools")
    path = tmp_path / "report.dcm"
    build_report("job", generate_uid(), findings(generate_uid())).save_as(
        path, enforce_file_format=True
    )
    checked = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    assert "Comprehensive3DSR" in checked.stderr
    assert [line for line in checked.stderr.splitlines() if line.startswith("Error")] == []
