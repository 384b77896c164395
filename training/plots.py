"""The plots of a version: confusion matrix, ROC, reliability and training curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


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
    if "calibration" in holdout:
        _plot_reliability(plt, metrics, out_dir / "reliability.png")
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
    _save(plt, fig, path)


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
    _save(plt, fig, path)


def _plot_reliability(plt: Any, metrics: dict[str, Any], path: Path) -> None:
    """Observed pneumonia rate against predicted probability, per bin, for each split."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for split in ("validation", "holdout"):
        calibration = metrics.get(split, {}).get("calibration")
        if calibration is None:
            continue
        bins = calibration["bins"]
        points = [
            (p, o)
            for p, o, n in zip(bins["predicted"], bins["observed"], bins["count"], strict=True)
            if n
        ]
        ax.plot(
            *zip(*points, strict=True), marker="o", label=f"{split} (ECE {calibration['ece']:.3f})"
        )
    ax.set_xlabel("predicted probability of pneumonia")
    ax.set_ylabel("observed rate of pneumonia")
    ax.set_title("reliability")
    ax.legend(loc="upper left")
    _save(plt, fig, path)


def _plot_history(plt: Any, history: list[dict[str, float]], path: Path) -> None:
    epochs = [entry["epoch"] for entry in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    panels = (
        ("loss", (("loss", "training"), ("val_loss", "validation"))),
        ("accuracy", (("accuracy", "training"), ("val_accuracy", "validation"))),
        ("AUROC", (("val_auroc", "validation"), ("val_stressed_auroc", "stressed validation"))),
    )
    for ax, (title, curves) in zip(axes, panels, strict=True):
        for key, name in curves:
            values = [entry.get(key) for entry in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.legend()
    _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
