"""Priority on submission: a query parameter for every kind of body, a default per key, and
the place a waiting job shows; the backlog by priority and the passes' fill in /metrics."""

import io
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from apiflask import APIFlask
from click.testing import CliRunner
from sqlalchemy import func, insert, select, update

from api import create_app
from cli import main
from core.config import Settings
from core.models import Image, Job, JobStatus, PassOutcome, Priority, ScoringPass, utcnow
from tests.images import jpeg_bytes
from tests.support import api_client, settings_env, zip_bytes


@pytest.fixture
def app(settings: Settings) -> Iterator[APIFlask]:
    application = create_app(settings)
    yield application
    application.extensions["pneumoscan"].db.dispose()


def submissions(settings: Settings) -> dict[str, dict]:  # type: ignore[type-arg]
    folder = settings.import_roots[0] / "study"
    folder.mkdir(exist_ok=True)
    (folder / "a.jpeg").write_bytes(jpeg_bytes())
    archive = zip_bytes([("a.jpeg", jpeg_bytes())])
    return {
        "raw zip": {"data": archive, "content_type": "application/zip"},
        "archive": {
            "data": {"archive": (io.BytesIO(archive), "s.zip")},
            "content_type": "multipart/form-data",
        },
        "images": {
            "data": {"images": [(io.BytesIO(jpeg_bytes()), "a.jpeg")]},
            "content_type": "multipart/form-data",
        },
        "folder": {"data": json.dumps({"folder": str(folder)}), "content_type": "application/json"},
    }


def test_priority_is_a_query_parameter_for_every_kind_of_body(
    app: APIFlask, settings: Settings
) -> None:
    client = api_client(app)
    for kind, body in submissions(settings).items():
        stat = client.post("/v1/jobs?priority=stat", **body)
        assert stat.status_code == 202, (kind, stat.get_json())
        assert stat.get_json()["priority"] == "stat", kind
    for kind, body in submissions(settings).items():
        plain = client.post("/v1/jobs", **body)
        assert plain.get_json()["priority"] == "routine", kind
    with app.extensions["pneumoscan"].db.session() as session:
        stored = session.execute(select(Job.priority, func.count()).group_by(Job.priority)).all()
    assert dict(stored) == {Priority.STAT: 4, Priority.ROUTINE: 4}


def test_an_unknown_priority_is_refused_and_leaves_no_job(
    app: APIFlask, settings: Settings
) -> None:
    client = api_client(app)
    body = submissions(settings)["raw zip"]
    response = client.post("/v1/jobs?priority=urgent", **body)
    assert response.status_code == 400
    assert "priority" in json.dumps(response.get_json())
    with app.extensions["pneumoscan"].db.session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert not any((settings.storage_dir / "uploads").glob("*/*"))


def test_a_key_made_for_stat_work_submits_stat_unless_told_otherwise(
    app: APIFlask, settings: Settings
) -> None:
    runner = CliRunner()
    made = runner.invoke(
        main,
        ["keys", "create", "--name", "emergency", "--scope", "submit", "--priority", "stat"],
        env=settings_env(settings),
    )
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    listed = runner.invoke(main, ["keys", "list"], env=settings_env(settings))
    assert "stat" in next(line for line in listed.stdout.splitlines() if "emergency" in line)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    body = submissions(settings)["raw zip"]
    assert client.post("/v1/jobs", **body).get_json()["priority"] == "stat"
    assert client.post("/v1/jobs?priority=routine", **body).get_json()["priority"] == "routine"


def running_job(app: APIFlask, job_id: str, images: int, owner: str, priority: Priority) -> None:
    with app.extensions["pneumoscan"].db.session() as session:
        session.execute(
            insert(Job).values(
                id=job_id,
                owner=owner,
                priority=priority,
                status=JobStatus.RUNNING,
                source_kind="archive",
                source_name="s.zip",
                total=images,
                scored=0,
                errors=0,
                rejected=0,
                waiting_for_model=False,
                model_versions=[],
                ingest_attempts=0,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        session.execute(
            insert(Image),
            [
                {
                    "job_id": job_id,
                    "relative_path": f"{i}.jpeg",
                    "location": "x",
                    "format": "jpeg",
                    "size_bytes": 1,
                    "sha256": "0" * 64,
                }
                for i in range(images)
            ],
        )


def test_a_waiting_job_shows_how_many_images_go_before_it_and_when_it_should_start(
    app: APIFlask,
) -> None:
    client = api_client(app)  # an admin: sees every owner's jobs
    running_job(app, "backlog", 300, "a", Priority.ROUTINE)
    running_job(app, "later", 5, "a", Priority.ROUTINE)
    running_job(app, "other", 2, "b", Priority.ROUTINE)
    running_job(app, "urgent", 1, "c", Priority.STAT)
    place = {
        j: client.get(f"/v1/jobs/{j}").get_json()["images_ahead"]
        for j in ("backlog", "later", "other", "urgent")
    }
    # Stat first; then owners take turns: b's study waits for one image of a's and c's stat.
    assert place == {"urgent": 0, "backlog": 1, "other": 2, "later": 303}
    assert client.get("/v1/jobs/urgent").get_json()["expected_start_at"] is None  # no pass yet
    with app.extensions["pneumoscan"].db.session() as session:
        now = utcnow()
        session.add(
            ScoringPass(
                worker="w:1",
                capacity=64,
                images=32,
                outcome=PassOutcome.SCORED,
                started_at=now - timedelta(seconds=1),
                finished_at=now,
            )
        )
    later = client.get("/v1/jobs/later").get_json()
    # 32 images a second: 303 ahead start in about 9.5 s.
    assert later["expected_start_at"] is not None
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'pneumoscan_backlog_images{priority="stat"} 1.0' in metrics
    assert 'pneumoscan_backlog_images{priority="routine"} 307.0' in metrics
    assert "pneumoscan_pass_fill 0.5" in metrics


def test_routine_work_waiting_past_the_limit_is_counted_and_placed_as_stat(
    app: APIFlask, settings: Settings
) -> None:
    client = api_client(app)
    running_job(app, "old", 10, "a", Priority.ROUTINE)
    running_job(app, "stat", 1, "b", Priority.STAT)
    with app.extensions["pneumoscan"].db.session() as session:
        old = utcnow() - timedelta(seconds=settings.max_wait_seconds + 5)
        session.execute(update(Job).where(Job.id == "old").values(created_at=old))
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'pneumoscan_backlog_images{priority="stat"} 11.0' in metrics
    # Promoted, it takes turns with stat work: after the stat study, which was stat first.
    assert client.get("/v1/jobs/old").get_json()["images_ahead"] == 1
