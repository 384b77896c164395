"""Scoring across jobs with a real worker: every pass filled from every job waiting, stat
first, owners in turn; the database records which pass scored each image."""

from pathlib import Path

from sqlalchemy import func, select

from core.config import Settings
from core.models import Image, PassOutcome, ScoringPass
from tests.images import jpeg_bytes
from tests.stack import Stack
from tests.support import zip_bytes
from worker.precision import scoring_precision


def study(images: int) -> bytes:
    return zip_bytes([(f"{i:03d}.jpeg", jpeg_bytes()) for i in range(images)])


def passes_of(stack: Stack, job_id: str) -> set[int]:
    with stack.db.session() as session:
        return set(session.scalars(select(Image.pass_id).where(Image.job_id == job_id)))


def test_a_study_and_another_owners_large_job_share_their_passes(
    stack: Stack, baseline_model: Path
) -> None:
    stack.import_model(baseline_model)
    large = stack.submit_zip(study(100))["id"]
    one = stack.submit_zip(study(1), client=stack.client_of("ward-7"))["id"]
    stack.ingest_first([large, one])
    stack.start_worker()
    for job_id, total in ((large, 100), (one, 1)):
        done = stack.wait_finished(job_id)
        assert (done["status"], done["scored"]) == ("completed", total)
    (shared,) = passes_of(stack, one)
    assert shared in passes_of(stack, large)
    with stack.db.session() as session:
        first = session.get(ScoringPass, shared)
        assert first is not None
        assert (first.images, first.jobs, first.outcome) == (64, 2, PassOutcome.SCORED)
        assert first.precision == scoring_precision("auto", "cpu")  # as the CPU allows
        # 101 images in two passes: the second holds the rest of the large job.
        assert session.scalar(select(func.count()).select_from(ScoringPass)) == 2


def test_a_stat_study_behind_a_routine_backlog_goes_into_the_next_pass(
    backend_settings: Settings, tmp_path: Path, baseline_model: Path
) -> None:
    stack = Stack(backend_settings.model_copy(update={"batch_size": 8}), tmp_path)
    try:
        stack.import_model(baseline_model)
        backlog = stack.submit_zip(study(80))["id"]
        urgent = stack.submit_zip(study(1), priority="stat")["id"]
        stack.ingest_first([backlog, urgent])
        stack.start_worker()
        assert stack.wait_finished(urgent)["status"] == "completed"
        with stack.db.session() as session:
            first = session.scalar(select(func.min(ScoringPass.id)))
        assert passes_of(stack, urgent) == {first}
        assert stack.wait_finished(backlog)["scored"] == 80
    finally:
        stack.close()


def test_an_owners_large_backlog_does_not_hold_up_another_owners_study(
    backend_settings: Settings, tmp_path: Path, baseline_model: Path
) -> None:
    stack = Stack(backend_settings.model_copy(update={"batch_size": 8}), tmp_path)
    try:
        stack.import_model(baseline_model)
        # One owner's 3 jobs of 40 before another owner's 3-image study.
        backlog = [stack.submit_zip(study(40))["id"] for _ in range(3)]
        theirs = stack.submit_zip(study(3), client=stack.client_of("ward-7"))["id"]
        stack.ingest_first([*backlog, theirs])
        stack.start_worker()
        assert stack.wait_finished(theirs)["scored"] == 3
        with stack.db.session() as session:
            first = session.scalar(select(func.min(ScoringPass.id)))
        # Owners take turns image by image: the whole study rides in the first pass.
        assert passes_of(stack, theirs) == {first}
        for job_id in backlog:
            assert stack.wait_finished(job_id)["scored"] == 40
    finally:
        stack.close()
