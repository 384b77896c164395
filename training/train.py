"""A training run from start to finish: data, fit, threshold, holdout, registry, gate.

The Celery task `train_model` and `pneumoscan train` both call `run_training`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from core.config import Settings
from core.db import Database
from core.inference import configure_tensorflow, predict_padded
from core.labels import labelled_images, newest_label_time
from core.models import RunStatus
from core.registry import MODEL_FILENAME, register_version
from core.storage import Storage
from core.training_runs import TrainingParams, finish_run, record_epoch, start_run
from training.data import (
    CLASSES,
    Arrays,
    Sample,
    class_counts,
    class_weights,
    exclude_overlap,
    load_arrays,
    patient_of,
    read_labelled_folder,
    split_by_patient,
    with_threshold_copies,
)
from training.evaluate import (
    EVAL_BATCH,
    binary_metrics,
    choose_threshold,
    evaluate_network,
    write_report,
)
from training.gate import promote_if_allowed
from training.model import DEFAULT_INPUT_SIZE, compile_model, make_model

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.15
VALIDATION_FRACTION = 0.15
SEED = 20180222  # Kermany et al., Cell, published 22 February 2018


class Progress(Protocol):
    """What a front end (the CLI's progress bar) hears while a run trains."""

    def started(self, epochs: int, steps_per_epoch: int) -> None: ...

    def step(self) -> None: ...

    def epoch_done(self, epoch: int, logs: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: str
    version: str | None = None
    activated: bool = False
    decision: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Datasets:
    train: list[Sample]
    validation: list[Sample]
    holdout: list[Sample]
    holdout_source: str
    labels_used: int
    labels_until: datetime | None

    def summary(self) -> dict[str, Any]:
        return {
            "train": class_counts(self.train),
            "validation": class_counts(self.validation),
            "holdout": class_counts(self.holdout),
            "holdout_source": self.holdout_source,
            "confirmed_labels": self.labels_used,
            "patients": {
                "train": len({s.patient for s in self.train}),
                "validation": len({s.patient for s in self.validation}),
                "holdout": len({s.patient for s in self.holdout}),
            },
        }


def gather_datasets(db: Database, storage: Storage, settings: Settings, data_dir: Path) -> Datasets:
    """Reference folder plus confirmed labels, split by patient into train, validation, holdout."""
    reference = read_labelled_folder(data_dir)
    with db.session() as session:
        labelled, until = labelled_images(session), newest_label_time(session)
    confirmed = [
        Sample(
            storage.resolve(item.location),
            CLASSES.index(item.label),
            patient_of(Path(item.relative_path).name, f"file:{item.sha256}"),
            item.sha256,
            "label",
            item.format,
            item.span,
        )
        for item in labelled
        if storage.resolve(item.location).is_file()
    ]
    if settings.holdout_dir is not None:
        pool, holdout = reference, read_labelled_folder(settings.holdout_dir)
        source = str(settings.holdout_dir)
    else:
        pool, holdout = split_by_patient(reference, HOLDOUT_FRACTION, "holdout")
        source = f"{int(HOLDOUT_FRACTION * 100)} % of {data_dir} by patient"
    # A confirmed label overrides the reference label of the same bytes.
    relabelled = {s.sha256 for s in confirmed}
    pool = exclude_overlap([s for s in pool if s.sha256 not in relabelled] + confirmed, holdout)
    train, validation = split_by_patient(pool, VALIDATION_FRACTION, "validation")
    datasets = Datasets(train, validation, holdout, source, len(confirmed), until)
    for name in ("train", "validation", "holdout"):
        counts = class_counts(getattr(datasets, name))
        if min(counts.values()) == 0:
            raise ValueError(f"the {name} split lacks a class: {counts}; more data is needed")
    return datasets


def run_training(
    db: Database,
    storage: Storage,
    settings: Settings,
    run_id: int,
    progress: Progress | None = None,
) -> RunOutcome:
    """Train, evaluate, register and gate one run; a failure is recorded on the run."""
    with db.session() as session:
        run = start_run(session, run_id)
        if run is None:
            return RunOutcome(run_id, "ignored", error="the run already finished")
        params = TrainingParams(**run.params)
    try:
        return _train_and_register(db, storage, settings, run_id, params, progress)
    except Exception as exc:
        log.exception("training run %s failed", run_id)
        error = f"{type(exc).__name__}: {exc}"
        with db.session() as session:
            finish_run(session, run_id, RunStatus.FAILED, error=error[:2000])
        return RunOutcome(run_id, RunStatus.FAILED, error=error)
    except BaseException:
        # Ctrl-C or a worker shutdown: record it, so the run does not block the next one.
        with db.session() as session:
            finish_run(session, run_id, RunStatus.FAILED, error="interrupted")
        raise


def _train_and_register(
    db: Database,
    storage: Storage,
    settings: Settings,
    run_id: int,
    params: TrainingParams,
    progress: Progress | None,
) -> RunOutcome:
    started = time.monotonic()
    # GPU memory growth only: training takes every core TensorFlow wants (the thread settings
    # are tuned for scoring workers, which share their cores with decoding).
    configure_tensorflow(intra_op_threads=0, inter_op_threads=0)
    data = gather_datasets(db, storage, settings, Path(params.data_dir))
    train, validation, holdout = (
        load_arrays(part, DEFAULT_INPUT_SIZE, settings.decode_threads, settings.max_image_pixels)[0]
        for part in (data.train, data.validation, data.holdout)
    )
    log.info("run %s: data %s", run_id, data.summary())
    network, recorder = _fit(
        db, run_id, params, train, validation, progress, settings.mixed_precision
    )
    history = recorder.history

    threshold, metrics = _measure(network, validation, holdout, settings.min_sensitivity)
    metrics.update(
        data=data.summary(),
        params={
            "architecture": params.architecture,
            "epochs": params.epochs,
            "batch_size": params.batch_size,
            "augment": params.augment,
            "weights": params.weights,
        },
        best_epoch=recorder.best_epoch,
        training_seconds=round(time.monotonic() - started, 1),
    )
    version = _register(db, storage, run_id, params, network, threshold, metrics, history)
    decision = promote_if_allowed(
        db,
        storage,
        version,
        metrics["holdout"],
        holdout,
        min_sensitivity=settings.min_sensitivity,
        auroc_margin=settings.gate_auroc_margin,
        policy=params.activate,
        keep_inactive=settings.keep_inactive_models,
    )
    if decision.active_metrics is not None:
        metrics["gate"] = {
            "active_version": decision.active_version,
            "active_holdout": decision.active_metrics,
        }
    with db.session() as session:
        finish_run(
            session,
            run_id,
            RunStatus.COMPLETED,
            metrics=metrics,
            decision=decision.reason,
            activated=decision.activate,
            labels_used=data.labels_used,
            labels_until=data.labels_until,
        )
    log.info("run %s: version %s, %s", run_id, version, decision.reason)
    return RunOutcome(run_id, RunStatus.COMPLETED, version, decision.activate, decision.reason)


def _measure(
    network: Any, validation: Arrays, holdout: Arrays, min_sensitivity: float
) -> tuple[float, dict[str, Any]]:
    """The threshold, chosen on validation, and the metrics; the holdout only measures."""
    val_scores = predict_padded(network, validation.x.astype(np.float32), EVAL_BATCH)
    threshold = choose_threshold(validation.y, val_scores, min_sensitivity)
    return threshold, {
        "validation": binary_metrics(validation.y, val_scores, threshold),
        "holdout": evaluate_network(network, holdout, threshold),
        "threshold_rule": f"highest with validation sensitivity >= {min_sensitivity}",
    }


def _fit(
    db: Database,
    run_id: int,
    params: TrainingParams,
    train: Arrays,
    validation: Arrays,
    progress: Progress | None,
    mixed_precision: bool = False,
) -> tuple[Any, _RunRecorder]:
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    # float16 compute on GPUs; the saved model keeps the policy, so scoring uses it too.
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    weights = None if params.weights == "none" else params.weights
    network = make_model(params.architecture, train.x.shape[1], weights)
    compile_model(network)
    if params.augment in ("threshold", "both"):
        train = with_threshold_copies(train)
    dataset = tf.data.Dataset.from_tensor_slices((train.x, train.y)).shuffle(
        len(train.y), seed=SEED, reshuffle_each_iteration=True
    )
    dataset = dataset.batch(params.batch_size).map(_augmenter(params.augment)).prefetch(2)
    steps = int(np.ceil(len(train.y) / params.batch_size))
    if progress is not None:
        progress.started(params.epochs, steps)
    recorder = _RunRecorder(db, run_id, progress)
    network.fit(
        dataset,
        epochs=params.epochs,
        validation_data=(validation.x.astype(np.float32), validation.y),
        class_weight=class_weights(train.y),
        callbacks=[recorder],
        shuffle=False,  # the dataset shuffles itself
        verbose=0,
    )
    return network, recorder


def _augmenter(augment: str) -> Any:
    import tensorflow as tf

    if augment not in ("standard", "both"):
        return lambda x, y: (tf.cast(x, tf.float32), y)
    # Light and anatomy-preserving: no flips (the heart sits on one side).
    layers = keras.Sequential(
        [
            keras.layers.RandomRotation(0.03, fill_mode="constant", seed=SEED),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=SEED),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=SEED),
            keras.layers.RandomContrast(0.1, seed=SEED),
        ]
    )
    return lambda x, y: (layers(tf.cast(x, tf.float32), training=True), y)


