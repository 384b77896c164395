"""Every job's ingest ends: members it cannot handle become rejected entries with a reason,
an archive it cannot read fails the job once, with the reason, leaving nothing on disk, and an
ingest that keeps dying is stopped after a bounded number of starts. On SQLite and PostgreSQL
(which refuses NULs, over-long values and over-long index entries outright)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydicom.dataelem import DataElement
from sqlalchemy import select, update

from api import create_app
from core.config import Settings, load_settings
from core.db import Database
from core.ingest import ingest_job
from core.intake.growing_file import ArrivingWriter
from core.jobs import create_job
from core.migrate import upgrade
from core.models import Image, Job, RejectedEntry, SourceKind, utcnow
from core.storage import ARCHIVE_NAME, Storage
from core.sweep import jobs_to_ingest_again
from tests import hostile
from tests.conftest import unavailable
from tests.dicoms import chest_like, dataset, encode
from tests.images import jpeg_bytes
from tests.stack import Stack
from tests.support import REPO, api_client, settings_env, zip_bytes


class Ingest:
    """Submit through the API, ingest in this process with the plain function, look."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.client = api_client(self.app)
        self.db = Database(settings.database_url)
        self.storage = Storage(settings.storage_dir)

    def submit(self, data: bytes) -> str:
        response = self.client.post("/v1/jobs", data={"archive": (io.BytesIO(data), "study.zip")})
        assert response.status_code == 202, response.get_json()
        job_id: str = response.get_json()["id"]
        return job_id

    def run(self, job_id: str) -> Job:
        ingest_job(self.db, self.storage, self.settings, job_id)
        return self.job(job_id)

    def job(self, job_id: str) -> Job:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            session.expunge(job)
            return job

    def rejected(self, job_id: str) -> dict[str, str]:
        with self.db.session() as session:
            rows = session.execute(
                select(RejectedEntry.path, RejectedEntry.reason).where(
                    RejectedEntry.job_id == job_id
                )
            )
            return {path: reason for path, reason in rows}

    def files_left(self, job_id: str) -> list[str]:
        folder = self.storage.job_dir(job_id)
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def close(self) -> None:
        self.app.extensions["pneumoscan"].db.dispose()
        self.db.dispose()


@pytest.fixture
def ingest(backend_settings: Settings) -> Iterator[Ingest]:
    running = Ingest(backend_settings)
    yield running
    running.close()


def dicom_with(**elements: Any) -> bytes:
    return encode(dataset(chest_like(), bits=8, **elements))


def dicom_with_raw(tag: int, vr: str, value: object) -> bytes:
    ds = dataset(chest_like(), bits=8)
    ds[tag] = DataElement(tag, vr, value)
    return encode(ds)


def unknown_transfer_syntax() -> bytes:
    raw = bytearray(dicom_with())
    at = raw.find(b"1.2.840.10008.1.2.1\x00")
    raw[at : at + 20] = b"1.2.3.4.5.6.7.8.9.0\x00"
    return bytes(raw)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the malformed values we make
def test_members_that_cannot_be_handled_are_rejected_with_reasons_and_the_rest_is_recorded(
    ingest: Ingest,
) -> None:
    long_name = "deep/" + "n" * 3000 + ".jpeg"
    members = [
        ("good.jpeg", jpeg_bytes()),
        ("frames.dcm", dicom_with_raw(0x00280008, "LO", "many")),
        ("rows.dcm", dicom_with_raw(0x00280010, "US", [96, 3])),
        ("syntax.dcm", unknown_transfer_syntax()),
        ("nul.dcm", dicom_with(Modality="C\x00T")),
        ("uid.dcm", dicom_with(StudyInstanceUID="1." + "2" * 70)),
        ("inner.zip", hostile.not_utf8_name()),
        (long_name, jpeg_bytes()),
    ]
    job_id = ingest.submit(zip_bytes(members))
    job = ingest.run(job_id)
    assert (job.total, job.rejected) == (1, 7)
    assert job.status == "queued"  # no model yet: it waits, recorded
    assert job.waiting_for_model
    reasons = ingest.rejected(job_id)
    assert reasons["frames.dcm"] == "NumberOfFrames is not a number ('many')"
    assert reasons["rows.dcm"].startswith("Rows is not a number")
    assert reasons["syntax.dcm"].startswith("transfer syntax 1.2.3.4.5.6.7.8.9.0 is not a known")
    assert reasons["nul.dcm"] == "modality C\ufffdT is not a radiograph (CR, DX or DR)"
    assert reasons["uid.dcm"].startswith("StudyInstanceUID is 72 characters long")
    assert "a member name marked as UTF-8 is not UTF-8" in reasons["inner.zip"]
    shown_long = next(path for path in reasons if path.startswith("deep/"))
    assert reasons[shown_long] == "name longer than 2048 bytes"
    # Nothing of the upload stays but the one image it scores.
    with ingest.db.session() as session:
        location = session.scalar(select(Image.location).where(Image.job_id == job_id))
    assert ingest.files_left(job_id) == [Path(location).relative_to(f"uploads/{job_id}").as_posix()]


