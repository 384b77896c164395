"""Probabilities that mean what they say: temperature scaling, calibration error, reliability.

A network trained until its training loss is small is overconfident: temperature scaling (Guo
et al., 2017) divides its logit by one number T fitted on validation, which keeps the ranking
(AUROC) and changes only how far the probabilities sit from 0.5. Trained with class weights,
it also answers as if both classes were equally common: its logit is off by the log of the
prior ratio, which no temperature can undo (measured: the temperature alone left a validation
calibration error of 0.108, more than before it). So the logit is divided by T and shifted by
an offset b, both fitted together on validation by maximum likelihood (Platt scaling, of
which temperature scaling is the case b = 0). The calibrated network is the same network: its
last layer, Dense(1, sigmoid), gets its kernel divided by T and its bias by T then shifted by
b, so the saved artifact scores calibrated probabilities and scoring needs nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BINS = 15
_EPSILON = 1e-7


def logits(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), _EPSILON, 1 - _EPSILON)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Calibration:
    """sigmoid(logit / temperature + offset): what the calibrated network computes."""

    temperature: float = 1.0
    offset: float = 0.0

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(logits(probabilities) / self.temperature + self.offset)))


def fit_calibration(y: np.ndarray, probabilities: np.ndarray, offset: bool = True) -> Calibration:
    """The temperature (and offset) minimising the log loss on these labels.

    The loss is convex in (1/T, b): a logistic regression on the logit, solved by Newton's
    method from (1, 0), each step halved until the loss falls. Nearly separable validation
    scores have no finite best temperature (the loss keeps falling as T shrinks), so a small
    pull towards (1, 0) keeps the answer finite, and both stay within `_BOUNDS`.
    `offset=False` fits the temperature alone.
    """
    z, target = logits(probabilities), y.astype(np.float64)
    features = np.stack([z, np.ones_like(z)], axis=1) if offset else z[:, None]
    prior = np.r_[1.0, 0.0][: features.shape[1]]
    low, high = (np.array(bound)[: features.shape[1]] for bound in _BOUNDS)

    def loss(w: np.ndarray) -> float:
        margin = features @ w
        nll = np.mean(np.logaddexp(0.0, margin) - target * margin)
        return float(nll + _PULL * np.sum((w - prior) ** 2))

    weights = prior.copy()
    for _ in range(100):
        p = 1 / (1 + np.exp(-features @ weights))
        gradient = features.T @ (p - target) / len(z) + 2 * _PULL * (weights - prior)
        curvature = (features * (p * (1 - p))[:, None]).T @ features / len(z)
        step = np.linalg.solve(curvature + 2 * _PULL * np.eye(len(weights)), gradient)
        current, scale = loss(weights), 1.0
        while scale > 1e-6:
            candidate = np.clip(weights - scale * step, low, high)
            if loss(candidate) <= current:
                break
            scale /= 2
        else:
            break
        moved = np.max(np.abs(candidate - weights))
        weights = candidate
        if moved < 1e-10:
            break
    return Calibration(1.0 / float(weights[0]), float(weights[1]) if offset else 0.0)


_PULL = 1e-4  # per parameter, against a mean log loss of about 0.1
_BOUNDS = ((0.05, -10.0), (20.0, 10.0))  # (1/T, b): T between 0.05 and 20


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


def calibrate_network(network: Any, calibration: Calibration) -> None:
    """Make `network` (ending in Dense(1, sigmoid)) compute sigmoid(logit / T + b), in place."""
    last = network.layers[-1]
    if getattr(getattr(last, "activation", None), "__name__", "") != "sigmoid":
        raise ValueError(f"{network.name} does not end in a sigmoid Dense layer")
    kernel, bias = last.get_weights()
    t, b = calibration.temperature, calibration.offset
    last.set_weights([kernel / t, (bias / t + b).astype(bias.dtype)])
