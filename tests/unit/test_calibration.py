"""Calibration: temperature and offset fitted, the calibration error, and the calibration
baked into a real network's last layer."""

import numpy as np
import pytest

from training.calibration import Calibration, calibrate_network, fit_calibration, reliability


def miscalibrated(
    temperature: float, offset: float = 0.0, n: int = 20000, seed: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z / T + b) but reported as sigmoid(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(z / temperature + offset)))).astype(float)
    return y, 1 / (1 + np.exp(-z))


def test_the_fitted_temperature_and_offset_are_the_ones_that_made_the_data() -> None:
    for truth in (Calibration(0.5, 0.0), Calibration(2.5, 0.0), Calibration(2.0, 1.1)):
        y, reported = miscalibrated(truth.temperature, truth.offset)
        fitted = fit_calibration(y, reported)
        assert fitted.temperature == pytest.approx(truth.temperature, rel=0.08)
        assert fitted.offset == pytest.approx(truth.offset, abs=0.1)


def test_a_prior_shift_from_class_weights_needs_the_offset_not_only_a_temperature() -> None:
    """Class weights make a model answer as if the classes were equally common: an offset."""
    y, reported = miscalibrated(2.0, offset=1.1)
    before = reliability(y, reported)["ece"]
    temperature_only = reliability(y, fit_calibration(y, reported, offset=False).apply(reported))
    both = reliability(y, fit_calibration(y, reported).apply(reported))
    assert before > 0.1
    assert temperature_only["ece"] > 0.04
    assert both["ece"] < 0.02


def test_reliability_bins_count_every_prediction_and_report_the_observed_rate() -> None:
    y = np.array([0, 0, 1, 1, 1, 0], dtype=float)
    p = np.array([0.05, 0.08, 0.95, 0.9, 0.5, 0.5])
    table = reliability(y, p, bins=10)
    assert sum(table["bins"]["count"]) == 6
    assert table["bins"]["observed"][5] == 0.5  # the two 0.5s: one of each
    assert table["bins"]["predicted"][0] == pytest.approx(0.065)
    expected = (2 * 0.065 + 2 * 0.075 + 0) / 6  # |0.065 - 0| twice, |0.925 - 1| twice, 0
    assert table["ece"] == pytest.approx(expected, abs=1e-4)


def test_a_calibration_baked_into_the_last_layer_changes_the_networks_logit_so() -> None:
    import keras

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    network = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    x = np.random.default_rng(0).normal(0, 3, (32, 4)).astype(np.float32)
    before = network.predict_on_batch(x)[:, 0]
    calibration = Calibration(temperature=3.0, offset=0.7)
    calibrate_network(network, calibration)
    after = network.predict_on_batch(x)[:, 0]
    np.testing.assert_allclose(after, calibration.apply(before), atol=1e-5)
    linear = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="sigmoid"):
        calibrate_network(linear, calibration)


def test_nearly_separable_scores_get_a_finite_calibration_that_keeps_the_ranking() -> None:
    """Seen in a real run: validation AUROC 0.99 sent an unguarded Newton to T = 0.001."""
    rng = np.random.default_rng(9)
    y = (rng.random(667) < 0.74).astype(float)
    z = np.where(y == 1, rng.normal(4, 1.5, 667), rng.normal(-4, 1.5, 667))
    z[:3] = [-1.0, -0.5, 0.2]  # a few overlaps, as in any real validation set
    reported = 1 / (1 + np.exp(-z))
    fitted = fit_calibration(y, reported)
    assert 0.05 <= fitted.temperature <= 20
    assert -10 <= fitted.offset <= 10
    calibrated = fitted.apply(reported)
    assert np.all(np.isfinite(calibrated))
    assert np.array_equal(
        np.argsort(calibrated, kind="stable"), np.argsort(reported, kind="stable")
    )
    assert reliability(y, calibrated)["ece"] <= reliability(y, reported)["ece"] + 1e-9


def test_perfectly_separated_scores_do_not_send_the_temperature_to_zero() -> None:
    y = np.r_[np.zeros(50), np.ones(150)]
    reported = np.r_[np.full(50, 0.2), np.full(150, 0.8)]
    fitted = fit_calibration(y, reported)
    assert fitted.temperature >= 0.05
    assert np.all(np.isfinite(fitted.apply(reported)))