def test_an_archive_that_cannot_be_read_fails_the_job_once_and_leaves_nothing(
    ingest: Ingest,
) -> None:
    job_id = ingest.submit(hostile.not_utf8_name())
    job = ingest.run(job_id)
    assert job.status == "failed"
    assert "a member name marked as UTF-8 is not UTF-8" in (job.status_detail or "")
    assert not ingest.storage.job_dir(job_id).exists()
    # The sweep never sends it again, and a redelivered message changes nothing.
    with ingest.db.session() as session:
        assert job_id not in jobs_to_ingest_again(session, timedelta(0))
    again = ingest.run(job_id)
    assert (again.status, again.status_detail, again.ingest_attempts) == (
        "failed",
        job.status_detail,
        1,
    )


def test_an_ingest_started_too_often_without_finishing_fails_the_job(ingest: Ingest) -> None:
    job_id = ingest.submit(zip_bytes([("a.jpeg", jpeg_bytes())]))
    limit = ingest.settings.max_ingest_attempts
    # What a worker killed mid-ingest `limit` times leaves: a stale claim, `limit` starts.
    with ingest.db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(ingest_attempts=limit, ingest_started_at=utcnow() - timedelta(days=1))
        )
    job = ingest.run(job_id)
    assert job.status == "failed"
    assert (job.status_detail or "").startswith(f"ingest was started {limit} times")
    assert not ingest.storage.job_dir(job_id).exists()


UNPRIVILEGED = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def test_files_of_a_folder_job_that_cannot_be_read_are_rejected_with_the_reason(
    settings: Settings,
) -> None:
    """The ingest runs as an unprivileged user (root reads every file), on a folder holding a
    file it may not read, a link to nothing and a name that is not UTF-8."""
    shared = Path(tempfile.mkdtemp(prefix="pneumoscan-unprivileged-"))
    try:
        shared.chmod(0o777)
        own = load_settings(home=shared / "var", import_roots=[shared / "import"])
        upgrade(own.database_url)
        study = shared / "import" / "study"
        study.mkdir(parents=True)
        (study / "good.jpeg").write_bytes(jpeg_bytes())
        (study / "private.jpeg").write_bytes(jpeg_bytes())
        (study / "private.jpeg").chmod(0o000)
        (study / "gone.jpeg").symlink_to(study / "deleted.jpeg")
        (study / os.fsdecode(b"latin-\xe9.jpeg")).write_bytes(jpeg_bytes())
        app = create_app(own)
        response = api_client(app).post("/v1/jobs", json={"folder": str(study)})
        job_id = response.get_json()["id"]
        app.extensions["pneumoscan"].db.dispose()
        subprocess.run(["chmod", "-R", "a+rwX", str(shared / "var")], check=True)
        (study / "private.jpeg").chmod(0o000)
        script = (
            "import sys; from core.config import load_settings; from core.db import Database; "
            "from core.ingest import ingest_job; from core.storage import Storage; "
            "s = load_settings(); ingest_job(Database(s.database_url), "
            "Storage(s.storage_dir), s, sys.argv[1])"
        )
        subprocess.run(
            [*UNPRIVILEGED, sys.executable, "-c", script, job_id],
            env=settings_env(own),
            cwd=REPO,
            check=True,
            timeout=120,
        )
        db = Database(own.database_url)
        with db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            assert (job.total, job.rejected) == (1, 3)
            reasons = dict(session.execute(select(RejectedEntry.path, RejectedEntry.reason)).all())
        db.dispose()
        assert reasons["private.jpeg"] == "cannot be read: Permission denied"
        assert reasons["gone.jpeg"] == "symbolic link (only regular files are read)"
        assert reasons["latin-\ufffd.jpeg"] == "file name is not valid UTF-8"
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=False)


