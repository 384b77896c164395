"""A broker that cannot be reached: one rule, 503 `queue_unavailable`, for every message the
API sends, and nothing left behind that holds a lock or waits for a message never sent."""

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api import create_app
from core import registry
from core.config import Settings
from core.models import ModelStatus
from core.storage import Storage
from tests.images import jpeg_bytes
from tests.support import api_client, zip_bytes

# Nothing listens on port 1: every publish fails after kombu's few quick retries.
NO_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture
def unreachable(settings: Settings, tmp_path: Path) -> Settings:
    reference = tmp_path / "reference"
    for name in ("NORMAL", "PNEUMONIA"):
        (reference / name).mkdir(parents=True)
    return settings.model_copy(update={"broker_url": NO_BROKER, "data_dir": reference})


@pytest.fixture
def client(unreachable: Settings) -> Iterator[FlaskClient]:
    app = create_app(unreachable)
    yield api_client(app)
    app.extensions["pneumoscan"].db.dispose()


def assert_queue_unavailable(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"]["code"] == "queue_unavailable"


def test_a_job_the_queue_cannot_take_fails_at_once_and_keeps_nothing(
    client: FlaskClient, unreachable: Settings
) -> None:
    archive = zip_bytes([("a.jpeg", jpeg_bytes())])
    response = client.post("/v1/jobs", data={"archive": (io.BytesIO(archive), "s.zip")})
    assert_queue_unavailable(response)
    [job] = client.get("/v1/jobs").get_json()["items"]
    assert job["status"] == "failed"
    assert "queue is unavailable" in job["status_detail"]
    assert not Storage(unreachable.storage_dir).job_dir(job["id"]).exists()


def test_a_training_run_the_queue_cannot_take_fails_and_frees_the_one_run_lock(
    client: FlaskClient,
) -> None:
    first = client.post("/v1/training-runs", json={"architecture": "baseline_cnn"})
    assert_queue_unavailable(first)
    # Not 409 "a run is in progress": the failed run holds nothing.
    assert_queue_unavailable(client.post("/v1/training-runs", json={}))
    runs = client.get("/v1/training-runs").get_json()["items"]
    assert [run["status"] for run in runs] == ["failed", "failed"]
    assert "queue was unavailable" in runs[0]["error"]


def test_an_activation_whose_release_cannot_be_sent_still_activates(
    client: FlaskClient, unreachable: Settings, baseline_model: Path
) -> None:
    app_db = client.application.extensions["pneumoscan"].db
    with app_db.session() as session:
        version = registry.import_model(
            session, Storage(unreachable.storage_dir), baseline_model
        ).version
    assert_queue_unavailable(client.post(f"/v1/models/{version}/activate"))
    with app_db.session() as session:
        assert registry.get_version(session, version).status == ModelStatus.ACTIVE
