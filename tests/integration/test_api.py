"""The HTTP API on the embedded defaults: validation, errors as JSON, the OpenAPI document."""

import csv
import io
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from api import create_app
from core.config import Settings, load_settings
from core.db import Database
from core.ingest import ingest_job
from core.migrate import upgrade
from core.models import Image, RejectedEntry
from core.storage import Storage
from tests.images import jpeg_bytes
from tests.support import REPO, api_client, zip_bytes


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    app = create_app(settings)
    yield api_client(app)
    app.extensions["pneumoscan"].db.dispose()


def error_of(response) -> dict:  # type: ignore[no-untyped-def]
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


def test_archive_upload_is_queued_with_a_location(client: FlaskClient, settings: Settings) -> None:
    archive = zip_bytes([("a/1.jpeg", jpeg_bytes())])
    response = client.post("/v1/jobs", data={"archive": (io.BytesIO(archive), "s.zip")})
    assert response.status_code == 202
    job = response.get_json()
    assert job["status"] == "queued"
    assert job["total"] is None
    assert job["progress"] == 0
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert (
        Storage(settings.storage_dir).job_dir(job["id"]) / "archive.zip"
    ).read_bytes() == archive
    assert client.get(response.headers["Location"]).get_json()["id"] == job["id"]


def test_a_zip_sent_as_the_whole_body_is_queued(client: FlaskClient, settings: Settings) -> None:
    archive = zip_bytes([("a/1.jpeg", jpeg_bytes())])
    response = client.post(
        "/v1/jobs",
        data=archive,
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": 'attachment; filename="s1.zip"',
        },
    )
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert (job["source_kind"], job["source_name"]) == ("archive", "s1.zip")
    assert (
        Storage(settings.storage_dir).job_dir(job["id"]) / "archive.zip"
    ).read_bytes() == archive
    for body, message in ((b"", "empty"), (b"%PDF-1.4 not a zip", "not a zip")):
        refused = client.post("/v1/jobs", data=body, headers={"Content-Type": "application/zip"})
        assert refused.status_code == 400
        assert message in error_of(refused)["message"]


def test_multi_file_upload_keeps_relative_paths(client: FlaskClient, settings: Settings) -> None:
    files = [
        (io.BytesIO(jpeg_bytes()), "study-1/frontal.jpeg"),
        (io.BytesIO(jpeg_bytes()), "study-2/frontal.jpeg"),
        (io.BytesIO(b"notes"), "study-2/notes.txt"),
    ]
    response = client.post("/v1/jobs", data={"images": files})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    db = Database(settings.database_url)
    ingest_job(db, Storage(settings.storage_dir), settings, job_id)
    with db.session() as session:
        paths = session.scalars(select(Image.relative_path).order_by(Image.id)).all()
        rejected = session.scalars(select(RejectedEntry.path)).all()
    assert paths == ["study-1/frontal.jpeg", "study-2/frontal.jpeg"]
    assert rejected == ["study-2/notes.txt"]


def test_folder_inside_an_import_root_is_accepted(client: FlaskClient, settings: Settings) -> None:
    study = settings.import_roots[0] / "study"
    study.mkdir()
    (study / "1.jpeg").write_bytes(jpeg_bytes())
    response = client.post("/v1/jobs", json={"folder": str(study)})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["source_kind"] == "folder"


@pytest.mark.parametrize("where", ["outside", "escaping link", "dot-dot"])
def test_folder_outside_the_import_roots_is_refused(
    client: FlaskClient, settings: Settings, tmp_path: Path, where: str
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    root = settings.import_roots[0]
    folder = {
        "outside": outside,
        "escaping link": root / "link",
        "dot-dot": root / ".." / "elsewhere",
    }[where]
    if where == "escaping link":
        folder.symlink_to(outside)
    response = client.post("/v1/jobs", json={"folder": str(folder)})
    assert response.status_code == 403
    assert error_of(response)["code"] == "folder_not_allowed"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "bad_request"),
        ({"json": {"path": "/x"}}, 400, "validation_error"),
        ({"json": ["folder"]}, 400, "validation_error"),
        ({"data": "folder=/x", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": {"other": "x"}, "content_type": "multipart/form-data"}, 400, "validation_error"),
        ({}, 415, "unsupported_media_type"),
        ({"data": {"archive": (io.BytesIO(b"plain text"), "s.zip")}}, 400, "invalid_upload"),
        ({"data": {"images": [(io.BytesIO(b"x"), "../../etc/passwd")]}}, 400, "invalid_upload"),
    ],
)
def test_bad_submissions_get_a_json_error(
    client: FlaskClient, settings: Settings, kwargs: dict, status: int, code: str
) -> None:
    response = client.post("/v1/jobs", **kwargs)
    assert response.status_code == status
    assert error_of(response)["code"] == code
    uploads = Storage(settings.storage_dir).root / "uploads"
    leftovers = [p for p in uploads.glob("*") if p.name != ".incoming"] if uploads.exists() else []
    assert leftovers == []  # nothing half-stored


