"""GET /metrics: what a Prometheus scrape sees, counted in the database, on both backends."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from core.config import Settings
from core.db import Database
from core.models import (
    Job,
    JobStatus,
    ModelStatus,
    ModelVersion,
    RunStatus,
    SourceKind,
    TrainingRun,
    utcnow,
)


@pytest.fixture
def client(backend_settings: Settings) -> Iterator[FlaskClient]:
    app = create_app(backend_settings)
    yield app.test_client()
    app.extensions["pneumoscan"].db.dispose()


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")  # no key: open like the health endpoints
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def job(status: JobStatus, **counts: object) -> Job:
    return Job(
        id=f"{status}-{counts.get('total')}",
        source_kind=SourceKind.ARCHIVE,
        source_name="study.zip",
        status=status,
        **counts,
    )


def version(name: str, status: ModelStatus) -> ModelVersion:
    return ModelVersion(
        version=name,
        status=status,
        source="import",
        artifact_path=f"models/{name}/model.keras",
        sha256="0" * 64,
        input_size=75,
    )


def test_metrics_count_jobs_images_models_and_runs_as_the_database_holds_them(
    client: FlaskClient, backend_settings: Settings
) -> None:
    empty = scrape(client)
    assert empty[("pneumoscan_jobs", (("status", "queued"),))] == 0
    assert empty[("pneumoscan_oldest_unfinished_job_seconds", ())] == 0
    assert not [key for key in empty if key[0] == "pneumoscan_active_model"]

    now = utcnow()
    with Database(backend_settings.database_url).session() as session:
        session.add_all(
            [
                job(JobStatus.COMPLETED, total=3, scored=2, errors=1, rejected=1),
                job(
                    JobStatus.RUNNING,
                    total=10,
                    scored=4,
                    errors=1,
                    created_at=now - timedelta(seconds=100),
                ),
                job(JobStatus.QUEUED, total=None, waiting_for_model=True, rejected=2),
                job(JobStatus.FAILED, total=0),
                version("v-old", ModelStatus.RETIRED),
                version("v-now", ModelStatus.ACTIVE),
                version("v-next", ModelStatus.CANDIDATE),
                TrainingRun(status=RunStatus.COMPLETED, trigger="api", epochs=1),
                TrainingRun(status=RunStatus.SKIPPED, trigger="schedule", epochs=1),
                TrainingRun(status=RunStatus.SKIPPED, trigger="schedule", epochs=1),
            ]
        )

    seen = scrape(client)
    jobs = {s: seen[("pneumoscan_jobs", (("status", s),))] for s in JobStatus}
    assert jobs == {"queued": 1, "running": 1, "completed": 1, "failed": 1, "cancelled": 0}
    assert seen[("pneumoscan_jobs_waiting_for_model", ())] == 1
    images = {s: seen[("pneumoscan_images", (("state", s),))] for s in ("scored", "error")}
    assert images == {"scored": 6, "error": 2}
    assert seen[("pneumoscan_images", (("state", "pending"),))] == 5  # the running job's rest
    assert seen[("pneumoscan_images", (("state", "rejected"),))] == 3
    assert 100 <= seen[("pneumoscan_oldest_unfinished_job_seconds", ())] < 200
    assert seen[("pneumoscan_active_model", (("version", "v-now"),))] == 1
    versions = {s: seen[("pneumoscan_model_versions", (("status", s),))] for s in ModelStatus}
    assert versions == {"candidate": 1, "active": 1, "retired": 1}
    assert seen[("pneumoscan_training_runs", (("status", "skipped"),))] == 2
    assert seen[("pneumoscan_training_runs", (("status", "completed"),))] == 1
