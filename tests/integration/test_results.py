"""Writing results: idempotent per pass, counters advanced once per job, the last result
completes a job, a pass of several jobs advances each by its own."""

from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from core import registry
from core.config import Settings
from core.db import Database
from core.jobs import create_job
from core.models import Image, Job, JobStatus, ModelVersion, SourceKind
from core.results import ImageResult, record_results
from core.storage import Storage


@pytest.fixture
def job_with_images(
    backend_settings: Settings, baseline_model: Path
) -> tuple[Database, str, ModelVersion]:
    db = Database(backend_settings.database_url)
    with db.session() as session:
        model = registry.import_model(
            session, Storage(backend_settings.storage_dir), baseline_model
        )
        registry.activate(session, model.version)
        job = create_job(session, SourceKind.ARCHIVE, "study.zip", "job1")
        job.status, job.total = JobStatus.RUNNING, 5
        session.execute(
            insert(Image),
            [
                {
                    "job_id": "job1",
                    "relative_path": f"{i}.jpeg",
                    "location": f"x/{i}",
                    "format": "jpeg",
                    "size_bytes": 1,
                    "sha256": "0" * 64,
                }
                for i in range(5)
            ],
        )
    yield db, "job1", model
    db.dispose()


def ids_of(db: Database) -> list[int]:
    with db.session() as session:
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def test_redelivered_batch_does_not_duplicate_results_or_counts(job_with_images) -> None:  # type: ignore[no-untyped-def]
    db, job_id, model = job_with_images
    ids = ids_of(db)
    batch = [ImageResult(i, job_id, probability=0.9) for i in ids[:3]]
    with db.session() as session:
        assert record_results(session, batch, model) == 3
    with db.session() as session:
        assert record_results(session, batch, model) == 0
        job = session.get(Job, job_id)
        assert (job.scored, job.errors, job.status) == (3, 0, JobStatus.RUNNING)  # type: ignore[union-attr]
        scored = session.scalar(select(func.count()).where(Image.scored_at.is_not(None)))
        assert scored == 3


def test_last_batch_completes_the_job_and_errors_are_counted(job_with_images) -> None:  # type: ignore[no-untyped-def]
    db, job_id, model = job_with_images
    ids = ids_of(db)
    with db.session() as session:
        record_results(session, [ImageResult(i, job_id, probability=0.2) for i in ids[:3]], model)
    with db.session() as session:
        last = [
            ImageResult(ids[3], job_id, probability=0.7),
            ImageResult(ids[4], job_id, error="could not decode"),
        ]
        record_results(session, last, model)
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.scored, job.errors) == (JobStatus.COMPLETED, 4, 1)
        assert job.model_versions == [model.version]
        rows = {row.id: row for row in session.scalars(select(Image))}
    assert rows[ids[0]].label == "NORMAL"
    assert rows[ids[3]].label == "PNEUMONIA"
    assert rows[ids[4]].probability is None
    assert rows[ids[4]].error == "could not decode"
    assert rows[ids[3]].model_version_id == model.id


def test_a_pass_of_two_jobs_advances_each_by_its_own_and_completes_the_one_done(  # type: ignore[no-untyped-def]
    job_with_images,
) -> None:
    db, job_id, model = job_with_images
    ids = ids_of(db)
    with db.session() as session:
        other = create_job(session, SourceKind.ARCHIVE, "other.zip", "job2", owner="b")
        other.status, other.total = JobStatus.RUNNING, 1
        session.add(
            Image(
                job_id="job2",
                relative_path="x.jpeg",
                location="x",
                format="jpeg",
                size_bytes=1,
                sha256="0" * 64,
            )
        )
        session.flush()
        other_image = session.scalar(select(Image.id).where(Image.job_id == "job2"))
    mixed = [ImageResult(ids[0], job_id, probability=0.9), ImageResult(other_image, "job2", 0.1)]
    with db.session() as session:
        assert record_results(session, mixed, model) == 2
    with db.session() as session:
        first, second = session.get(Job, job_id), session.get(Job, "job2")
        assert (first.scored, first.status) == (1, JobStatus.RUNNING)  # type: ignore[union-attr]
        assert (second.scored, second.status) == (1, JobStatus.COMPLETED)  # type: ignore[union-attr]
