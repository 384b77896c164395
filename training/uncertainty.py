"""Bootstrap intervals: how far a figure on a few hundred images could move by chance alone.

Images of one patient are alike, so patients are resampled, not images (a cluster bootstrap):
resampling images would count a patient's near-duplicate films as independent evidence and
give intervals that are too narrow. Each resample is a vector of weights over the images (how
often its patient was drawn), and every figure is computed with those weights, so one set of
resamples serves the clean images and all their stressed copies alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 624  # any fixed seed: the same data always gets the same intervals


def patient_weights(
    groups: np.ndarray | None, n: int, resamples: int = RESAMPLES, seed: int = SEED
) -> np.ndarray:
    """(resamples, n) weights: each resample draws as many patients as there are, with
    replacement, and weighs every image by how often its patient was drawn."""
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = np.arange(n)
    _, index = np.unique(groups, return_inverse=True)
    patients = int(index.max()) + 1 if n else 0
    drawn = rng.multinomial(patients, np.full(patients, 1 / max(patients, 1)), size=resamples)
    return drawn[:, index].astype(np.float64)


def weighted_auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC under each row of `weights` (ties count half): the weighted Mann-Whitney U."""
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ranked)) + 1]
    w = weights[:, order]
    positive = y[order].astype(bool)
    neg = np.add.reduceat(w * ~positive, starts, axis=1)
    pos = np.add.reduceat(w * positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / pairs


def weighted_rates(
    y: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Accuracy, sensitivity and specificity at `threshold` under each row of `weights`."""
    predicted = scores >= threshold
    actual = y.astype(bool)
    tp = weights @ (predicted & actual)
    tn = weights @ (~predicted & ~actual)
    positives, negatives = weights @ actual, weights @ ~actual
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / (positives + negatives),
            "sensitivity": tp / positives,
            "specificity": tn / negatives,
        }


def interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The central `level` percentile interval, or None when no resample defined the figure."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def clean_intervals(
    y: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None
) -> dict[str, list[float] | None]:
    """95 % intervals of AUROC, accuracy, sensitivity and specificity at `threshold`."""
    weights = patient_weights(groups, len(y))
    figures = {"auroc": weighted_auroc(y, scores, weights)}
    figures.update(weighted_rates(y, scores, threshold, weights))
    return {name: interval(values) for name, values in figures.items()}


def stressed_intervals(
    y: np.ndarray,
    scores_by_change: Mapping[str, np.ndarray],
    threshold: float,
    groups: np.ndarray | None,
) -> dict[str, list[float] | None]:
    """Intervals of the stressed summary: mean and worst AUROC over the changes, and the
    specificity and sensitivity at `threshold` over all stressed images, patients resampled
    together with all their stressed copies."""
    weights = patient_weights(groups, len(y))
    aurocs = np.stack([weighted_auroc(y, s, weights) for s in scores_by_change.values()])
    rates = [weighted_rates(y, s, threshold, weights) for s in scores_by_change.values()]
    specificity = np.stack([r["specificity"] for r in rates])
    sensitivity = np.stack([r["sensitivity"] for r in rates])
    return {
        "mean_auroc": interval(aurocs.mean(axis=0)),
        "worst_auroc": interval(aurocs.min(axis=0)),
        "specificity": interval(specificity.mean(axis=0)),
        "worst_specificity": interval(specificity.min(axis=0)),
        "sensitivity": interval(sensitivity.mean(axis=0)),
    }
