"""A training run from start to finish: data, fit, threshold, holdout, registry, gate.

The Celery task `train_model` and `pneumoscan train` both call `run_training`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.activation import leave_to_the_sweep
from core.config import Settings
from core.db import Database
from core.models import RunStatus
from core.registry import MODEL_FILENAME, register_version
from core.storage import Storage
from core.training_runs import TrainingParams, finish_run, start_run
from training.calibration import calibrate_network, fit_calibration, reliability
from training.data import (
    Arrays,
)
from training.datasets import Splits, gather_datasets, load_splits
from training.evaluate import (
    auroc,
    choose_threshold,
    clean_metrics,
    evaluate_network,
    evaluate_stressed,
    predict,
)
from training.fit import Progress, train_members
from training.gate import GateRules, promote_if_allowed
from training.plots import write_report
from worker.model_cache import configure_tensorflow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: str
    version: str | None = None
    activated: bool = False
    decision: str | None = None
    error: str | None = None


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
    network, history, selection = train_members(
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
