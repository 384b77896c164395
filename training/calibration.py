"""Probabilities that mean what they say: temperature scaling, calibration error, reliability.

A network trained with class weights and until its training loss is small is overconfident
and leans towards the class it was weighted to. Temperature scaling (Guo et al., 2017) divides
its logit by one number T fitted on validation, which keeps the ranking (AUROC) and changes
only how far the probabilities sit from 0.5. The scaled network is the same network: its last
layer, Dense(1, sigmoid), gets its kernel and bias divided by T, so the saved artifact scores
calibrated probabilities and scoring needs nothing new.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 15
_EPSILON = 1e-7


def logits(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), _EPSILON, 1 - _EPSILON)
    return np.log(p / (1 - p))


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities a network divided by `temperature` gives."""
    return 1 / (1 + np.exp(-logits(probabilities) / temperature))


def fit_temperature(y: np.ndarray, probabilities: np.ndarray) -> float:
    """The T minimising the log loss of sigmoid(logit / T) on these labels.

    The loss is convex in 1/T, so Newton's method on 1/T from 1 converges in a few steps.
    """
    z, target = logits(probabilities), y.astype(np.float64)
    inverse = 1.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-inverse * z))
        gradient = np.mean((p - target) * z)
        curvature = np.mean(p * (1 - p) * z * z)
        if curvature <= 1e-12:
            break
        step = gradient / curvature
        inverse = float(np.clip(inverse - step, 1e-3, 1e3))
        if abs(step) < 1e-9:
            break
    return 1.0 / inverse


def reliability(y: np.ndarray, probabilities: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Equal-width bins of predicted probability: count, mean prediction, observed rate; and
    the expected calibration error, their count-weighted mean gap."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(index, probabilities, bins) / counts
        observed = np.bincount(index, y.astype(np.float64), bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] * np.abs(predicted[filled] - observed[filled])) / len(y))
    return {
        "ece": round(ece, 4),
        "bins": {
            "count": counts.tolist(),
            "predicted": [
                round(float(v), 4) if f else None for v, f in zip(predicted, filled, strict=True)
            ],
            "observed": [
                round(float(v), 4) if f else None for v, f in zip(observed, filled, strict=True)
            ],
        },
    }


def apply_temperature(network: Any, temperature: float) -> None:
    """Divide the logit of `network` (ending in Dense(1, sigmoid)) by `temperature`, in place."""
    last = network.layers[-1]
    if getattr(getattr(last, "activation", None), "__name__", "") != "sigmoid":
        raise ValueError(f"{network.name} does not end in a sigmoid Dense layer")
    kernel, bias = last.get_weights()
    last.set_weights([kernel / temperature, bias / temperature])
