"""Training runs with real Keras on real images (few images, few epochs), through the
Celery task on a real worker; the gate, rollback, hot swap, labels and the nightly schedule."""

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core import registry
from core.config import Settings, load_settings
from core.db import Database
from core.migrate import upgrade
from core.models import Image, RunStatus, TrainingRun
from core.storage import Storage
from core.training_runs import (
    TrainingBusyError,
    TrainingParams,
    request_run,
    request_scheduled_run,
)
from tests.images import jpeg_bytes
from tests.stack import Stack
from tests.support import WorkerProcess, api_client, wait_for, zip_bytes
from training.data import load_arrays, read_labelled_folder
from training.evaluate import evaluate_network, load_version
from training.gate import GateRules, promote_if_allowed
from training.train import run_training

FINISHED_RUN = ("completed", "failed", "skipped")


def training_stack(tmp_path: Path, reference: Path, **overrides: object) -> Stack:
    (tmp_path / "import").mkdir(exist_ok=True)
    settings = load_settings(
        home=tmp_path / "var",
        import_roots=[tmp_path / "import"],
        data_dir=reference,
        min_sensitivity=0.9,
        **overrides,
    )
    upgrade(settings.database_url)
    return Stack(settings, tmp_path)


# Every lever at once on the small CNN: two seeds, two test-time views, recomputed BatchNorm
# statistics (it has none: nothing to do), equalised and trimmed input, AdamW, smoothing.
ROBUST_LEVERS = {
    "augment": "acquisition",
    "optimizer": "adamw-cosine",
    "label_smoothing": 0.1,
    "preprocessing": "trim5+equalize",
    "batch_norm_recalibration": True,
    "ensemble": 2,
    "tta_views": 2,
    "input_size": 64,
}


@pytest.mark.parametrize(
    ("architecture", "epochs", "levers"),
    [
        ("baseline_cnn", 3, {}),
        ("inception_resnet_v2", 1, {"batch_norm_recalibration": True}),
        ("baseline_cnn", 2, ROBUST_LEVERS),
    ],
    ids=["baseline_cnn", "inception_resnet_v2", "every-lever"],
)
def test_each_architecture_trains_end_to_end_through_the_celery_task(
    tmp_path: Path, small_reference: Path, architecture: str, epochs: int, levers: dict
) -> None:
    stack = training_stack(tmp_path, small_reference)
    try:
        stack.worker = WorkerProcess(stack.settings, tmp_path / "trainer.log", queues="training")
        response = stack.client.post(
            "/v1/training-runs",
            json={
                "architecture": architecture,
                "epochs": epochs,
                "batch_size": 16,
                "activate": "always",
                **levers,
            },
        )
        assert response.status_code == 202, response.get_json()
        run_id = response.get_json()["id"]
        run = wait_for(
            lambda: (
                (r := stack.client.get(f"/v1/training-runs/{run_id}").get_json())["status"]
                in FINISHED_RUN
                and r
            ),
            900,
            f"training run {run_id}",
            interval=1,
        )
        assert run["status"] == "completed", run["error"] or stack.worker.log()[-3000:]
        members = levers.get("ensemble", 1)
        assert run["epoch"] == run["epochs"] == epochs * members
        assert len(run["history"]) == epochs * members
        assert {"loss", "val_loss", "accuracy", "val_stressed_auroc"} <= set(run["history"][-1])
        assert_robust_metrics(run["metrics"], members)
        holdout = run["metrics"]["holdout"]
        for key in (
            "accuracy",
            "sensitivity",
            "specificity",
            "precision",
            "f1",
            "auroc",
            "confusion_matrix",
            "roc",
        ):
            assert key in holdout
        assert sum(holdout["confusion_matrix"].values()) == holdout["n"] > 0
        # The threshold was chosen on validation and is the one the version scores with.
        models = {m["version"]: m for m in stack.client.get("/v1/models").get_json()["items"]}
        version = models[run["version"]]
        assert version["status"] == "active"
        assert version["training_run_id"] == run_id
        assert version["input_size"] == levers.get("input_size", 75)
        default_recipe = stack.settings.train_preprocessing  # equalize
        assert version["preprocessing"] == levers.get("preprocessing", default_recipe)
        assert (
            version["threshold"]
            == run["metrics"]["validation"]["threshold"]
            == holdout["threshold"]
        )
        assert run["metrics"]["validation"]["sensitivity"] >= stack.settings.min_sensitivity
        folder = stack.settings.storage_dir / "models" / run["version"]
        for name in (
            "model.keras",
            "metrics.json",
            "confusion_matrix.png",
            "roc.png",
            "reliability.png",
            "training_curves.png",
        ):
            assert (folder / name).stat().st_size > 0
    finally:
        stack.close()