def test_an_ingest_the_database_keeps_refusing_ends_after_the_attempt_limit(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """A real worker, and PostgreSQL refusing every image row as it refused an over-long
    index entry (SQLSTATE 54000, an OperationalError the task retries on): the job fails
    after `max_ingest_attempts` starts instead of being retried for ever."""
    (tmp_path / "import").mkdir()
    settings = load_settings(
        home=tmp_path / "var",
        database_url=postgres_url,
        broker_url=redis_url,
        broker_prefix=f"pneumoscan-test-{os.getpid()}-refusing:",
        import_roots=[tmp_path / "import"],
        max_ingest_attempts=2,
    )
    upgrade(settings.database_url)
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
            "'index row size exceeds maximum' USING ERRCODE = '54000'; END $$ LANGUAGE plpgsql"
        )
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON images FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    stack = Stack(settings, tmp_path)
    try:
        stack.start_worker()
        job = stack.wait_finished(stack.submit_zip(zip_bytes([("a.jpeg", jpeg_bytes())]))["id"])
        assert job["status"] == "failed"
        assert job["status_detail"].startswith("ingest was started 2 times")
        assert not Storage(settings.storage_dir).job_dir(job["id"]).exists()
    finally:
        stack.close()


@pytest.fixture
def small_storage(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs as the storage folder: a real full disk, not a mocked write."""
    folder = tmp_path / "storage"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs (root needed): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_disk_that_fills_up_while_expanding_fails_the_job_with_the_reason(
    tmp_path: Path, small_storage: Path
) -> None:
    """Not "corrupt member" and a job completed with images missing: the job fails, says the
    storage is full, and gives the room back; the next job that fits is scored."""
    settings = load_settings(home=tmp_path / "var", storage_dir=small_storage)
    upgrade(settings.database_url)
    ingest = Ingest(settings)
    try:
        noise = [(f"{i}.dcm", os.urandom(1100 * 1024)) for i in range(2)]  # copied on expansion
        job = ingest.run(ingest.submit(zip_bytes([("a.jpeg", jpeg_bytes()), *noise])))
        assert job.status == "failed"
        assert "storage folder could not take the upload's files (No space left on device)" in (
            job.status_detail or ""
        )
        assert not ingest.storage.job_dir(job.id).exists()
        with ingest.db.session() as session:
            assert session.scalars(select(Image).where(Image.job_id == job.id)).all() == []
        fits = ingest.run(ingest.submit(zip_bytes([("b.jpeg", jpeg_bytes())])))
        assert (fits.status, fits.total) == ("queued", 1)  # queued: this test imports no model
    finally:
        ingest.close()


def test_an_ingest_that_gives_way_to_a_slow_upload_goes_on_where_it_stopped(
    ingest: Ingest,
) -> None:
    """The plain function, twice, on both backends: the first start reads what has arrived,
    records it and gives way (no start counted, the claim kept fresh so the sweep sends
    nothing); the second goes on from there once the rest is in: every image once."""
    settings = ingest.settings.model_copy(update={"early_ingest_wait_seconds": 0.2})
    members = [(f"study/{i:02d}.jpeg", jpeg_bytes()) for i in range(6)]
    data = zip_bytes(members)
    half = data.index(b"PK\x03\x04", data.index(b"study/03.jpeg") - 40)  # before member 3
    job_id = "a" * 32
    with ingest.db.session() as session:
        create_job(session, SourceKind.ARCHIVE, "study.zip", job_id, owner="slow")
    with ArrivingWriter(ingest.storage.job_dir(job_id) / ARCHIVE_NAME) as upload:
        upload.write(data[: half + 10])  # three members whole, and the start of a fourth
        first = ingest_job(ingest.db, ingest.storage, settings, job_id)
        assert first.deferred
        job = ingest.job(job_id)
        assert (job.total, job.ingest_attempts, job.ingest_resume_at) == (None, 0, half)
        with ingest.db.session() as session:
            session.execute(  # an old job: only the fresh claim keeps the sweep away
                update(Job).where(Job.id == job_id).values(created_at=utcnow() - timedelta(days=1))
            )
            assert job_id not in jobs_to_ingest_again(session, timedelta(minutes=10))
            recorded = session.scalars(select(Image.relative_path).where(Image.job_id == job_id))
            assert sorted(recorded) == [name for name, _ in members[:3]]
        upload.write(data[half + 10 :])
    second = ingest_job(ingest.db, ingest.storage, settings, job_id)
    assert not second.deferred
    job = ingest.job(job_id)
    assert (job.total, job.ingest_attempts, job.ingest_resume_at) == (6, 1, None)
    with ingest.db.session() as session:
        rows = session.execute(
            select(Image.relative_path, Image.sha256).where(Image.job_id == job_id)
        ).all()
    assert sorted(rows) == sorted((name, sha256(body).hexdigest()) for name, body in members)
    # The upload is gone, its kept copy blanked around the images (the marker removed).
    assert ingest.files_left(job_id) == ["files/upload.zip"]
