"""The DICOM node against a real PACS (Orthanc): who may send, what is stored, a study
becoming a job, and its report sent back, also to a destination that is down for a while."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    Verification,
)
from sqlalchemy import select

from core.config import Settings
from core.db import Database
from core.models import Job, SourceKind
from tests.conftest import unavailable
from tests.dicoms import PATIENT_NAME, chest_like, dataset, real_study
from tests.pacs import Orthanc
from tests.stack import Stack
from tests.support import REPO, free_port, settings_env, wait_for
from worker.dicom_node import DicomNode

PEER = "ORTHANC"


def node_settings(settings: Settings, destination: str = "") -> Settings:
    return settings.model_copy(
        update={
            "dicom_port": free_port(),
            "dicom_host": "127.0.0.1",
            "dicom_peers": {PEER: "radiology"},
            "dicom_study_idle_seconds": 1.0,
            "dicom_destination": destination,
            "dicom_retry_seconds": 0.5,
            "delivery_poll_seconds": 0.3,
        }
    )


@contextmanager
def running(node: DicomNode) -> Iterator[DicomNode]:
    thread = threading.Thread(target=node.run, daemon=True)
    thread.start()
    wait_for(lambda: _listening(node.settings.dicom_port), 20, "the DICOM node to listen")
    try:
        yield node
    finally:
        node.stop()
        thread.join(20)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def dicom_jobs(db: Database) -> list[tuple[str, str | None]]:
    """(id, owner) of the node's jobs, oldest first."""
    with db.session() as session:
        query = select(Job.id, Job.owner).where(Job.source_kind == SourceKind.DICOM)
        return [
            (job_id, owner) for job_id, owner in session.execute(query.order_by(Job.created_at))
        ]


def test_only_listed_peers_and_radiographs_get_in(settings: Settings, pacs: Orthanc) -> None:
    configured = node_settings(settings)
    db = Database(configured.database_url)
    queued: list[str] = []
    with running(DicomNode(configured, db, queued.append)) as node:
        port = configured.dicom_port
        # The PACS is a listed peer: its C-ECHO is answered.
        pacs.add_modality("node-peers", "PNEUMOSCAN", port)
        assert pacs.echo("node-peers") == 200

        # Any other calling AE title is rejected at association.
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(Verification)
        assoc = stranger.associate("127.0.0.1", port, ae_title="PNEUMOSCAN")
        assert assoc.is_rejected

        # A listed peer may offer any storage class; only radiographs are stored.
        peer = AE(ae_title=PEER)
        peer.add_requested_context(SecondaryCaptureImageStorage)
        peer.add_requested_context(DigitalXRayImageStorageForPresentation)
        assoc = peer.associate("127.0.0.1", port, ae_title="PNEUMOSCAN")
        assert assoc.is_established
        capture = dataset(chest_like(), sop_class=SecondaryCaptureImageStorage)
        assert assoc.send_c_store(capture).Status == 0x0122  # SOP class not supported
        no_study = dataset(chest_like())
        del no_study.StudyInstanceUID
        assert assoc.send_c_store(no_study).Status == 0xA900  # does not match the SOP class
        assert assoc.send_c_store(dataset(chest_like())).Status == 0x0000
        assoc.release()

        # The one radiograph became a job of the peer's key name once the study was stable.
        wait_for(lambda: queued, 20, "the study to close")
        jobs = dicom_jobs(db)
        assert [owner for _, owner in jobs] == ["radiology"]
        assert queued == [jobs[0][0]]
        assert node.inbox.identity(jobs[0][0]) is None  # no destination: not even in memory
        assert not any(node.inbox.incoming.iterdir())


def test_a_study_closed_by_a_node_that_stopped_becomes_a_job_at_the_next_start(
    settings: Settings,
) -> None:
    configured = node_settings(settings)
    db = Database(configured.database_url)
    queued: list[str] = []
    first = DicomNode(configured, db, queued.append)
    instance = dataset(chest_like())
    first.inbox.store("radiology", PEER, instance.StudyInstanceUID, "1.2.3", b"DICM", {})
    wait_for(lambda: first.inbox.idle_studies(), 10, "the study to be idle")
    job_id = first.inbox.close(first.inbox.idle_studies()[0])
    assert job_id is not None
    assert not queued

    second = DicomNode(configured, db, queued.append)
    assert second.close_stable_studies() == 1
    assert queued == [job_id]
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.owner == "radiology"
    received = Path(configured.storage_dir) / "uploads" / job_id / "received"
    assert (received / "1.2.3.dcm").read_bytes() == b"DICM"