def assert_robust_metrics(metrics: dict, members: int) -> None:
    """What every version records: stressed figures per change and at worst, intervals,
    calibration, and the epoch each member kept for its stressed validation AUROC."""
    from training.stress import CHANGES

    for split in ("validation_stressed", "holdout_stressed"):
        stressed = metrics[split]
        assert set(stressed["changes"]) == set(CHANGES)
        assert stressed["worst_auroc"] <= stressed["mean_auroc"]
        assert stressed["worst_auroc_change"] in CHANGES
        assert set(stressed["intervals"]) >= {"mean_auroc", "worst_auroc", "specificity"}
    for split in ("validation", "holdout"):
        low, high = metrics[split]["intervals"]["auroc"]
        assert low <= metrics[split]["auroc"] <= high
        assert 0 <= metrics[split]["calibration"]["ece"] <= 1
    assert metrics["calibration"]["temperature"] > 0
    assert len(metrics["selection"]) == members
    assert {m["seed"] for m in metrics["selection"]} == {
        metrics["params"]["seed"] + k for k in range(members)
    }


def test_a_second_run_is_refused_while_one_is_queued(tmp_path: Path, small_reference: Path) -> None:
    stack = training_stack(tmp_path, small_reference)
    try:
        first = stack.client.post("/v1/training-runs", json={"architecture": "baseline_cnn"})
        assert first.status_code == 202
        second = stack.client.post("/v1/training-runs", json={"architecture": "baseline_cnn"})
        assert second.status_code == 409
        assert second.get_json()["error"]["code"] == "training_in_progress"
        assert stack.client.get("/v1/training-runs/999").status_code == 404
    finally:
        stack.close()


def test_training_without_reference_data_is_refused(settings: Settings) -> None:
    from api import create_app

    response = api_client(create_app(settings)).post("/v1/training-runs", json={})
    assert response.status_code == 400
    assert "PNEUMOSCAN_DATA_DIR" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("preprocessing", "clahe", "unknown preprocessing"),
        ("optimizer", "adam", "optimizer"),
        ("ensemble", 9, "ensemble"),
        ("tta_views", 0, "tta_views"),
        ("label_smoothing", 0.5, "label_smoothing"),
    ],
)
def test_a_run_with_a_bad_lever_is_refused_with_the_reason(
    tmp_path: Path, small_reference: Path, field: str, value: object, says: str
) -> None:
    stack = training_stack(tmp_path, small_reference)
    try:
        response = stack.client.post("/v1/training-runs", json={field: value})
        assert response.status_code == 400, response.get_json()
        assert says in json_text(response.get_json())
        assert stack.client.get("/v1/training-runs").get_json()["items"] == []
    finally:
        stack.close()


def json_text(body: dict) -> str:
    import json

    return json.dumps(body)


