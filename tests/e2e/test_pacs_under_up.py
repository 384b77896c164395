"""A hospital's loop under `pneumoscan up`: the PACS (Orthanc) pushes a study of real X-rays
to the DICOM node, the finding comes back into the same study as an SR, and the peer's key
name's default callback is POSTed by beat's schedule."""

import json
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pytest

from core.callbacks import SIGNATURE_HEADER, verify
from tests.dicoms import real_study
from tests.e2e.conftest import Service, free_port, pneumoscan
from tests.pacs import Orthanc
from tests.receiver import Receiver
from tests.support import wait_for


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver(failures=0)
    yield running
    running.close()


@pytest.fixture
def extra_env(pacs: Orthanc) -> dict[str, str]:
    return {
        "PNEUMOSCAN_DICOM_PORT": str(free_port()),
        "PNEUMOSCAN_DICOM_PEERS": f"{pacs.ae_title}=radiology",
        "PNEUMOSCAN_DICOM_DESTINATION": f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}",
        "PNEUMOSCAN_DICOM_STUDY_IDLE_SECONDS": "2",
        "PNEUMOSCAN_DELIVERY_POLL_SECONDS": "1",
    }


@pytest.mark.slow
def test_a_study_pushed_by_the_pacs_comes_back_into_it_as_a_report(
    service: Service,
    pacs: Orthanc,
    receiver: Receiver,
    baseline_model: Path,
    shared_data: Path,
) -> None:
    env, _, log_path = service
    callback = pneumoscan(env, "keys", "callback", "--name", "radiology", "--url", receiver.url)
    assert callback.returncode == 0, callback.stderr
    secret = callback.stdout.strip()
    imported = pneumoscan(env, "models", "import", str(baseline_model), "--activate")
    assert imported.returncode == 0, imported.stderr

    study = real_study(shared_data, images=2, PatientName="Roe^Richard", PatientID="P-7")
    for instance in study:
        orthanc_study = pacs.upload(instance)["ParentStudy"]
    pacs.add_modality("up-loop", "PNEUMOSCAN", int(env["PNEUMOSCAN_DICOM_PORT"]))
    sent = pacs.store("up-loop", [orthanc_study])
    assert sent.status_code == 200, sent.text + log_path.read_text()[-3000:]

    (sr,) = pacs.wait_for_reports(orthanc_study, 1, timeout=240)
    assert sr.PatientName == "Roe^Richard"
    assert sr.PatientID == "P-7"
    assert sr.StudyInstanceUID == study[0].StudyInstanceUID
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    assert {g.source_images[0].referenced_sop_instance_uid for g in groups} == {
        str(instance.SOPInstanceUID) for instance in study
    }

    wait_for(lambda: receiver.received, 60, "the callback POSTed by beat's schedule")
    headers, body = receiver.received[0]
    assert verify(secret, headers[SIGNATURE_HEADER], body)
    summary = json.loads(body)["job"]
    assert summary["status"] == "completed"
    assert summary["source_kind"] == "dicom"
    assert summary["scored"] == len(study)
