"""Honest evaluation: threshold chosen on validation, metrics and plots on the holdout, with
bootstrap intervals, calibration, and the same figures under the stressed changes."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.imaging import Preprocessing
from core.models import ModelVersion
from core.storage import Storage
from training.calibration import reliability
from training.data import Arrays, Sample, load_arrays
from training.stress import stressed_arrays
from training.uncertainty import clean_intervals, stressed_intervals
from worker.model_cache import load_network, predict_padded

EVAL_BATCH = 64


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, highest threshold first."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = y_true[order], scores[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    positives, negatives = max(y.sum(), 1), max(len(y) - y.sum(), 1)
    fpr = np.r_[0.0, fp / negatives]
    tpr = np.r_[0.0, tp / positives]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None when one class is absent."""
    positives = int(y_true.sum())
    if positives == 0 or positives == len(y_true):
        return None
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.trapezoid(tpr, fpr))


def choose_threshold(y_true: np.ndarray, scores: np.ndarray, min_sensitivity: float) -> float:
    """The highest threshold whose sensitivity on these labels is at least `min_sensitivity`.

    The highest such threshold gives the best specificity the sensitivity floor allows.
    """
    positive_scores = np.sort(scores[y_true == 1])[::-1]
    if len(positive_scores) == 0:
        return 0.5
    needed = int(np.ceil(min_sensitivity * len(positive_scores)))
    return float(positive_scores[max(needed, 1) - 1])