class _RunRecorder(keras.callbacks.Callback):
    """Writes each epoch's metrics to the run, feeds the progress display, and keeps the
    weights of the epoch with the best validation AUROC, restored when training ends."""

    def __init__(self, db: Database, run_id: int, progress: Progress | None) -> None:
        super().__init__()
        self.db, self.run_id, self.progress = db, run_id, progress
        self.history: list[dict[str, float]] = []
        self.best_epoch, self.best_auroc = 0, -1.0
        self._best_weights: list[Any] | None = None

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if self.progress is not None:
            self.progress.step()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        values = {key: float(value) for key, value in (logs or {}).items()}
        self.history.append({"epoch": epoch + 1, **values})
        if values.get("val_auroc", -1.0) > self.best_auroc:
            self.best_epoch, self.best_auroc = epoch + 1, values["val_auroc"]
            self._best_weights = self.model.get_weights()
        with self.db.session() as session:
            record_epoch(session, self.run_id, epoch + 1, values)
        if self.progress is not None:
            self.progress.epoch_done(epoch + 1, values)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        # Validation may choose the epoch; the holdout never chooses anything.
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)


def _register(
    db: Database,
    storage: Storage,
    run_id: int,
    params: TrainingParams,
    network: Any,
    threshold: float,
    metrics: dict[str, Any],
    history: list[dict[str, float]],
) -> str:
    staging = storage.staging_dir()
    try:
        network.save(staging / MODEL_FILENAME)
        write_report(staging, metrics, history)
        with db.session() as session:
            row = register_version(
                session,
                storage,
                staging,
                architecture=params.architecture,
                threshold=threshold,
                origin="training",
                metrics=metrics,
                training_run_id=run_id,
            )
            return row.version
    finally:
        shutil.rmtree(staging, ignore_errors=True)
