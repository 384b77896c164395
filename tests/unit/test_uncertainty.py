"""Bootstrap intervals: patients resampled, figures weighted, intervals honest."""

import numpy as np
import pytest

from training.evaluate import auroc, binary_metrics
from training.uncertainty import (
    clean_intervals,
    patient_weights,
    stressed_intervals,
    weighted_auroc,
    weighted_rates,
)


def labelled(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    return y, np.round(rng.random(n) + 0.6 * y, 2)  # rounding makes ties


def test_weighted_figures_with_unit_weights_are_the_plain_figures() -> None:
    y, scores = labelled(300)
    ones = np.ones((1, len(y)))
    assert weighted_auroc(y, scores, ones)[0] == pytest.approx(auroc(y, scores))
    rates = weighted_rates(y, scores, 0.7, ones)
    plain = binary_metrics(y, scores, 0.7)
    for key in ("accuracy", "sensitivity", "specificity"):
        assert rates[key][0] == pytest.approx(plain[key])


def test_integer_weights_count_like_repeated_images() -> None:
    y, scores = labelled(80, seed=2)
    weights = np.random.default_rng(3).integers(0, 4, len(y))
    repeated = np.repeat(np.arange(len(y)), weights)
    expected = auroc(y[repeated], scores[repeated])
    assert weighted_auroc(y, scores, weights[None, :].astype(float))[0] == pytest.approx(expected)


def test_every_resample_draws_as_many_patients_as_there_are() -> None:
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    weights = patient_weights(groups, len(groups), resamples=200)
    assert weights.shape == (200, 6)
    # Images of one patient always share their patient's weight.
    assert np.array_equal(weights[:, 0], weights[:, 1])
    assert np.array_equal(weights[:, 3], weights[:, 5])
    drawn = weights[:, [0, 2, 3]].sum(axis=1)  # one image per patient
    assert np.all(drawn == 3)


def test_intervals_contain_the_figure_and_narrow_with_more_patients() -> None:
    widths = []
    for n in (100, 1600):
        y, scores = labelled(n, seed=n)
        intervals = clean_intervals(y, scores, 0.7, None)
        low, high = intervals["auroc"]
        assert low <= auroc(y, scores) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16) = 1/4 as wide


def test_patients_with_many_alike_images_widen_the_interval() -> None:
    """Ten copies of each patient's image are one piece of evidence, not ten."""
    y, scores = labelled(60, seed=5)
    copies = np.repeat(np.arange(60), 10)
    by_image = clean_intervals(y[copies], scores[copies], 0.7, None)["auroc"]
    by_patient = clean_intervals(y[copies], scores[copies], 0.7, copies)["auroc"]
    assert by_patient[1] - by_patient[0] > 2 * (by_image[1] - by_image[0])


def test_stressed_intervals_cover_the_mean_and_the_worst_change() -> None:
    y, clean = labelled(400, seed=7)
    rng = np.random.default_rng(8)
    scores = {"mild": clean + rng.normal(0, 0.1, len(y)), "hard": clean + rng.normal(0, 0.5, 400)}
    intervals = stressed_intervals(y, scores, 0.7, None)
    aurocs = [auroc(y, s) for s in scores.values()]
    low, high = intervals["mean_auroc"]
    assert low <= np.mean(aurocs) <= high
    low, high = intervals["worst_auroc"]
    assert low <= min(aurocs) <= high
    assert intervals["worst_auroc"][1] <= intervals["mean_auroc"][1]
