"""The scoring queue on each database: passes across jobs, stat first, owners in turn,
suspects apart, claims that never overlap."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update

from core.config import Settings
from core.db import Database
from core.jobs import create_job
from core.migrate import upgrade
from core.models import (
    Image,
    Job,
    JobStatus,
    PassOutcome,
    Priority,
    ScoringPass,
    SourceKind,
    utcnow,
)
from core.passes import open_pass, passes_of_message, release_passes, stale_passes
from core.scoring_queue import QueuePolicy, claim, free_images

POLICY = QueuePolicy(capacity=8, max_wait=timedelta(minutes=10), split_after=2)


@pytest.fixture
def db(backend_settings: Settings) -> Iterator[Database]:
    database = Database(backend_settings.database_url)
    yield database
    database.dispose()


def add_job(
    db: Database,
    name: str,
    images: int,
    owner: str = "a",
    priority: Priority = Priority.ROUTINE,
    age: timedelta = timedelta(0),
) -> list[int]:
    """A running job with `images` unscored images, submitted `age` ago; their ids."""
    with db.session() as session:
        job = create_job(session, SourceKind.ARCHIVE, f"{name}.zip", name, owner=owner)
        job.status, job.total, job.priority = JobStatus.RUNNING, images, priority
        job.created_at = utcnow() - age
        session.execute(
            insert(Image),
            [
                {
                    "job_id": name,
                    "relative_path": f"{i}.jpeg",
                    "location": f"x/{name}/{i}",
                    "format": "jpeg",
                    "size_bytes": 1,
                    "sha256": "0" * 64,
                }
                for i in range(images)
            ],
        )
        session.flush()
        return list(
            session.scalars(select(Image.id).where(Image.job_id == name).order_by(Image.id))
        )


def claim_pass(db: Database, task_id: str = "t", policy: QueuePolicy = POLICY) -> tuple[int, list]:
    with db.session() as session:
        scoring_pass = open_pass(session, "test:1", task_id, policy.capacity)
        return scoring_pass.id, claim(session, scoring_pass, policy)


def jobs_of(images: list) -> list[str]:
    return [image.job_id for image in images]


def test_a_pass_takes_images_of_every_job_waiting_and_records_which_pass_holds_them(
    db: Database,
) -> None:
    add_job(db, "big", 100, owner="a")
    (small,) = add_job(db, "small", 1, owner="b")
    pass_id, images = claim_pass(db)
    assert len(images) == POLICY.capacity
    assert jobs_of(images).count("small") == 1
    assert jobs_of(images).count("big") == 7
    with db.session() as session:
        assert session.get(Image, small).pass_id == pass_id  # type: ignore[union-attr]
        assert session.get(Image, small).starts == 1  # type: ignore[union-attr]
        assert session.get(ScoringPass, pass_id).images == 8  # type: ignore[union-attr]
    # The next pass never takes what this one holds.
    _, following = claim_pass(db)
    assert not {i.image_id for i in images} & {i.image_id for i in following}
    assert free_images_left(db) == 101 - 16


def free_images_left(db: Database) -> int:
    with db.session() as session:
        return free_images(session)


def test_stat_images_go_into_the_next_pass_ahead_of_a_routine_backlog(db: Database) -> None:
    add_job(db, "backlog", 100, owner="a")
    add_job(db, "urgent", 2, owner="a", priority=Priority.STAT)
    _, images = claim_pass(db)
    assert (
        jobs_of(images)[:2] == ["urgent", "urgent"] or sorted(jobs_of(images)).count("urgent") == 2
    )


def test_routine_images_waiting_past_the_limit_count_as_stat(db: Database) -> None:
    add_job(db, "old", 20, owner="a", age=timedelta(minutes=11))
    add_job(db, "stat", 20, owner="b", priority=Priority.STAT)
    add_job(db, "fresh", 20, owner="c")
    _, images = claim_pass(db)
    # The old routine job shares the stat level with owner b; the fresh one waits.
    assert sorted(set(jobs_of(images))) == ["old", "stat"]
    assert jobs_of(images).count("old") == jobs_of(images).count("stat") == 4


def test_owners_take_turns_so_a_large_backlog_holds_nobody_else_up(db: Database) -> None:
    add_job(db, "a1", 500, owner="a")
    add_job(db, "a2", 500, owner="a")
    add_job(db, "b1", 3, owner="b")
    add_job(db, "c1", 1, owner="c")
    _, images = claim_pass(db)
    counts = {job: jobs_of(images).count(job) for job in ("a1", "a2", "b1", "c1")}
    # One image each per turn: b's study and c's whole job ride in the first pass.
    assert counts == {"a1": 4, "a2": 0, "b1": 3, "c1": 1}


def test_images_of_a_pass_that_died_come_back_apart_then_one_at_a_time(db: Database) -> None:
    add_job(db, "job", 20, owner="a")
    first, images = claim_pass(db, task_id="m1")
    with db.session() as session:
        # The message is delivered again: its worker died in the pass it began.
        assert passes_of_message(session, "m1") == [first]
        assert release_passes(session, [first]) == 8
        assert session.get(ScoringPass, first).outcome == PassOutcome.DIED  # type: ignore[union-attr]
    suspects_pass, suspects = claim_pass(db)
    assert [i.image_id for i in suspects] == [i.image_id for i in images]
    assert all(i.starts == 2 for i in suspects)
    with db.session() as session:
        assert session.get(ScoringPass, suspects_pass).suspect  # type: ignore[union-attr]
        release_passes(session, [suspects_pass])  # died again: now they go alone
    _, alone = claim_pass(db)
    assert len(alone) == 1
    assert alone[0].starts == 3
    # Suspects go first, each alone now; the images that never died wait for them.
    _, next_one = claim_pass(db)
    assert [i.image_id for i in next_one] == [images[1].image_id]


def test_a_pass_silent_past_the_stall_limit_is_found(db: Database) -> None:
    add_job(db, "job", 3)
    pass_id, _ = claim_pass(db)
    with db.session() as session:
        assert stale_passes(session, utcnow() - timedelta(minutes=1)) == []
        session.execute(
            update(ScoringPass)
            .where(ScoringPass.id == pass_id)
            .values(started_at=utcnow() - timedelta(minutes=5))
        )
    with db.session() as session:
        assert stale_passes(session, utcnow() - timedelta(minutes=1)) == [pass_id]


def test_a_stopped_or_waiting_job_gives_no_images(db: Database) -> None:
    add_job(db, "cancelled", 3)
    add_job(db, "waiting", 3)
    with db.session() as session:
        session.execute(update(Job).where(Job.id == "cancelled").values(status=JobStatus.CANCELLED))
        session.execute(update(Job).where(Job.id == "waiting").values(waiting_for_model=True))
    assert claim_pass(db)[1] == []
    assert free_images_left(db) == 0


def test_two_passes_claiming_at_once_never_share_an_image(postgres_url: str) -> None:
    """PostgreSQL: the second claim skips what the first holds, uncommitted. (SQLite has one
    writer at a time, so claims cannot interleave there.)"""
    upgrade(postgres_url)
    database = Database(postgres_url)
    try:
        add_job(database, "job", 20)
        with database.session() as first, database.session() as second:
            one = claim(first, open_pass(first, "w:1", "m1", 8), POLICY)  # not yet committed
            two = claim(second, open_pass(second, "w:2", "m2", 8), POLICY)
        assert len(one) == len(two) == 8
        assert not {i.image_id for i in one} & {i.image_id for i in two}
    finally:
        database.dispose()


def test_a_wake_up_with_no_active_model_parks_the_jobs_whose_images_wait(
    db: Database, backend_settings: Settings
) -> None:
    """The worker's side: nothing is claimed, and the jobs wait for a model with the reason."""
    from worker.context import WorkerContext
    from worker.scoring import run_pass

    add_job(db, "job", 3)
    report = run_pass(WorkerContext(backend_settings), "m1")
    assert report.images == 0
    with db.session() as session:
        job = session.get(Job, "job")
        assert job is not None
        assert (job.status, job.waiting_for_model) == (JobStatus.QUEUED, True)
        assert "waiting for an active model" in (job.status_detail or "")
        assert session.scalar(select(ScoringPass.id)) is None