def test_upload_over_the_limit_is_refused_with_413(tmp_path: Path) -> None:
    small = load_settings(home=tmp_path / "var", max_upload_mb=1)
    upgrade(small.database_url)
    client = api_client(create_app(small))
    archive = zip_bytes([("big.bin", bytes(2 * 1024 * 1024))])
    response = client.post("/v1/jobs", data={"archive": (io.BytesIO(archive), "s.zip")})
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"
    assert "larger than the limit of 1 MB" in error_of(response)["message"]


def test_a_json_body_over_one_mebibyte_is_refused_before_it_is_read(
    client: FlaskClient, settings: Settings
) -> None:
    """The upload limit (2 GB by default) is for uploads; a folder job's JSON is tiny."""
    folder = str(settings.import_roots[0]) if settings.import_roots else "/srv/import"
    body = '{"folder": "' + folder + '", "padding": "' + "x" * (1024 * 1024) + '"}'
    response = client.post("/v1/jobs", data=body, content_type="application/json")
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"
    assert "at most 1024 KiB" in error_of(response)["message"]


def test_a_multipart_request_with_more_files_than_allowed_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    settings = load_settings(home=tmp_path / "var", max_upload_files=5)
    upgrade(settings.database_url)
    client = api_client(create_app(settings))
    parts = [(io.BytesIO(jpeg_bytes()), f"{i}.jpeg") for i in range(6)]
    response = client.post("/v1/jobs", data={"images": parts})
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_many_files"
    assert "more than 5 files in one request" in error_of(response)["message"]
    uploads = Storage(settings.storage_dir).root / "uploads"
    assert [p for p in uploads.rglob("*") if p.is_file()] == []
    five = [(io.BytesIO(jpeg_bytes()), f"{i}.jpeg") for i in range(5)]
    assert client.post("/v1/jobs", data={"images": five}).status_code == 202


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/v1/jobs/nope", 404),
        ("/v1/jobs/nope/results", 404),
        ("/v1/jobs/nope/results?format=csv", 404),
        ("/v1/jobs?page=0", 400),
        ("/v1/jobs?per_page=abc", 400),
        ("/v1/jobs?status=sleeping", 400),
        ("/v1/no-such-endpoint", 404),
    ],
)
def test_unknown_ids_and_bad_parameters_get_json_errors(
    client: FlaskClient, url: str, status: int
) -> None:
    response = client.get(url)
    assert response.status_code == status
    error_of(response)


def test_cancel_stops_a_job_once(client: FlaskClient) -> None:
    archive = zip_bytes([("1.jpeg", jpeg_bytes())])
    job_id = client.post("/v1/jobs", data={"archive": (io.BytesIO(archive), "s.zip")}).get_json()[
        "id"
    ]
    first = client.post(f"/v1/jobs/{job_id}/cancel")
    assert first.status_code == 202
    assert first.get_json()["status"] == "cancelled"
    second = client.post(f"/v1/jobs/{job_id}/cancel")
    assert second.status_code == 409
    assert error_of(second)["code"] == "job_finished"


def test_jobs_list_is_paged_newest_first(client: FlaskClient) -> None:
    ids = [
        client.post(
            "/v1/jobs",
            data={"archive": (io.BytesIO(zip_bytes([("1.jpeg", jpeg_bytes())])), "s.zip")},
        ).get_json()["id"]
        for _ in range(3)
    ]
    page = client.get("/v1/jobs?per_page=2").get_json()
    assert page["pagination"] == {"page": 1, "per_page": 2, "total": 3, "pages": 2}
    assert [job["id"] for job in page["items"]] == ids[::-1][:2]


