"""Folder jobs stay inside their import roots: checked at submit and again at ingest, read
without following links, never deleting anything of the import volume; a root may be open to
named keys only."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select

from api import create_app
from core.config import Settings, load_settings
from core.db import Database
from core.ingest import ingest_job
from core.migrate import upgrade
from core.models import Image, Job, RejectedEntry
from core.storage import Storage
from tests.images import jpeg_bytes
from tests.support import api_client


def test_a_folder_swapped_for_a_link_between_submit_and_ingest_is_not_read(
    settings: Settings, tmp_path: Path
) -> None:
    app = create_app(settings)
    client = api_client(app)
    storage, db = Storage(settings.storage_dir), Database(settings.database_url)
    # Another job's images, in storage, are what the link points at.
    other = storage.job_files_dir("other") / "study"
    other.mkdir(parents=True)
    (other / "000001").write_bytes(b"another job's file, not an image")
    study = settings.import_roots[0] / "study"
    study.mkdir()
    (study / "a.jpeg").write_bytes(jpeg_bytes())
    job_id = client.post("/v1/jobs", json={"folder": str(study)}).get_json()["id"]
    shutil.rmtree(study)
    study.symlink_to(other)
    ingest_job(db, storage, settings, job_id)
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == "failed"
        assert "replaced by a link or moved" in (job.status_detail or "")
    assert (other / "000001").exists()  # refused, so nothing of it was deleted either
    app.extensions["pneumoscan"].db.dispose()
    db.dispose()


def test_files_of_an_import_folder_are_read_in_place_and_never_deleted(
    settings: Settings,
) -> None:
    app = create_app(settings)
    study = settings.import_roots[0] / "study"
    study.mkdir()
    (study / "a.jpeg").write_bytes(jpeg_bytes())
    (study / "notes.txt").write_text("not an image")
    job_id = api_client(app).post("/v1/jobs", json={"folder": str(study)}).get_json()["id"]
    db = Database(settings.database_url)
    ingest_job(db, Storage(settings.storage_dir), settings, job_id)
    with db.session() as session:
        assert session.scalars(select(Image.location)).all() == [str(study / "a.jpeg")]
        assert session.scalars(select(RejectedEntry.path)).all() == ["notes.txt"]
    assert sorted(p.name for p in study.iterdir()) == ["a.jpeg", "notes.txt"]
    app.extensions["pneumoscan"].db.dispose()
    db.dispose()


def test_an_import_root_open_to_named_keys_refuses_other_names_but_not_admins(
    tmp_path: Path,
) -> None:
    shared, private = tmp_path / "shared", tmp_path / "private"
    for root in (shared, private):
        (root / "study").mkdir(parents=True)
        (root / "study" / "a.jpeg").write_bytes(jpeg_bytes())
    settings = load_settings(
        home=tmp_path / "var", import_roots=f"{shared},{private}=radiology-a+radiology-b"
    )
    upgrade(settings.database_url)
    app = create_app(settings)

    def submit(folder: Path, name: str, scope: str = "submit") -> int:
        client = api_client(app, scope=scope, name=name)
        response = client.post("/v1/jobs", json={"folder": str(folder / "study")})
        return int(response.status_code)

    assert submit(private, "radiology-b") == 202
    assert submit(private, "radiology-c") == 403
    assert submit(shared, "radiology-c") == 202
    assert submit(private, "it-department", scope="admin") == 202
    app.extensions["pneumoscan"].db.dispose()