@pytest.mark.slow
def test_a_study_from_the_pacs_is_scored_and_its_report_reaches_a_destination_once_up(
    settings: Settings,
    pacs: Orthanc,
    baseline_model: Path,
    shared_data: Path,
    tmp_path: Path,
) -> None:
    later_port = free_port()  # the destination: nothing listens here yet
    configured = node_settings(settings, f"LATER@127.0.0.1:{later_port}")
    stack = Stack(configured, tmp_path)
    stack.start_worker()
    stack.import_model(baseline_model)
    study = real_study(shared_data)
    for instance in study:
        orthanc_study = pacs.upload(instance)["ParentStudy"]
    later: Orthanc | None = None
    try:
        with running(DicomNode(configured, stack.db, stack.queue.ingest)):
            pacs.add_modality("node-full", "PNEUMOSCAN", configured.dicom_port)
            sent = pacs.store("node-full", [orthanc_study])
            assert sent.status_code == 200, sent.text

            wait_for(lambda: dicom_jobs(stack.db), 30, "the study to become a job")
            job_id = dicom_jobs(stack.db)[0][0]
            job = stack.wait_finished(job_id)
            assert job["status"] == "completed", job
            assert job["scored"] == len(study), job

            # Nothing of the patient is kept: not in the stored copies, not in the database.
            for path in [*Path(configured.storage_dir).rglob("*"), Path(configured.home)]:
                if path.is_file():
                    assert PATIENT_NAME.encode() not in path.read_bytes(), path

            # The destination is down: each send fails and is tried again, later.
            def failed_twice() -> dict[str, Any] | None:
                reports = stack.job(job_id)["dicom_reports"]
                return reports[0] if reports[0]["attempts"] >= 2 else None

            report = wait_for(failed_twice, 60, "two failed sends")
            assert report["state"] == "pending"
            assert "no association" in report["last_status"]

            later = Orthanc(tmp_path / "later", free_port(), later_port, "LATER")
            # LATER is not a listed peer: the node refuses its association.
            later.add_modality("node", "PNEUMOSCAN", configured.dicom_port)
            assert later.echo("node") != 200
            wait_for(
                lambda: stack.job(job_id)["dicom_reports"][0]["state"] == "delivered",
                60,
                "the report delivered",
            )
            delivered = stack.job(job_id)["dicom_reports"][0]
            assert delivered["last_status"] == "C-STORE status 0x0000"
            metrics = stack.client.get("/metrics").get_data(as_text=True)
            assert 'pneumoscan_dicom_reports{state="delivered"} 1.0' in metrics

            sr = later.wait_for_reports(orthanc_study, 1)[0]
            results = stack.client.get(f"/v1/jobs/{job_id}/results").get_json()["items"]
            check_report(sr, study, results)
            assert str(sr.SOPInstanceUID) == delivered["report_uid"]
            assert sr.PatientName == PATIENT_NAME
            assert sr.PatientID == "P-1"
            assert sr.AccessionNumber == "A-1"
            check_with_dciodvfy(sr, tmp_path)

            # The API gives the same findings, with no patient in them.
            download = stack.client.get(f"/v1/jobs/{job_id}/results?format=dicom")
            assert download.status_code == 200
            assert download.mimetype == "application/zip"
            with zipfile.ZipFile(io.BytesIO(download.data)) as archive:
                (name,) = archive.namelist()
                copy = pydicom.dcmread(io.BytesIO(archive.read(name)))
            check_report(copy, study, results)
            assert copy.PatientName == ""
            assert copy.SOPInstanceUID != sr.SOPInstanceUID

            # An instance of the study sent after it closed opens a follow-up job.
            extra = dataset(chest_like(), StudyInstanceUID=study[0].StudyInstanceUID)
            extra.PatientID, extra.PatientName = "P-1", PATIENT_NAME
            added = pacs.upload(extra)["ID"]
            assert pacs.store("node-full", [added]).status_code == 200
            wait_for(lambda: len(dicom_jobs(stack.db)) == 2, 30, "the follow-up job")
            follow_up = dicom_jobs(stack.db)[1][0]
            assert stack.wait_finished(follow_up)["scored"] == 1
            assert len(later.wait_for_reports(orthanc_study, 2)) == 2
    finally:
        if later is not None:
            later.stop()
        stack.close()