def test_openapi_document_describes_both_submission_bodies(client: FlaskClient) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. apispec's "schema added twice"
        spec = client.get("/openapi.json").get_json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data", "application/zip"}
    upload = spec["components"]["schemas"]["UploadJobIn"]["properties"]
    assert upload["archive"]["format"] == "binary"
    assert spec["components"]["schemas"]["FolderJobIn"]["required"] == ["folder"]
    assert "/v1/jobs/{job_id}/results" in spec["paths"]


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert {check["name"]: check["ok"] for check in ready.get_json()["checks"]} == {
        "database": True,
        "broker": True,
    }


def test_readiness_reports_an_unreachable_database(tmp_path: Path) -> None:
    broken = load_settings(
        home=tmp_path / "var",
        database_url="postgresql+psycopg://nobody:pw-secret@127.0.0.1:1/none",
    )
    response = create_app(broken).test_client().get("/readyz")
    assert response.status_code == 503
    checks = {check["name"]: check for check in response.get_json()["checks"]}
    assert not checks["database"]["ok"]
    assert checks["broker"]["ok"]
    # Open to anyone: it names the dependency, not its host, user or the driver's message.
    assert checks["database"]["detail"] == "database unreachable (OperationalError)"
    for secret in ("127.0.0.1", "nobody", "pw-secret", "none"):
        assert secret not in response.get_data(as_text=True)


def test_importing_the_api_and_tasks_does_not_import_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys; from api import create_app; import worker.tasks;"
        f"from core.config import load_settings; create_app(load_settings(home={str(tmp_path)!r}));"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')];"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_csv_cells_that_a_spreadsheet_would_run_as_formulas_are_written_as_text(
    client: FlaskClient, settings: Settings
) -> None:
    names = ["=HYPERLINK(evil).jpeg", "+1.jpeg", "-2.jpeg", "@SUM(A1).jpeg", "plain.jpeg"]
    archive = zip_bytes([(name, jpeg_bytes()) for name in names])
    response = client.post("/v1/jobs", data={"archive": (io.BytesIO(archive), "s.zip")})
    job_id = response.get_json()["id"]
    db = Database(settings.database_url)
    ingest_job(db, Storage(settings.storage_dir), settings, job_id)
    db.dispose()
    text = client.get(f"/v1/jobs/{job_id}/results?format=csv").get_data(as_text=True)
    paths = [row["path"] for row in csv.DictReader(io.StringIO(text))]
    assert sorted(paths) == sorted(
        ["'=HYPERLINK(evil).jpeg", "'+1.jpeg", "'-2.jpeg", "'@SUM(A1).jpeg", "plain.jpeg"]
    )
    # JSON is data, not a spreadsheet: the names stay as they are there.
    items = client.get(f"/v1/jobs/{job_id}/results").get_json()["items"]
    assert sorted(item["path"] for item in items) == sorted(names)


def test_the_docs_page_loads_every_asset_from_the_api_itself(client: FlaskClient) -> None:
    page = client.get("/docs").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(assets) >= 3  # the stylesheet, the bundle, the preset (and the icon)
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?(?:https?:)?//""", page)
    for asset in assets:
        assert asset.startswith("/"), asset
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.get_data()) > 100, asset


def test_rejected_entries_come_in_pages(client: FlaskClient, settings: Settings) -> None:
    names = [f"notes-{i:02}.txt" for i in range(7)]
    archive = zip_bytes([(name, b"not an image") for name in names])
    job_id = client.post("/v1/jobs", data={"archive": (io.BytesIO(archive), "s.zip")}).get_json()[
        "id"
    ]
    ingest_job(Database(settings.database_url), Storage(settings.storage_dir), settings, job_id)
    pages = [
        client.get(f"/v1/jobs/{job_id}/rejected?per_page=3&page={page}").get_json()
        for page in (1, 2, 3)
    ]
    assert [len(page["items"]) for page in pages] == [3, 3, 1]
    assert [item["path"] for page in pages for item in page["items"]] == names
    assert pages[0]["pagination"] == {"page": 1, "per_page": 3, "total": 7, "pages": 3}
    assert client.get(f"/v1/jobs/{job_id}/rejected?per_page=5001").status_code == 400
