"""Temperature scaling, calibration error and the temperature baked into a real network."""

import numpy as np
import pytest

from training.calibration import apply_temperature, fit_temperature, reliability, scaled


def overconfident(temperature: float, n: int = 20000, seed: int = 4) -> tuple[np.ndarray, ...]:
    """Labels drawn from sigmoid(z / T) but reported as sigmoid(z): overconfident for T > 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z / temperature))).astype(float)
    return y, 1 / (1 + np.exp(-z))


def test_the_fitted_temperature_is_the_one_that_made_the_data() -> None:
    for truth in (0.5, 1.0, 2.5):
        y, reported = overconfident(truth)
        assert fit_temperature(y, reported) == pytest.approx(truth, rel=0.08)


def test_scaling_by_the_fitted_temperature_removes_the_calibration_error() -> None:
    y, reported = overconfident(2.5)
    before = reliability(y, reported)["ece"]
    after = reliability(y, scaled(reported, fit_temperature(y, reported)))["ece"]
    assert before > 0.1
    assert after < 0.02


def test_reliability_bins_count_every_prediction_and_report_the_observed_rate() -> None:
    y = np.array([0, 0, 1, 1, 1, 0], dtype=float)
    p = np.array([0.05, 0.08, 0.95, 0.9, 0.5, 0.5])
    table = reliability(y, p, bins=10)
    assert sum(table["bins"]["count"]) == 6
    assert table["bins"]["observed"][5] == 0.5  # the two 0.5s: one of each
    assert table["bins"]["predicted"][0] == pytest.approx(0.065)
    expected = (2 * 0.065 + 2 * 0.075 + 0) / 6  # |0.065 - 0| twice, |0.925 - 1| twice, 0
    assert table["ece"] == pytest.approx(expected, abs=1e-4)


def test_a_temperature_baked_into_the_last_layer_scales_the_networks_logit() -> None:
    import keras

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    network = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    x = np.random.default_rng(0).normal(0, 3, (32, 4)).astype(np.float32)
    before = network.predict_on_batch(x)[:, 0]
    apply_temperature(network, 3.0)
    after = network.predict_on_batch(x)[:, 0]
    np.testing.assert_allclose(after, scaled(before, 3.0), atol=1e-5)
    linear = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="sigmoid"):
        apply_temperature(linear, 2.0)