def check_report(sr: Dataset, study: list[Dataset], results: list[dict[str, Any]]) -> None:
    """One qualitative evaluation per image, as the API scored it, each naming its image."""
    assert sr.SOPClassUID == hd.sr.Comprehensive3DSR.from_dataset(sr).SOPClassUID
    assert sr.StudyInstanceUID == study[0].StudyInstanceUID
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {str(instance.SOPInstanceUID) for instance in study}
    scored = {row["sop_uid"]: row for row in results}
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    assert len(groups) == len(study)
    for group in groups:
        (source,) = group.source_images
        row = scored[source.referenced_sop_instance_uid]
        (evaluation,) = group.get_qualitative_evaluations()
        present = evaluation.value.meaning == "Present"
        assert present == (row["label"] == "PNEUMONIA")
        (probability,) = group.get_measurements()
        assert probability.value == pytest.approx(row["probability"], abs=1e-6)
    ours = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "pneumoscan"]
    assert [e.SoftwareVersions for e in ours] == [results[0]["model_version"]]


def check_with_dciodvfy(sr: Dataset, tmp_path: Path) -> None:
    """dicom3tools' validator finds no error in the report (warnings are allowed)."""
    if shutil.which("dciodvfy") is None:
        unavailable("dciodvfy (dicom3tools) is not installed: apt-get install dicom3tools")
    path = tmp_path / "report.dcm"
    sr.save_as(path, enforce_file_format=True)
    checked = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
    assert errors == [], checked.stderr


@pytest.mark.slow
def test_a_node_restarted_before_delivery_asks_the_pacs_who_the_patient_is(
    settings: Settings,
    pacs: Orthanc,
    baseline_model: Path,
    shared_data: Path,
    tmp_path: Path,
) -> None:
    """The identity is held in memory only; a node that lost it gets it by C-FIND."""
    configured = node_settings(settings, f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}")
    stack = Stack(configured, tmp_path)
    stack.start_worker()  # and no model yet: the job waits for one
    study = real_study(shared_data, images=1, PatientName="Poe^Edgar", PatientID="P-9")
    for instance in study:
        orthanc_study = pacs.upload(instance)["ParentStudy"]
    try:
        with running(DicomNode(configured, stack.db, stack.queue.ingest)):
            pacs.add_modality("node-restart", "PNEUMOSCAN", configured.dicom_port)
            assert pacs.store("node-restart", [orthanc_study]).status_code == 200
            wait_for(lambda: dicom_jobs(stack.db), 30, "the study to become a job")
        job_id = dicom_jobs(stack.db)[0][0]
        stack.import_model(baseline_model)  # the node is gone, and what it held with it
        assert stack.wait_finished(job_id)["status"] == "completed"
        with running(DicomNode(configured, stack.db, stack.queue.ingest)):
            wait_for(
                lambda: stack.job(job_id)["dicom_reports"][0]["state"] == "delivered",
                60,
                "the report delivered by the new node",
            )
        (sr,) = pacs.wait_for_reports(orthanc_study, 1)
        assert sr.PatientName == "Poe^Edgar"
        assert sr.PatientID == "P-9"
        assert sr.AccessionNumber == "A-1"
    finally:
        stack.close()


def test_the_node_will_not_start_without_a_port_or_peers(settings: Settings) -> None:
    env = settings_env(settings)
    for extra, said in (
        ({}, "set PNEUMOSCAN_DICOM_PORT"),
        ({"PNEUMOSCAN_DICOM_PORT": str(free_port())}, "PNEUMOSCAN_DICOM_PEERS is empty"),
    ):
        started = subprocess.run(
            [sys.executable, "-m", "cli", "dicom-node"],
            env={**env, **extra},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode != 0
        assert said in started.stderr
