"""The forward pass in bfloat16 where the CPU has it: chosen by the CPU's flags, built from the
same float32 artifact, and held to a stated tolerance of float32 on real X-rays."""

from pathlib import Path

import numpy as np
import pytest

from core.imaging import load_model_input
from worker.model_cache import predict_padded
from worker.precision import (
    AS_TRAINED,
    BFLOAT16,
    FLOAT32,
    cpu_has_bfloat16,
    load_in_precision,
    scoring_precision,
)

# Stated tolerances (docs/performance.md gives the figures measured here).
MAX_MEAN_PROBABILITY_DIFFERENCE = 0.02
MAX_PROBABILITY_DIFFERENCE = 0.2
MAX_LABELS_CHANGED = 0.02  # share of images whose label at 0.5 flips


def test_auto_takes_bfloat16_only_where_the_cpu_has_it(tmp_path: Path) -> None:
    with_bf16, without = tmp_path / "bf16", tmp_path / "plain"
    with_bf16.write_text("flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_has_bfloat16(with_bf16)
    assert not cpu_has_bfloat16(without)
    assert not cpu_has_bfloat16(tmp_path / "missing")
    assert scoring_precision("auto", "cpu", has_bfloat16=True) == BFLOAT16
    assert scoring_precision("auto", "cpu", has_bfloat16=False) == FLOAT32
    assert scoring_precision("float32", "cpu", has_bfloat16=True) == FLOAT32
    assert scoring_precision("bfloat16", "cpu", has_bfloat16=False) == BFLOAT16
    assert scoring_precision("auto", "gpu", has_bfloat16=True) == AS_TRAINED


@pytest.fixture(scope="module")
def fitted(
    inception_model: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """InceptionResNetV2 at random initialisation with its head fitted to 240 real X-rays, so
    its probabilities spread over [0, 1] as a trained model's do (no weights are downloaded,
    and a full training run takes most of an hour)."""
    import keras

    keras.utils.set_random_seed(0)
    network = keras.models.load_model(inception_model, compile=False)
    paths, labels = [], []
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        chosen = sorted((shared_data / "kermany224" / name).iterdir())[:120]
        paths += chosen
        labels += [label] * len(chosen)
    inputs = np.stack([load_model_input(p, 75, 10**9) for p in paths]).astype(np.float32)
    features = keras.Model(network.input, network.get_layer("flatten").output)
    x = predict_padded_features(features, inputs)
    head = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(75, "relu"),
            keras.layers.Dense(1, "sigmoid"),
        ]
    )
    head.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    scale = float(np.abs(x).mean()) or 1.0
    head.fit(x / scale, np.array(labels, np.float32), epochs=150, batch_size=64, verbose=0)
    hidden, output = head.layers
    weights, bias = hidden.get_weights()
    network.get_layer("dense_75").set_weights([weights / scale, bias])
    network.get_layer("pneumonia").set_weights(output.get_weights())
    path = tmp_path_factory.mktemp("fitted") / "fitted.keras"
    network.save(path)
    return path


def predict_padded_features(model, inputs: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate(
        [np.asarray(model.predict_on_batch(inputs[i : i + 64])) for i in range(0, len(inputs), 64)]
    )


def test_bfloat16_keeps_the_probabilities_of_float32_within_the_stated_tolerance(
    fitted: Path, shared_data: Path
) -> None:
    paths = sorted((shared_data / "origres").rglob("*.jpeg"))
    inputs = np.stack([load_model_input(p, 75, 10**9) for p in paths]).astype(np.float32)
    full = predict_padded(load_in_precision(fitted, FLOAT32), inputs, 64)
    assert full.std() > 0.1  # the premise: probabilities spread as a trained model's do
    bf16 = load_in_precision(fitted, BFLOAT16)  # what a scoring worker loads
    assert bf16.get_layer("pneumonia").dtype_policy.name == "float32"
    assert bf16.get_layer("dense_75").dtype_policy.name == "float32"
    backbone = bf16.get_layer("inception_resnet_v2")
    assert {layer.dtype_policy.name for layer in backbone.layers[1:]} == {"bfloat16"}
    fast = predict_padded(bf16, inputs, 64)
    difference = np.abs(fast - full)
    changed = np.mean((fast >= 0.5) != (full >= 0.5))
    print(
        f"bfloat16 vs float32 on {len(paths)} images: mean {difference.mean():.5f}, "
        f"largest {difference.max():.5f}, labels changed {changed:.3f}"
    )
    assert difference.mean() <= MAX_MEAN_PROBABILITY_DIFFERENCE
    assert difference.max() <= MAX_PROBABILITY_DIFFERENCE
    assert changed <= MAX_LABELS_CHANGED