def intensity_model(path: Path, sign: float) -> Path:
    """A real Keras model scoring mean brightness (sign +1) or darkness (sign -1)."""
    import keras
    import numpy as np

    inputs = keras.Input((75, 75, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1, activation="sigmoid")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    dense.set_weights(
        [np.full((3, 1), sign * 10 / 3, np.float32), np.array([-sign * 5], np.float32)]
    )
    model.save(path)
    return path


def test_gate_activates_a_better_candidate_keeps_a_worse_one_and_rollback_works(
    settings: Settings, small_reference: Path, tmp_path: Path
) -> None:
    from api import create_app

    db, storage = Database(settings.database_url), Storage(settings.storage_dir)
    samples = read_labelled_folder(small_reference)
    holdout, _ = load_arrays(samples, 75, 4, 10**9)
    with db.session() as session:
        # A threshold of 0 calls everything pneumonia: sensitivity 1, so only AUROC decides.
        bright = registry.import_model(
            session, storage, intensity_model(tmp_path / "b.keras", 1), threshold=0.0
        )
        dark = registry.import_model(
            session, storage, intensity_model(tmp_path / "d.keras", -1), threshold=0.0
        )
        bright_v, dark_v = bright.version, dark.version
    scores = {
        v: evaluate_network(load_version(storage, row), holdout, row.threshold)["auroc"]
        for v, row in ((bright_v, bright), (dark_v, dark))
    }
    better, worse = sorted(scores, key=scores.__getitem__, reverse=True)
    assert scores[better] > scores[worse] + 0.02  # mirror images: AUROC a and 1 - a
    rules = GateRules(
        min_sensitivity=0.95, auroc_margin=0.01, specificity_margin=0.02, policy="if-better"
    )
    measuring = {"threads": 4, "max_pixels": 10**9, "keep_inactive": 5}
    with db.session() as session:
        registry.activate(session, better)
    kept = promote_if_allowed(
        db,
        storage,
        worse,
        {"auroc": scores[worse], "sensitivity": 1.0},
        None,
        samples,
        rules,
        **measuring,
    )
    assert not kept.activate
    assert kept.active_metrics is not None
    assert kept.active_metrics["auroc"] == pytest.approx(scores[better])
    with db.session() as session:
        registry.activate(session, worse)
    promoted = promote_if_allowed(
        db,
        storage,
        better,
        {"auroc": scores[better], "sensitivity": 1.0},
        None,
        samples,
        rules,
        **measuring,
    )
    assert promoted.activate
    client = api_client(create_app(settings))
    assert {m["version"]: m["status"] for m in client.get("/v1/models").get_json()["items"]}[
        better
    ] == "active"
    # Roll back through the API.
    rolled = client.post(f"/v1/models/{worse}/activate")
    assert rolled.status_code == 200
    assert rolled.get_json()["status"] == "active"
    statuses = {m["version"]: m["status"] for m in client.get("/v1/models").get_json()["items"]}
    assert statuses == {worse: "active", better: "retired"}
    assert client.post("/v1/models/nope/activate").status_code == 404


def test_old_inactive_artifacts_are_pruned_and_cannot_be_activated(
    settings: Settings, baseline_model: Path
) -> None:
    db, storage = Database(settings.database_url), Storage(settings.storage_dir)
    with db.session() as session:
        versions = [
            registry.import_model(session, storage, baseline_model).version for _ in range(4)
        ]
        registry.activate(session, versions[-1])
        pruned = registry.prune_artifacts(session, storage, keep=1)
    assert sorted(pruned) == sorted(versions[:2])
    assert not (settings.storage_dir / "models" / versions[0]).exists()
    assert (settings.storage_dir / "models" / versions[2]).exists()
    with pytest.raises(registry.ArtifactDeletedError), db.session() as session:
        registry.activate(session, versions[0])


def test_hot_swap_while_a_worker_scores_loses_and_duplicates_nothing(
    backend_settings: Settings, tmp_path: Path, baseline_model: Path, model_dir: Path
) -> None:
    from training.model import BASELINE_CNN, save_untrained

    other_model = save_untrained(BASELINE_CNN, model_dir / "other-baseline.keras")
    settings = backend_settings.model_copy(update={"batch_size": 2})
    stack = Stack(settings, tmp_path)
    try:
        first = stack.import_model(baseline_model)
        second = stack.import_model(other_model, activate=False)
        stack.start_worker()
        job_id = stack.submit_zip(zip_bytes([(f"{i:03d}.jpeg", jpeg_bytes()) for i in range(120)]))[
            "id"
        ]
        wait_for(lambda: stack.job(job_id)["scored"] > 0, 120, "the first results")
        assert stack.client.post(f"/v1/models/{second}/activate").status_code == 200
        done = stack.wait_finished(job_id)
        assert (done["status"], done["scored"], done["errors"]) == ("completed", 120, 0)
        assert done["model_versions"] == [first, second]
        results = stack.results(job_id)
        assert len(results) == len({r["id"] for r in results}) == 120
        assert {r["model_version"] for r in results} == {first, second}
        with stack.db.session() as session:
            assert session.scalar(select(func.count()).select_from(Image)) == 120
        assert stack.worker is not None
        assert stack.worker.log().count("loading model version") == 2
    finally:
        stack.close()


def test_confirmed_labels_feed_the_next_run_and_a_later_label_replaces_an_earlier_one(
    tmp_path: Path, small_reference: Path, baseline_model: Path
) -> None:
    stack = training_stack(tmp_path, small_reference)
    try:
        stack.import_model(baseline_model)
        stack.start_worker()
        job_id = stack.submit_zip(
            zip_bytes([(f"new/{i}.jpeg", jpeg_bytes(quality=60 + i)) for i in range(4)])
        )["id"]
        stack.wait_finished(job_id)
        ids = [r["id"] for r in stack.results(job_id)]
        submitter = api_client(stack.app, "submit", "tests")
        refused = submitter.put(f"/v1/results/{ids[0]}/label", json={"label": "NORMAL"})
        assert refused.status_code == 403  # submitting does not let a client teach the model
        for result_id, label in zip(
            ids, ["NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA"], strict=True
        ):
            put = stack.client.put(f"/v1/results/{result_id}/label", json={"label": label})
            assert put.status_code == 200
            assert put.get_json()["labelled_by"] == "tests"  # the key's name
        another_reader = api_client(stack.app, "admin", "dr-b")
        again = another_reader.put(f"/v1/results/{ids[0]}/label", json={"label": "PNEUMONIA"})
        assert again.get_json()["labelled_by"] == "dr-b"
        results = {r["id"]: r for r in stack.results(job_id)}
        assert results[ids[0]]["confirmed_label"] == "PNEUMONIA"
        bad = stack.client.put(f"/v1/results/{ids[0]}/label", json={"label": "maybe"})
        assert bad.status_code == 400
        assert (
            stack.client.put("/v1/results/999999/label", json={"label": "NORMAL"}).status_code
            == 404
        )

        params = TrainingParams.from_settings(
            stack.settings, architecture="baseline_cnn", epochs=1, batch_size=16, activate="never"
        )
        with stack.db.session() as session:
            run, _ = request_run(session, params, "test")
            run_id = run.id
        outcome = run_training(
            stack.db, Storage(stack.settings.storage_dir), stack.settings, run_id
        )
        assert outcome.status == "completed", outcome.error
        with stack.db.session() as session:
            finished = session.get(TrainingRun, run_id)
            assert finished is not None
            assert finished.labels_used == 4
            data = finished.metrics["data"]  # type: ignore[index]
            assert data["confirmed_labels"] == 4
            in_training = sum(data["train"].values()) + sum(data["validation"].values())
        reference_only = 60 - sum(data["holdout"].values())
        assert in_training == reference_only + 4
    finally:
        stack.close()


def test_nightly_run_is_skipped_without_new_labels(
    backend_settings: Settings, small_reference: Path
) -> None:
    db = Database(backend_settings.database_url)
    settings = backend_settings.model_copy(update={"data_dir": small_reference})
    params = TrainingParams.from_settings(settings)
    with db.session() as session:
        done, _ = request_run(session, params, "test")
        done.status, done.in_progress = RunStatus.COMPLETED, None
    with db.session() as session:
        skipped, created = request_scheduled_run(session, params, "schedule:2026-11-27T02:00")
        assert (skipped.status, created) == (RunStatus.SKIPPED, False)
        assert "no confirmed labels since run" in (skipped.decision or "")
    forced = TrainingParams.from_settings(settings, force=True)
    with db.session() as session:
        run, created = request_scheduled_run(session, forced, "schedule:2026-11-28T02:00")
        assert (run.status, created) == (RunStatus.QUEUED, True)


def test_two_simultaneous_schedule_triggers_give_one_run(
    backend_settings: Settings, small_reference: Path
) -> None:
    settings = backend_settings.model_copy(update={"data_dir": small_reference})
    params = TrainingParams.from_settings(settings)
    barrier = threading.Barrier(2)
    outcomes: list[tuple[int, bool]] = []

    def fire(key: str) -> None:
        db = Database(settings.database_url)
        barrier.wait()
        with db.session() as session:
            run, created = request_scheduled_run(session, params, key)
            outcomes.append((run.id, created))
        db.dispose()

    threads = [threading.Thread(target=fire, args=("schedule:2026-11-27T02:00",)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({run_id for run_id, _ in outcomes}) == 1
    assert sorted(created for _, created in outcomes) == [False, True]
    # A different firing while that run is still queued records a skip, not a second run.
    with Database(settings.database_url).session() as session:
        other, created = request_scheduled_run(session, params, "schedule:2026-11-28T02:00")
        assert (other.status, created) == (RunStatus.SKIPPED, False)
        assert (
            session.scalar(select(func.count()).where(TrainingRun.status == RunStatus.QUEUED)) == 1
        )


def test_beat_trigger_through_a_worker_trains_once_for_two_firings(
    tmp_path: Path, small_reference: Path
) -> None:
    stack = training_stack(
        tmp_path,
        small_reference,
        train_architecture="baseline_cnn",
        train_epochs=1,
        train_batch_size=16,
    )
    try:
        stack.worker = WorkerProcess(
            stack.settings, tmp_path / "worker.log", queues="ingest,training"
        )
        celery = stack.celery
        from worker.tasks import schedule_retraining

        # The run's key is the minute the worker takes a firing in: fire early in a minute,
        # so both land in it even when the second waits a few seconds (once in CI it waited
        # 8 s, across a minute's end, and was recorded as a skip of a second key).
        while datetime.now(UTC).second > 20:
            time.sleep(0.5)
        for _ in range(2):  # two schedulers firing the same minute
            celery.tasks[schedule_retraining.name].delay()
        wait_for(
            lambda: stack.worker.log().count("nightly retraining schedule:") == 2,
            120,
            "both firings",
        )  # type: ignore[union-attr]
        runs = wait_for(
            lambda: (
                (items := stack.client.get("/v1/training-runs").get_json()["items"])
                and all(r["status"] in FINISHED_RUN for r in items)
                and items
            ),
            300,
            "the nightly run",
        )
        assert [(r["status"], r["trigger"]) for r in runs] == [("completed", "schedule")]
    finally:
        stack.close()


def test_beat_schedule_follows_the_cron_setting(tmp_path: Path) -> None:
    from worker.celery_app import create_celery

    app = create_celery(load_settings(home=tmp_path, retrain_cron="30 3 * * 1-5"))
    schedule = app.conf.beat_schedule["nightly-retraining"]["schedule"]
    assert (schedule.minute, schedule.hour, schedule.day_of_week) == ({30}, {3}, {1, 2, 3, 4, 5})


def evaluate_cli(settings: Settings, *arguments: str) -> tuple[dict, str]:
    import json
    import subprocess
    import sys

    from tests.support import REPO, settings_env

    result = subprocess.run(
        [sys.executable, "-m", "cli", "evaluate", *arguments],
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_evaluate_prints_the_metrics_of_a_version_as_json(
    settings: Settings, small_reference: Path, baseline_model: Path
) -> None:
    with Database(settings.database_url).session() as session:
        version = registry.import_model(
            session, Storage(settings.storage_dir), baseline_model
        ).version
    report, table = evaluate_cli(settings, "--data", str(small_reference), "--model", version)
    assert report["model_version"] == version
    assert report["n"] == 60
    assert report["images"] == {"NORMAL": 30, "PNEUMONIA": 30}
    for key in (
        "accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "auroc",
        "confusion_matrix",
        "calibration",
    ):
        assert key in report
    for key in ("auroc", "accuracy", "sensitivity", "specificity"):
        low, high = report["intervals"][key]
        assert low <= report[key] <= high
    assert "stressed" not in report
    assert f"model {version}" in table


def test_evaluate_with_stress_prints_each_change_the_worst_and_the_full_size_images(
    settings: Settings, small_reference: Path, shared_data: Path, baseline_model: Path
) -> None:
    from training.data import read_labelled_folder
    from training.datasets import patients_of_split
    from training.stress import CHANGES

    with Database(settings.database_url).session() as session:
        version = registry.import_model(
            session, Storage(settings.storage_dir), baseline_model
        ).version
    origres = shared_data / "origres"
    report, table = evaluate_cli(
        settings,
        "--data",
        str(small_reference),
        "--model",
        version,
        "--stress",
        "--split",
        "holdout",
        "--origres",
        str(origres),
    )
    held_out = patients_of_split(read_labelled_folder(small_reference), "holdout")
    assert held_out
    assert report["split"] == "holdout"
    assert sum(report["images"].values()) == report["n"] < 60
    stressed = report["stressed"]
    assert set(stressed["changes"]) == set(CHANGES)
    assert stressed["worst_auroc"] == min(c["auroc"] for c in stressed["changes"].values())
    assert stressed["n"] == report["n"]
    for name in CHANGES:
        assert name in table
    assert "stressed" in table
    # Full-size images of exactly the held-out patients, decoded as scoring decodes them.
    full_size = [s for s in read_labelled_folder(origres) if s.patient in held_out]
    assert full_size
    assert report["origres"]["n"] == len(full_size)
    assert report["origres"]["images"] == {
        name: sum(1 for s in full_size if s.label == label)
        for label, name in enumerate(("NORMAL", "PNEUMONIA"))
    }


def test_a_run_whose_worker_was_lost_stops_blocking_after_the_stale_limit(
    settings: Settings, small_reference: Path
) -> None:
    from datetime import timedelta

    from core.models import utcnow

    params = TrainingParams.from_settings(settings.model_copy(update={"data_dir": small_reference}))
    db = Database(settings.database_url)
    with db.session() as session:
        lost, _ = request_run(session, params, "test")
        lost.status, lost.heartbeat_at = RunStatus.RUNNING, utcnow() - timedelta(minutes=30)
        lost_id = lost.id
    with pytest.raises(TrainingBusyError), db.session() as session:
        request_run(session, params, "test", stale_after=timedelta(hours=1))
    with db.session() as session:
        fresh, created = request_run(session, params, "test", stale_after=timedelta(minutes=10))
        assert created
        assert fresh.status == RunStatus.QUEUED
        old = session.get(TrainingRun, lost_id)
        assert old is not None
        assert old.status == RunStatus.FAILED
        assert "no sign of life for 10 minutes" in (old.error or "")


def test_cli_train_shows_progress_registers_and_refuses_a_concurrent_run(
    settings: Settings, small_reference: Path
) -> None:
    import subprocess
    import sys

    from tests.support import REPO, settings_env

    command = [
        sys.executable,
        "-m",
        "cli",
        "train",
        "--data",
        str(small_reference),
        "--architecture",
        "baseline_cnn",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--activate",
        "always",
    ]
    env = settings_env(settings)
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "training run 1: baseline_cnn, 2 epochs" in result.stderr
    assert "epoch 2/2" in result.stderr  # the progress bar's label
    assert "activated" in result.stderr
    with Database(settings.database_url).session() as session:
        assert registry.active_version(session) is not None
        # A run queued elsewhere (say, by the API) blocks the command with a clear message.
        request_run(
            session, TrainingParams.from_settings(settings, data_dir=str(small_reference)), "api"
        )
    blocked = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert blocked.returncode != 0
    assert "training run 2 is already queued or running" in blocked.stderr


def test_a_label_contradicting_the_reference_is_kept_not_trained_on_and_labels_are_capped(
    tmp_path: Path, small_reference: Path
) -> None:
    """One reviewer's label cannot overturn the reference label of the same bytes; a run reads
    at most PNEUMOSCAN_MAX_TRAINING_LABELS labels, the newest, and says what it set aside."""
    from core.ingest import ingest_job
    from core.labels import set_label
    from core.models import Label, utcnow
    from training.datasets import gather_datasets

    stack = training_stack(tmp_path, small_reference, max_training_labels=4)
    try:
        sick = sorted((small_reference / "PNEUMONIA").iterdir())
        well = sorted((small_reference / "NORMAL").iterdir())
        members = [
            ("new-1.jpeg", jpeg_bytes(quality=60)),
            ("contradicts.jpeg", sick[0].read_bytes()),
            ("agrees.jpeg", sick[1].read_bytes()),
            ("agrees-too.jpeg", well[0].read_bytes()),
            ("new-2.jpeg", jpeg_bytes(quality=70)),
        ]
        job_id = stack.submit_zip(zip_bytes(members))["id"]
        storage = Storage(stack.settings.storage_dir)
        ingest_job(stack.db, storage, stack.settings, job_id)
        labels = ["NORMAL", "NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA"]  # the oldest first
        with stack.db.session() as session:
            images = {i.relative_path: i for i in session.scalars(select(Image))}
            for image in images.values():
                image.scored_at, image.probability = utcnow(), 0.5
        for (name, _), label in zip(members, labels, strict=True):
            with stack.db.session() as session:
                set_label(session, images[name].id, label, "dr-a")

        data = gather_datasets(stack.db, storage, stack.settings, small_reference)
        summary = data.summary()
        assert summary["confirmed_labels_left_out"] == 1  # new-1, the oldest of five
        assert summary["confirmed_labels_set_aside"] == 1  # contradicts.jpeg
        assert summary["confirmed_labels"] == 3
        contradicted = images["contradicts.jpeg"].sha256
        trained = [
            s for s in (*data.train, *data.validation, *data.holdout) if s.sha256 == contradicted
        ]
        assert [(s.source, s.label) for s in trained] == [("reference", 1)]  # still PNEUMONIA
        sources = {s.sha256: s.source for s in (*data.train, *data.validation, *data.holdout)}
        assert sources.get(images["new-2.jpeg"].sha256) == "label"
        assert images["new-1.jpeg"].sha256 not in sources
        with stack.db.session() as session:
            assert session.scalar(select(func.count()).select_from(Label)) == 5  # all kept
    finally:
        stack.close()