def binary_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    predicted = scores >= threshold
    actual = y_true.astype(bool)
    tp = int(np.sum(predicted & actual))
    tn = int(np.sum(~predicted & ~actual))
    fp = int(np.sum(predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    sensitivity = _ratio(tp, tp + fn)
    precision = _ratio(tp, tp + fp)
    f1 = None
    if sensitivity is not None and precision is not None and sensitivity + precision > 0:
        f1 = 2 * precision * sensitivity / (precision + sensitivity)
    return {
        "n": len(y_true),
        "positives": int(actual.sum()),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y_true)),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": f1,
        "auroc": auroc(y_true, scores),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def roc_points(y_true: np.ndarray, scores: np.ndarray, limit: int = 200) -> dict[str, list[float]]:
    """The ROC curve, thinned to at most `limit` points, for metrics.json and roc.png."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(limit, len(fpr))).astype(int))
    return {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()}


def clean_metrics(
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    groups: np.ndarray | None = None,
    min_sensitivity: float = 0.95,
) -> dict[str, Any]:
    """`binary_metrics` plus the ROC curve, 95 % intervals (patients resampled), calibration,
    and the specificity at the threshold these labels would choose (how well it ranks)."""
    return {
        **binary_metrics(y, scores, threshold),
        "specificity_at_sensitivity": _specificity_at(y, scores, min_sensitivity),
        "intervals": clean_intervals(y, scores, threshold, groups),
        "calibration": reliability(y, scores),
        "roc": roc_points(y, scores),
    }


def stressed_metrics(
    y: np.ndarray,
    scores_by_change: dict[str, np.ndarray],
    threshold: float,
    groups: np.ndarray | None = None,
    min_sensitivity: float = 0.95,
) -> dict[str, Any]:
    """Per change: AUROC, sensitivity and specificity at `threshold`, and specificity at the
    threshold the stressed labels would choose; then the mean and the worst over the changes."""
    changes = {}
    for name, scores in scores_by_change.items():
        at = binary_metrics(y, scores, threshold)
        changes[name] = {
            "auroc": at["auroc"],
            "sensitivity": at["sensitivity"],
            "specificity": at["specificity"],
            "specificity_at_sensitivity": _specificity_at(y, scores, min_sensitivity),
        }
    aurocs = {name: c["auroc"] if c["auroc"] is not None else 0.5 for name, c in changes.items()}
    specificity = {name: c["specificity"] or 0.0 for name, c in changes.items()}
    sensitivity = {name: c["sensitivity"] or 0.0 for name, c in changes.items()}
    worst_auroc = min(aurocs, key=aurocs.__getitem__)
    worst_specificity = min(specificity, key=specificity.__getitem__)
    return {
        "n": len(y),
        "threshold": float(threshold),
        "mean_auroc": float(np.mean(list(aurocs.values()))),
        "worst_auroc": aurocs[worst_auroc],
        "worst_auroc_change": worst_auroc,
        "specificity": float(np.mean(list(specificity.values()))),
        "worst_specificity": specificity[worst_specificity],
        "worst_specificity_change": worst_specificity,
        "sensitivity": float(np.mean(list(sensitivity.values()))),
        "worst_sensitivity": min(sensitivity.values()),
        "intervals": stressed_intervals(y, scores_by_change, threshold, groups),
        "changes": changes,
    }


def _specificity_at(y: np.ndarray, scores: np.ndarray, min_sensitivity: float) -> float | None:
    if y.sum() in (0, len(y)):
        return None
    return binary_metrics(y, scores, choose_threshold(y, scores, min_sensitivity))["specificity"]


def predict(network: Any, data: Arrays) -> np.ndarray:
    return predict_padded(network, data.x.astype(np.float32), EVAL_BATCH)


def evaluate_network(
    network: Any, data: Arrays, threshold: float, min_sensitivity: float = 0.95
) -> dict[str, Any]:
    """Metrics of a loaded model on labelled arrays at `threshold`, with its ROC curve."""
    return clean_metrics(data.y, predict(network, data), threshold, data.groups, min_sensitivity)


def evaluate_stressed(
    network: Any, stressed: dict[str, Arrays], threshold: float, min_sensitivity: float = 0.95
) -> dict[str, Any]:
    """`stressed_metrics` of a loaded model on the arrays `stress.stressed_arrays` made."""
    first = next(iter(stressed.values()))
    scores = {name: predict(network, arrays) for name, arrays in stressed.items()}
    return stressed_metrics(first.y, scores, threshold, first.groups, min_sensitivity)


def load_version(storage: Storage, version: ModelVersion) -> Any:
    return load_network(storage, version, EVAL_BATCH)


def measure_version(
    storage: Storage,
    version: ModelVersion,
    samples: list[Sample],
    threads: int,
    max_pixels: int,
    min_sensitivity: float,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(clean, stressed) metrics of a registered version on `samples`, decoded at its own
    input size with its own preprocessing, at its own threshold."""
    report = evaluate_samples(
        load_version(storage, version),
        version,
        samples,
        threads=threads,
        max_pixels=max_pixels,
        min_sensitivity=min_sensitivity,
        stress=True,
    )
    stressed = report.pop("stressed", None)  # absent when no sample could be decoded
    report.pop("unreadable")
    return report, stressed


def evaluate_samples(
    network: Any,
    version: ModelVersion,
    samples: list[Sample],
    *,
    threads: int,
    max_pixels: int,
    min_sensitivity: float,
    stress: bool = False,
) -> dict[str, Any]:
    """A loaded version's metrics on labelled samples, decoded as scoring decodes them (its
    input size and preprocessing, JPEGs in draft mode) at its own threshold; with `stress`,
    the stressed metrics too. How many samples could not be decoded is in `unreadable`."""
    recipe = Preprocessing.parse(version.preprocessing)
    size, threshold = version.input_size, version.threshold
    clean, unreadable = load_arrays(samples, size, threads, max_pixels, recipe)
    report: dict[str, Any] = {"unreadable": unreadable}
    if len(clean.y) == 0:
        return report
    report.update(evaluate_network(network, clean, threshold, min_sensitivity))
    if stress:
        stressed = stressed_arrays(samples, size, threads, max_pixels, recipe)
        report["stressed"] = evaluate_stressed(network, stressed, threshold, min_sensitivity)
    return report
