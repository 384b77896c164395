"""A training run from start to finish: data, fit, threshold, holdout, registry, gate.

The Celery task `train_model` and `pneumoscan train` both call `run_training`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from core.activation import leave_to_the_sweep
from core.config import Settings
from core.db import Database
from core.imaging import Preprocessing
from core.labels import count_labels, labelled_images, newest_label_time
from core.models import RunStatus
from core.registry import MODEL_FILENAME, register_version
from core.storage import Storage
from core.training_runs import TrainingParams, finish_run, record_epoch, start_run
from training.augment import augmenter
from training.batchnorm import recalibrate_batch_norm
from training.calibration import calibrate_network, fit_calibration, reliability
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
    auroc,
    choose_threshold,
    clean_metrics,
    evaluate_network,
    evaluate_stressed,
    predict,
)
from training.gate import GateRules, promote_if_allowed
from training.model import averaged, compile_model, make_model
from training.plots import write_report
from training.stress import mixed, stressed_arrays
from worker.model_cache import configure_tensorflow

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.15
VALIDATION_FRACTION = 0.15


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
    labels_set_aside: int = 0  # they contradict the reference label of the same bytes
    labels_left_out: int = 0  # over PNEUMOSCAN_MAX_TRAINING_LABELS: the oldest wait

    def summary(self) -> dict[str, Any]:
        return {
            "train": class_counts(self.train),
            "validation": class_counts(self.validation),
            "holdout": class_counts(self.holdout),
            "holdout_source": self.holdout_source,
            "confirmed_labels": self.labels_used,
            "confirmed_labels_set_aside": self.labels_set_aside,
            "confirmed_labels_left_out": self.labels_left_out,
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
        labelled = labelled_images(session, settings.max_training_labels)
        until, left_out = newest_label_time(session), count_labels(session) - len(labelled)
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
    confirmed, set_aside = without_contradictions(confirmed, [*reference, *holdout])
    # A confirmed label that agrees with the reference stands in for the reference's copy.
    relabelled = {s.sha256 for s in confirmed}
    pool = exclude_overlap([s for s in pool if s.sha256 not in relabelled] + confirmed, holdout)
    train, validation = split_by_patient(pool, VALIDATION_FRACTION, "validation")
    datasets = Datasets(
        train, validation, holdout, source, len(confirmed), until, set_aside, left_out
    )
    for name in ("train", "validation", "holdout"):
        counts = class_counts(getattr(datasets, name))
        if min(counts.values()) == 0:
            raise ValueError(f"the {name} split lacks a class: {counts}; more data is needed")
    return datasets


def without_contradictions(
    confirmed: list[Sample], reference: list[Sample]
) -> tuple[list[Sample], int]:
    """The confirmed labels to train on, and how many were set aside: any label on bytes the
    reference labels otherwise, or that other confirmed labels call the other class. They stay
    recorded (a reviewer may be right), but one key cannot overturn the reference set, nor
    two reviewers' disagreement train the model either way."""
    classes: dict[str, set[int]] = {}
    for sample in [*reference, *confirmed]:
        classes.setdefault(sample.sha256, set()).add(sample.label)
    kept = [s for s in confirmed if len(classes[s.sha256]) == 1]
    return kept, len(confirmed) - len(kept)


def patients_of_split(reference: list[Sample], split: str) -> set[str] | None:
    """The patients of the reference folder a run puts in `split` (validation or holdout, as
    carved when no PNEUMOSCAN_HOLDOUT_DIR is set and before confirmed labels join), or None
    for all of them."""
    if split == "all":
        return None
    pool, holdout = split_by_patient(reference, HOLDOUT_FRACTION, "holdout")
    if split == "holdout":
        return {s.patient for s in holdout}
    if split == "validation":
        return {s.patient for s in split_by_patient(pool, VALIDATION_FRACTION, "validation")[1]}
    raise ValueError(f"unknown split {split!r}")


def run_training(
    db: Database,
    storage: Storage,
    settings: Settings,
    run_id: int,
    progress: Progress | None = None,
    release: Callable[[], None] = leave_to_the_sweep,
) -> RunOutcome:
    """Train, evaluate, register and gate one run; a failure is recorded on the run. An
    activated version releases the jobs waiting for a model through `release`."""
    with db.session() as session:
        run = start_run(session, run_id)
        if run is None:
            return RunOutcome(run_id, "ignored", error="the run already finished")
        params = TrainingParams(**run.params)
    try:
        return _train_and_register(db, storage, settings, run_id, params, progress, release)
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


