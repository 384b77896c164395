"""Honest evaluation: threshold chosen on validation, metrics and plots on the holdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.inference import predict_padded
from core.models import ModelVersion
from core.registry import verified_artifact
from core.storage import Storage
from training.data import Arrays

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


def evaluate_network(network: Any, data: Arrays, threshold: float) -> dict[str, Any]:
    """Metrics of a loaded model on labelled arrays at `threshold`, with its ROC curve."""
    scores = predict_padded(network, data.x.astype(np.float32), EVAL_BATCH)
    return {**binary_metrics(data.y, scores, threshold), "roc": roc_points(data.y, scores)}


def evaluate_version(storage: Storage, version: ModelVersion, data: Arrays) -> dict[str, Any]:
    """Metrics of a registered version on `data`, at the version's own threshold."""
    import keras

    network = keras.models.load_model(verified_artifact(storage, version), compile=False)
    return evaluate_network(network, data, version.threshold)


def write_report(
    out_dir: Path, metrics: dict[str, Any], history: list[dict[str, float]] | None = None
) -> None:
    """metrics.json, confusion_matrix.png, roc.png and (after training) training_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    holdout = metrics["holdout"]
    _plot_confusion(plt, holdout["confusion_matrix"], out_dir / "confusion_matrix.png")
    _plot_roc(plt, holdout, out_dir / "roc.png")
    if history:
        _plot_history(plt, history, out_dir / "training_curves.png")


def _plot_confusion(plt: Any, cm: dict[str, int], path: Path) -> None:
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(grid, cmap="Blues")
    for (row, col), value in np.ndenumerate(grid):
        ax.text(col, row, str(value), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_yticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("holdout confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_roc(plt: Any, holdout: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(
        holdout["roc"]["fpr"], holdout["roc"]["tpr"], label=f"AUROC {holdout['auroc'] or 0:.3f}"
    )
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    if holdout["specificity"] is not None and holdout["sensitivity"] is not None:
        ax.scatter(
            [1 - holdout["specificity"]],
            [holdout["sensitivity"]],
            color="red",
            zorder=3,
            label=f"threshold {holdout['threshold']:.3f}",
        )
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("holdout ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_history(plt: Any, history: list[dict[str, float]], path: Path) -> None:
    epochs = [entry["epoch"] for entry in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        for prefix, name in (("", "training"), ("val_", "validation")):
            values = [entry.get(prefix + key) for entry in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
