"""DICOM studies through the API and a real worker: scored, refused with reasons, UIDs kept,
no patient name or birth date left on disk."""

import csv
import io
from pathlib import Path

from pydicom.encaps import encapsulate
from pydicom.uid import UID, RLELossless
from sqlalchemy import select

from core.config import Settings
from core.models import Image
from core.storage import Storage, sha256_of
from tests.dicoms import (
    BIRTH_DATE,
    PATIENT_NAME,
    chest_like,
    dataset,
    encode,
    identified,
    structured_report,
)
from tests.images import jpeg_bytes
from tests.stack import Stack
from tests.support import zip_bytes


def study(shared_data: Path) -> tuple[list[tuple[str, bytes]], str]:
    compressed = dataset(chest_like(), bits=12)
    compressed.compress(RLELossless)
    undecodable = dataset(chest_like(), bits=8)
    undecodable.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
    undecodable.PixelData = encapsulate([b"\x00\x00\x01\xb3 not really mpeg"])
    truncated = encode(dataset(chest_like(), bits=16))
    members = [
        ("real/dx.dcm", (shared_data / "dicom" / "nih_cxr14_DX_1024.dcm").read_bytes()),
        ("real/cr-acr-nema", (shared_data / "dicom" / "CR-MONO1-10-chest.dcm").read_bytes()),
        ("made/rle.dcm", encode(compressed)),
        ("made/acr-nema.img", encode(dataset(chest_like()), acr_nema=True)),
        ("made/lateral.dcm", encode(dataset(chest_like(), view="LL"))),
        ("made/report.dcm", structured_report()),
        ("made/cine.dcm", encode(dataset(chest_like(), frames=4))),
        ("made/truncated.dcm", truncated[: len(truncated) - 4000]),
        ("made/mpeg2.dcm", encode(undecodable)),
        ("photo.jpeg", jpeg_bytes()),
    ]
    return members, str(compressed.StudyInstanceUID)


def test_a_dicom_study_is_scored_refused_and_kept_without_patient_identity(
    settings: Settings, tmp_path: Path, shared_data: Path, baseline_model: Path
) -> None:
    stack = Stack(settings, tmp_path)
    try:
        stack.import_model(baseline_model)
        stack.start_worker()
        members, rle_study = study(shared_data)
        job = stack.wait_finished(stack.submit_zip(zip_bytes(members))["id"])
        assert (job["status"], job["total"], job["rejected"]) == ("completed", 7, 3)
        rejected = {
            r["path"]: r["reason"]
            for r in stack.client.get(f"/v1/jobs/{job['id']}/rejected").get_json()["items"]
        }
        assert rejected["made/lateral.dcm"].startswith("view position LL is not frontal")
        assert rejected["made/report.dcm"].startswith("no pixel data (modality SR")
        assert rejected["made/cine.dcm"].startswith("multi-frame object (4 frames)")

        results = {r["path"]: r for r in stack.results(job["id"])}
        for path in (
            "real/dx.dcm",
            "real/cr-acr-nema",
            "made/rle.dcm",
            "made/acr-nema.img",
            "photo.jpeg",
        ):
            assert results[path]["probability"] is not None, results[path]
        assert "cannot decode transfer syntax MPEG2" in results["made/mpeg2.dcm"]["error"]
        assert results["made/truncated.dcm"]["error"]
        cr = results["real/cr-acr-nema"]
        assert (cr["modality"], cr["body_part"], cr["view_position"]) == ("CR", "CHEST", "PA")
        assert cr["study_uid"] == "1.2.392.200036.9125.0.199302241758.16"
        assert cr["sop_uid"]
        assert results["photo.jpeg"]["study_uid"] is None

        one_study = stack.client.get(
            f"/v1/jobs/{job['id']}/results?study_uid={rle_study}"
        ).get_json()
        assert [r["path"] for r in one_study["items"]] == ["made/rle.dcm"]
        assert one_study["pagination"]["total"] == 1
        csv_text = stack.client.get(f"/v1/jobs/{job['id']}/results?format=csv").get_data(
            as_text=True
        )
        rows = list(csv.DictReader(io.StringIO(csv_text)))
        assert {
            "study_uid",
            "series_uid",
            "sop_uid",
            "modality",
            "body_part",
            "view_position",
        } <= set(rows[0])
        assert next(r for r in rows if r["path"] == "made/rle.dcm")["study_uid"] == rle_study

        # The stored hash is of the kept, de-identified file, not of the uploaded bytes.
        storage = Storage(settings.storage_dir)
        with stack.db.session() as session:
            for image in session.scalars(select(Image).where(Image.job_id == job["id"])):
                assert image.sha256 == sha256_of(storage.root / image.location), image.relative_path

        # No name or birth date anywhere on pneumoscan's disks: files, archive, database.
        for path in settings.home.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in (PATIENT_NAME, BIRTH_DATE, "Covid0000"):
                    assert secret.encode() not in data, (secret, path)
    finally:
        stack.close()