@dataclass(frozen=True)
class Splits:
    """The decoded splits of a run, each made with the run's input size and preprocessing."""

    train: Arrays
    validation: Arrays
    holdout: Arrays
    validation_stressed: dict[str, Arrays]
    holdout_stressed: dict[str, Arrays]


def load_splits(data: Datasets, params: TrainingParams, settings: Settings) -> Splits:
    recipe = Preprocessing.parse(params.preprocessing)
    decode = (params.input_size, settings.decode_threads, settings.max_image_pixels, recipe)
    train, validation, holdout = (
        load_arrays(part, *decode)[0] for part in (data.train, data.validation, data.holdout)
    )
    return Splits(
        train,
        validation,
        holdout,
        stressed_arrays(data.validation, *decode),
        stressed_arrays(data.holdout, *decode),
    )


def _train_and_register(
    db: Database,
    storage: Storage,
    settings: Settings,
    run_id: int,
    params: TrainingParams,
    progress: Progress | None,
    release: Callable[[], None],
) -> RunOutcome:
    started = time.monotonic()
    # GPU memory growth only: training takes every core TensorFlow wants (the thread settings
    # are tuned for scoring workers, which share their cores with decoding).
    configure_tensorflow(intra_op_threads=0, inter_op_threads=0)
    data = gather_datasets(db, storage, settings, Path(params.data_dir))
    splits = load_splits(data, params, settings)
    log.info("run %s: data %s", run_id, data.summary())
    network, history, selection = _train_members(
        db, run_id, params, splits, progress, settings.mixed_precision
    )
    calibration = calibrate(network, splits.validation)
    threshold, metrics = measure(network, splits, settings.min_sensitivity)
    recorded = {k: v for k, v in asdict(params).items() if k not in ("data_dir", "force")}
    metrics.update(
        data=data.summary(),
        params=recorded,
        selection=selection,
        calibration=calibration,
        training_seconds=round(time.monotonic() - started, 1),
    )
    version = _register(db, storage, run_id, params, network, threshold, metrics, history)
    decision = promote_if_allowed(
        db,
        storage,
        version,
        metrics["holdout"],
        metrics["holdout_stressed"],
        data.holdout,
        GateRules(
            settings.min_sensitivity,
            settings.gate_auroc_margin,
            settings.gate_specificity_margin,
            params.activate,
        ),
        threads=settings.decode_threads,
        max_pixels=settings.max_image_pixels,
        keep_inactive=settings.keep_inactive_models,
        release=release,
    )
    if decision.active_metrics is not None:
        metrics["gate"] = {
            "active_version": decision.active_version,
            "active_holdout": decision.active_metrics,
            "active_holdout_stressed": decision.active_stressed,
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


def _train_members(
    db: Database,
    run_id: int,
    params: TrainingParams,
    splits: Splits,
    progress: Progress | None,
    mixed_precision: bool,
) -> tuple[Any, list[dict[str, float]], list[dict[str, Any]]]:
    """Train the ensemble's members one after the other (one seed each), recalibrate their
    BatchNorm statistics if asked, and join them (and the test-time views) into one model."""
    members, history, selection = [], [], []
    for member in range(params.ensemble):
        network, recorder = _fit(db, run_id, params, splits, progress, member, mixed_precision)
        if params.batch_norm_recalibration:
            recalibrate_batch_norm(network, splits.train.x, params.batch_size, params.seed + member)
        members.append(network)
        history += recorder.history
        selection.append(
            {
                "member": member,
                "seed": params.seed + member,
                "epoch": recorder.best_epoch,
                "val_stressed_auroc": recorder.best_score,
            }
        )
    if len(members) == 1 and params.tta_views == 1:
        return members[0], history, selection
    return averaged(members, params.tta_views), history, selection


def calibrate(network: Any, validation: Arrays) -> dict[str, Any]:
    """Fit a temperature and an offset on validation and apply them to the network, in place;
    the calibration error before, with the temperature alone, and with both, is recorded.

    Calibration must not change the ranking: if the calibrated network ranks validation worse
    (float32 saturating at an extreme temperature would tie its top scores), it is undone."""
    scores = predict(network, validation)
    fitted = fit_calibration(validation.y, scores)
    temperature_only = fit_calibration(validation.y, scores, offset=False)
    last = network.layers[-1]
    original = last.get_weights()
    calibrate_network(network, fitted)
    before, after = auroc(validation.y, scores), auroc(validation.y, predict(network, validation))
    if before is not None and (after is None or after < before - 1e-3):
        last.set_weights(original)
        log.warning("calibration undone: validation AUROC %s became %s", before, after)
        return {"undone": f"validation AUROC {before:.4f} became {after} when calibrated"}
    return {
        "temperature": round(fitted.temperature, 4),
        "offset": round(fitted.offset, 4),
        "validation_ece_before": reliability(validation.y, scores)["ece"],
        "validation_ece_temperature_only": reliability(
            validation.y, temperature_only.apply(scores)
        )["ece"],
        "validation_ece_after": reliability(validation.y, fitted.apply(scores))["ece"],
    }


def measure(network: Any, splits: Splits, min_sensitivity: float) -> tuple[float, dict[str, Any]]:
    """The threshold, chosen on (calibrated) validation, and the metrics, clean and stressed;
    the holdout only measures."""
    validation = splits.validation
    val_scores = predict(network, validation)
    threshold = choose_threshold(validation.y, val_scores, min_sensitivity)
    return threshold, {
        "validation": clean_metrics(
            validation.y, val_scores, threshold, validation.groups, min_sensitivity
        ),
        "validation_stressed": evaluate_stressed(
            network, splits.validation_stressed, threshold, min_sensitivity
        ),
        "holdout": evaluate_network(network, splits.holdout, threshold, min_sensitivity),
        "holdout_stressed": evaluate_stressed(
            network, splits.holdout_stressed, threshold, min_sensitivity
        ),
        "threshold_rule": f"highest with validation sensitivity >= {min_sensitivity}",
    }


def _fit(
    db: Database,
    run_id: int,
    params: TrainingParams,
    splits: Splits,
    progress: Progress | None,
    member: int = 0,
    mixed_precision: bool = False,
) -> tuple[Any, _RunRecorder]:
    import tensorflow as tf

    seed = params.seed + member
    keras.utils.set_random_seed(seed)
    # float16 compute on GPUs; the saved model keeps the policy, so scoring uses it too.
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    weights = None if params.weights == "none" else params.weights
    network = make_model(params.architecture, params.input_size, weights)
    train = splits.train
    if params.augment in ("threshold", "both"):
        train = with_threshold_copies(train)
    steps = int(np.ceil(len(train.y) / params.batch_size))
    cosine = params.optimizer.endswith("cosine")
    compile_model(
        network,
        params.optimizer,
        params.label_smoothing,
        total_steps=steps * params.epochs,
        warmup_steps=steps if cosine and params.epochs > 1 else 0,
    )
    dataset = tf.data.Dataset.from_tensor_slices((train.x, train.y)).shuffle(
        len(train.y), seed=seed, reshuffle_each_iteration=True
    )
    dataset = dataset.batch(params.batch_size).map(augmenter(params.augment, seed)).prefetch(2)
    if progress is not None and member == 0:
        progress.started(params.total_epochs, steps)
    selection_set = mixed(splits.validation_stressed)
    recorder = _RunRecorder(db, run_id, progress, selection_set, member * params.epochs)
    validation = splits.validation
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


class _RunRecorder(keras.callbacks.Callback):
    """Writes each epoch's metrics to the run, feeds the progress display, and keeps the
    weights of the epoch with the best AUROC on the stressed validation images (each under
    one change), restored when training ends: the epoch is chosen for holding up under the
    shift, not for the clean validation alone."""

    def __init__(
        self,
        db: Database,
        run_id: int,
        progress: Progress | None,
        selection_set: Arrays,
        epoch_offset: int = 0,
    ) -> None:
        super().__init__()
        self.db, self.run_id, self.progress = db, run_id, progress
        self.selection_set, self.epoch_offset = selection_set, epoch_offset
        self.history: list[dict[str, float]] = []
        self.best_epoch, self.best_score = 0, -1.0
        self._best_weights: list[Any] | None = None

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if self.progress is not None:
            self.progress.step()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        values = {key: float(value) for key, value in (logs or {}).items()}
        scores = predict(self.model, self.selection_set)
        values["val_stressed_auroc"] = auroc(self.selection_set.y, scores) or 0.0
        number = self.epoch_offset + epoch + 1
        self.history.append({"epoch": number, **values})
        if values["val_stressed_auroc"] > self.best_score:
            self.best_epoch, self.best_score = epoch + 1, values["val_stressed_auroc"]
            self._best_weights = self.model.get_weights()
        with self.db.session() as session:
            record_epoch(session, self.run_id, number, values)
        if self.progress is not None:
            self.progress.epoch_done(number, values)

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
                preprocessing=params.preprocessing,
                origin="training",
                metrics=metrics,
                training_run_id=run_id,
            )
            return row.version
    finally:
        shutil.rmtree(staging, ignore_errors=True)
