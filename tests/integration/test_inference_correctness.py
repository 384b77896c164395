"""What the fast path may change and what it must not: draft-mode decoding stays within a
stated tolerance of a full decode; padding the last batch never adds or changes a result."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.imaging import load_model_input, preprocess
from worker.model_cache import predict_padded

# Stated tolerances (docs/performance.md gives the figures measured with the trained model).
MAX_MEAN_PIXEL_DIFFERENCE = 4.0  # of 255, per image
MAX_MEAN_PROBABILITY_DIFFERENCE = 0.01
MAX_PROBABILITY_DIFFERENCE = 0.1


@pytest.fixture(scope="module")
def network(inception_model: Path):  # type: ignore[no-untyped-def]
    import keras

    return keras.models.load_model(inception_model, compile=False)


def full_decode(path: Path) -> np.ndarray:
    """Decode every pixel at full resolution, then the same preprocessing."""
    with Image.open(path) as image:
        return preprocess(image, 75)


def test_draft_decoding_stays_within_tolerance_of_a_full_decode(shared_data: Path, network) -> None:  # type: ignore[no-untyped-def]
    paths = sorted((shared_data / "origres").rglob("*.jpeg"))
    fast = np.stack([load_model_input(p, 75, 10**9) for p in paths]).astype(np.float32)
    full = np.stack([full_decode(p) for p in paths]).astype(np.float32)
    per_image = np.abs(fast - full).mean(axis=(1, 2, 3))
    assert per_image.max() <= MAX_MEAN_PIXEL_DIFFERENCE
    difference = np.abs(predict_padded(network, fast, 64) - predict_padded(network, full, 64))
    assert difference.mean() <= MAX_MEAN_PROBABILITY_DIFFERENCE
    assert difference.max() <= MAX_PROBABILITY_DIFFERENCE


def test_padding_never_adds_results_or_changes_the_real_ones(shared_data: Path, network) -> None:  # type: ignore[no-untyped-def]
    paths = sorted((shared_data / "origres").rglob("*.jpeg"))[:70]
    inputs = np.stack([load_model_input(p, 75, 10**9) for p in paths]).astype(np.float32)
    padded = predict_padded(network, inputs, 64)  # one full batch, then 6 real + 2 padding
    assert padded.shape == (70,)
    # Each real image alone in a batch of its own shape gives the same probability.
    alone = np.array([float(network.predict_on_batch(x[np.newaxis])[0, 0]) for x in inputs[-6:]])
    np.testing.assert_allclose(padded[-6:], alone, atol=1e-5)
    # Whatever fills the rest of the batch, the real rows do not move.
    noisy = np.concatenate([inputs[-6:], np.random.default_rng(0).uniform(0, 255, (58, 75, 75, 3))])
    np.testing.assert_allclose(
        np.asarray(network.predict_on_batch(noisy.astype(np.float32)))[:6, 0],
        padded[-6:],
        atol=1e-5,
    )
    assert predict_padded(network, inputs[:0], 64).shape == (0,)
    # A pass too large for the small shape goes in the full one: the same probabilities.
    np.testing.assert_allclose(predict_padded(network, inputs[:9], 64), padded[:9], atol=1e-5)


def test_two_threads_sharing_one_model_get_the_results_of_one_thread(
    shared_data: Path,
    network,  # type: ignore[no-untyped-def]
) -> None:
    """The threads pool runs forward passes of one in-memory model concurrently, unlocked."""
    paths = sorted((shared_data / "origres").rglob("*.jpeg"))[:128]
    inputs = np.stack([load_model_input(p, 75, 10**9) for p in paths]).astype(np.float32)
    halves = [inputs[:64], inputs[64:]]
    serial = [predict_padded(network, half, 64) for half in halves]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(3):
            concurrent = list(pool.map(lambda half: predict_padded(network, half, 64), halves))
            for alone, together in zip(serial, concurrent, strict=True):
                np.testing.assert_allclose(together, alone, atol=1e-5)