def named(name: str, **elements: object) -> bytes:
    """A DICOM object naming its patient `name` everywhere an export would."""
    return encode(identified(dataset(chest_like(), bits=12, **elements), name))


def jpeg_preamble(name: str) -> bytes:
    ds = identified(dataset(chest_like(), bits=12), name)
    ds.preamble = (b"\xff\xd8\xff\xe0" + name.encode()).ljust(128, b"\0")
    return encode(ds)


def every_kind_of_input(name: str) -> list[tuple[str, bytes]]:
    """The patient's name in a scored DICOM, one sniffable as a JPEG, a refused one, a text
    file, operating-system litter and hidden folders, and a nested zip."""
    return [
        ("scored.dcm", named(name)),
        ("preamble.jpeg", jpeg_preamble(name)),
        ("lateral.dcm", named(name, ViewPosition="LL")),
        ("notes.txt", f"{name}, {BIRTH_DATE}".encode()),
        ("__MACOSX/._scored.dcm", named(name)),
        (".hidden/scored.dcm", named(name)),
        ("nested.zip", zip_bytes([("inner.dcm", named(name)), ("inner.txt", name.encode())])),
        ("photo.jpeg", jpeg_bytes()),
    ]


def test_no_patient_name_stays_on_disk_from_any_kind_of_input(
    settings: Settings, tmp_path: Path, baseline_model: Path
) -> None:
    """Each kind of submission carries a name of its own; once every job has ended, no file
    under the storage folder holds any of them (the database keeps none either)."""
    stack = Stack(settings, tmp_path)
    try:
        stack.import_model(baseline_model)
        stack.start_worker()
        jobs: dict[str, str] = {}
        jobs["Archive^Multipart"] = stack.submit_zip(
            zip_bytes(every_kind_of_input("Archive^Multipart"))
        )["id"]
        raw = stack.client.post(
            "/v1/jobs",
            data=zip_bytes(every_kind_of_input("Archive^Raw")),
            content_type="application/zip",
        )
        jobs["Archive^Raw"] = raw.get_json()["id"]
        parts = [(io.BytesIO(d), path) for path, d in every_kind_of_input("Parts^Files")]
        parts.append((io.BytesIO(zip_bytes(every_kind_of_input("Parts^Zip"))), "part.zip"))
        sent = stack.client.post("/v1/jobs", data={"images": parts})
        jobs["Parts^Files"] = sent.get_json()["id"]
        folder = settings.import_roots[0] / "study"
        folder.mkdir()
        (folder / "in-place.dcm").write_bytes(named("Folder^InPlace"))
        (folder / "bundle.zip").write_bytes(zip_bytes(every_kind_of_input("Folder^Zip")))
        jobs["Folder^Zip"] = stack.client.post("/v1/jobs", json={"folder": str(folder)}).get_json()[
            "id"
        ]
        for job_id in jobs.values():
            job = stack.wait_finished(job_id)
            assert job["status"] == "completed", job
        counts = {name: stack.job(job_id)["total"] for name, job_id in jobs.items()}
        # scored.dcm, preamble.jpeg, photo.jpeg and nested.zip's inner.dcm of each input; a
        # folder's zip is already one level down, so its nested.zip is refused, and the
        # folder's own in-place.dcm is scored.
        assert counts == {
            "Archive^Multipart": 4,
            "Archive^Raw": 4,
            "Parts^Files": 8,
            "Folder^Zip": 4,
        }

        names = [*jobs, "Parts^Zip", "Folder^InPlace"]
        for path in settings.home.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for name in names:
                    assert name.encode() not in data, (name, path)
        # The import volume is read, never written: the folder's own file still names its patient.
        assert b"Folder^InPlace" in (folder / "in-place.dcm").read_bytes()
    finally:
        stack.close()
