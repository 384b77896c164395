"""Metrics, the validation-chosen threshold, and the gate's rules."""

import numpy as np
import pytest

from training.evaluate import auroc, binary_metrics, choose_threshold
from training.gate import GateRules, gate_decision


def pairwise_auroc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(wins / (len(pos) * len(neg)))


def test_auroc_equals_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300).astype(float)
    scores = np.round(rng.random(300) + 0.3 * y, 1)  # rounding makes many ties
    assert auroc(y, scores) == pytest.approx(pairwise_auroc(y, scores))


def test_auroc_is_undefined_with_one_class() -> None:
    assert auroc(np.ones(5), np.linspace(0, 1, 5)) is None


def test_threshold_is_the_highest_keeping_the_sensitivity_floor() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.1, 0.05])
    threshold = choose_threshold(y, scores, 0.75)
    assert threshold == 0.7
    metrics = binary_metrics(y, scores, threshold)
    assert metrics["sensitivity"] == 0.75
    assert metrics["confusion_matrix"] == {"tn": 4, "fp": 0, "fn": 1, "tp": 3}
    assert choose_threshold(y, scores, 1.0) == 0.2


def test_binary_metrics_follow_their_definitions() -> None:
    y = np.array([1, 1, 0, 0, 0], dtype=float)
    scores = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    m = binary_metrics(y, scores, 0.5)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(1 / 2)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(1 / 2)


RULES = {"min_sensitivity": 0.9, "auroc_margin": 0.01, "specificity_margin": 0.02}


@pytest.mark.parametrize(
    ("candidate", "active", "policy", "activate"),
    [
        ({"auroc": 0.95, "sensitivity": 0.96}, {"auroc": 0.94}, "if-better", True),
        ({"auroc": 0.935, "sensitivity": 0.96}, {"auroc": 0.94}, "if-better", True),  # in margin
        ({"auroc": 0.90, "sensitivity": 0.96}, {"auroc": 0.94}, "if-better", False),
        ({"auroc": 0.99, "sensitivity": 0.80}, {"auroc": 0.94}, "if-better", False),
        ({"auroc": 0.99, "sensitivity": 0.96}, None, "if-better", True),
        ({"auroc": 0.50, "sensitivity": 0.10}, {"auroc": 0.94}, "always", True),
        ({"auroc": 0.99, "sensitivity": 0.99}, None, "never", False),
    ],
)
def test_gate_rules(candidate: dict, active: dict | None, policy: str, activate: bool) -> None:
    decision = gate_decision(candidate, active, GateRules(policy=policy, **RULES))
    assert decision.activate is activate
    assert decision.reason


ROBUST = {"mean_auroc": 0.95, "specificity": 0.80}


@pytest.mark.parametrize(
    ("stressed", "activate", "says"),
    [
        ({"mean_auroc": 0.96, "specificity": 0.85}, True, "within the margins"),
        ({"mean_auroc": 0.945, "specificity": 0.79}, True, "within the margins"),
        ({"mean_auroc": 0.90, "specificity": 0.85}, False, "stressed holdout mean AUROC"),
        ({"mean_auroc": 0.97, "specificity": 0.70}, False, "stressed holdout specificity"),
    ],
)
def test_a_candidate_better_on_the_clean_holdout_but_worse_under_stress_is_not_promoted(
    stressed: dict, activate: bool, says: str
) -> None:
    better_clean = {"auroc": 0.99, "sensitivity": 0.97}
    decision = gate_decision(
        better_clean, {"auroc": 0.95}, GateRules(policy="if-better", **RULES), stressed, ROBUST
    )
    assert decision.activate is activate
    assert says in decision.reason
