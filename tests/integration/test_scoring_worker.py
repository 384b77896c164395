"""The job flow through a real Celery worker process, on SQLite + filesystem broker and on
PostgreSQL + Redis: archive in, batched scoring, one result per image in SQL."""

from pathlib import Path

from sqlalchemy import func, select

from core.models import Image, ScoringPass
from tests.images import chest_like, jpeg_bytes, png_bytes, truncated_jpeg
from tests.stack import Stack
from tests.support import wait_for, zip_bytes, zip_folder_bytes
from tests.synthetic import brightness_model
from worker.tasks import score_batch, score_pass


def test_real_xrays_are_scored_by_inception_resnet_v2_loaded_once(
    stack: Stack, shared_data: Path, inception_model: Path
) -> None:
    version = stack.import_model(inception_model)
    worker = stack.start_worker()
    job = stack.submit_zip(zip_folder_bytes(shared_data / "origres"), "origres.zip")
    done = stack.wait_finished(job["id"], timeout=300)
    assert done["status"] == "completed", done
    assert (done["total"], done["scored"], done["errors"]) == (200, 200, 0)
    assert done["model_versions"] == [version]
    results = stack.results(job["id"])
    assert len({r["path"] for r in results}) == 200
    assert {r["path"].split("/")[0] for r in results} == {"NORMAL", "PNEUMONIA"}
    assert all(0.0 <= r["probability"] <= 1.0 for r in results)
    assert {r["model_version"] for r in results} == {version}
    # Four batches of at most 64, one model load in the one worker process.
    assert worker.log().count("loading model version") == 1
    assert worker.log().count("new results") == 4


def test_unreadable_image_becomes_an_error_row_and_the_job_completes(
    stack: Stack, baseline_model: Path
) -> None:
    stack.import_model(baseline_model)
    stack.start_worker()
    archive = zip_bytes(
        [("good.jpeg", jpeg_bytes()), ("good.png", png_bytes()), ("broken.jpeg", truncated_jpeg())]
    )
    done = stack.wait_finished(stack.submit_zip(archive)["id"])
    assert done["status"] == "completed"
    assert (done["total"], done["scored"], done["errors"]) == (3, 2, 1)
    by_path = {r["path"]: r for r in stack.results(done["id"])}
    assert by_path["broken.jpeg"]["probability"] is None
    assert "could not decode" in by_path["broken.jpeg"]["error"]
    assert by_path["good.png"]["error"] is None
    assert by_path["good.png"]["label"] in ("NORMAL", "PNEUMONIA")


def test_job_waiting_for_a_model_starts_when_one_is_activated(
    stack: Stack, baseline_model: Path
) -> None:
    stack.start_worker()
    job_id = stack.submit_zip(zip_bytes([("a.jpeg", jpeg_bytes()), ("b.jpeg", jpeg_bytes())]))["id"]
    waiting = wait_for(
        lambda: (job := stack.job(job_id))["waiting_for_model"] and job,
        60,
        "job to wait for a model",
    )
    assert waiting["status"] == "queued"
    assert "waiting for an active model" in waiting["status_detail"]
    assert waiting["total"] == 2
    version = stack.import_model(baseline_model)
    done = stack.wait_finished(job_id)
    assert done["status"] == "completed"
    assert done["scored"] == 2
    assert done["model_versions"] == [version]


def test_a_wake_up_delivered_again_after_its_pass_changes_nothing(
    stack: Stack, baseline_model: Path
) -> None:
    stack.import_model(baseline_model)
    worker = stack.start_worker()
    archive = zip_bytes([(f"{i}.jpeg", jpeg_bytes()) for i in range(5)])
    job_id = stack.submit_zip(archive)["id"]
    first = stack.wait_finished(job_id)
    before = stack.results(job_id)
    with stack.db.session() as session:
        task_id = session.scalar(select(ScoringPass.task_id))
        passes = session.scalar(select(func.count()).select_from(ScoringPass))
        image_ids = list(session.scalars(select(Image.id).where(Image.job_id == job_id)))
    # The same message again, as the broker would redeliver it after a lost acknowledgement,
    # and a per-job batch message sent before the scoring queue existed.
    stack.celery.tasks[score_pass.name].apply_async(task_id=task_id)
    stack.celery.tasks[score_batch.name].delay(job_id, image_ids)
    wait_for(lambda: f"wake-up {task_id}: no images waiting" in worker.log(), 60, "the wake-up")
    wait_for(lambda: worker.log().count("no images waiting") >= 2, 60, "the old message")
    after = stack.job(job_id)
    assert (after["scored"], after["errors"], after["status"]) == (first["scored"], 0, "completed")
    assert stack.results(job_id) == before
    with stack.db.session() as session:
        assert session.scalar(select(func.count()).select_from(ScoringPass)) == passes


def test_a_tampered_active_model_parks_the_job_until_a_usable_one_is_activated(
    stack: Stack, baseline_model: Path
) -> None:
    broken = stack.import_model(baseline_model)
    artifact = stack.settings.storage_dir / "models" / broken / "model.keras"
    artifact.write_bytes(artifact.read_bytes()[:-10] + b"0123456789")  # sha256 no longer matches
    stack.start_worker()
    job_id = stack.submit_zip(zip_bytes([("a.jpeg", jpeg_bytes())]))["id"]
    parked = wait_for(
        lambda: (job := stack.job(job_id))["waiting_for_model"] and job, 60, "the job to be parked"
    )
    assert "fails its sha256" in parked["status_detail"]
    good = stack.import_model(baseline_model)
    done = stack.wait_finished(job_id)
    assert (done["status"], done["scored"], done["model_versions"]) == ("completed", 1, [good])


def test_each_version_scores_the_input_its_own_preprocessing_makes(
    stack: Stack, tmp_path: Path
) -> None:
    """A brightness model sees a darker exposure as less pneumonia; with equalisation, as the
    version says it was trained, the worker gives both exposures the same score."""
    model = brightness_model(tmp_path / "brightness.keras")
    image = chest_like(448)
    darker = image.point([round(255 * (v / 255) ** 1.6) for v in range(256)])
    archive = zip_bytes([("normal.jpeg", jpeg_bytes(image)), ("dark.jpeg", jpeg_bytes(darker))])
    stack.start_worker()
    probabilities = {}
    for recipe in ("squash", "equalize"):
        version = stack.import_model(model, preprocessing=recipe)
        done = stack.wait_finished(stack.submit_zip(archive)["id"])
        assert done["model_versions"] == [version]
        probabilities[recipe] = {r["path"]: r["probability"] for r in stack.results(done["id"])}
    squashed, equalised = probabilities["squash"], probabilities["equalize"]
    exposure_effect = squashed["normal.jpeg"] - squashed["dark.jpeg"]
    assert exposure_effect > 0.1
    assert abs(equalised["normal.jpeg"] - equalised["dark.jpeg"]) < 0.2 * exposure_effect
