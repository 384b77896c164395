"""The training levers on real (small) Keras models: one model averaging seeds and views,
BatchNorm statistics recomputed, the robust augmentation, the optimisers."""

from pathlib import Path

import numpy as np
import pytest

from training.calibration import logits
from training.model import MAX_VIEWS, averaged, compile_model, make_model


def small_classifier(seed: int, size: int = 16) -> object:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="pneumonia")(x))


def images(n: int = 8, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)


def test_an_ensemble_is_one_model_whose_logit_is_the_mean_of_its_members(tmp_path: Path) -> None:
    import keras

    members = [small_classifier(seed) for seed in (1, 2, 3)]
    x = images()
    expected_logit = np.mean([logits(m.predict_on_batch(x)[:, 0]) for m in members], axis=0)
    joined = averaged(members)
    got = joined.predict_on_batch(x)[:, 0]
    np.testing.assert_allclose(logits(got), expected_logit, atol=1e-4)
    # It saves and loads as plain Keras, with no custom object, and scores the same.
    joined.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(loaded.predict_on_batch(x)[:, 0], got, atol=1e-6)
    assert loaded.input_shape == (None, 16, 16, 3)
    assert loaded.output_shape == (None, 1)


def test_test_time_views_average_the_image_and_its_crops() -> None:
    member = small_classifier(4)
    x = images(4)
    single = averaged([member], views=1).predict_on_batch(x)[:, 0]
    np.testing.assert_allclose(single, member.predict_on_batch(x)[:, 0], atol=1e-5)
    with_views = averaged([member], views=MAX_VIEWS)
    assert with_views.get_layer("view1_crop") is not None
    assert not np.allclose(with_views.predict_on_batch(x)[:, 0], single, atol=1e-4)
    with pytest.raises(ValueError, match="views"):
        averaged([member], views=MAX_VIEWS + 1)


def test_batch_norm_recalibration_replaces_moving_statistics_by_the_data_mean() -> None:
    import keras

    from training.batchnorm import recalibrate_batch_norm

    inputs = keras.Input((4, 4, 1))
    norm = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inputs, norm(inputs))
    rng = np.random.default_rng(1)
    data = rng.normal(50.0, 10.0, (400, 4, 4, 1)).astype(np.float32)
    weights = [w.copy() for w in (norm.gamma.numpy(), norm.beta.numpy())]
    used = recalibrate_batch_norm(model, data, batch_size=100)
    assert used == 4
    assert norm.moving_mean.numpy()[0] == pytest.approx(data.mean(), rel=0.01)
    assert norm.moving_variance.numpy()[0] == pytest.approx(data.var(), rel=0.1)
    assert norm.momentum == 0.99  # restored
    np.testing.assert_array_equal(norm.gamma.numpy(), weights[0])
    np.testing.assert_array_equal(norm.beta.numpy(), weights[1])


def test_robust_augmentation_crops_and_jitters_each_image_differently() -> None:
    import tensorflow as tf

    from training.augment import robust

    base = np.tile(np.linspace(0, 255, 32, dtype=np.float32)[None, :, None], (32, 1, 3))
    batch = tf.constant(np.stack([base] * 6))
    out = robust(batch).numpy()
    assert out.shape == batch.shape
    assert out.min() >= 0.0
    assert out.max() <= 255.0
    assert all(not np.allclose(out[i], base, atol=2) for i in range(6))
    assert not np.allclose(out[0], out[1], atol=2)


def test_zoomed_out_crops_shrink_a_quarter_of_the_images_inside_a_black_frame() -> None:
    import tensorflow as tf

    from training.augment import robust

    tf.random.set_seed(5)
    bright = tf.constant(np.full((64, 24, 24, 3), 200.0, np.float32))
    framed = robust(bright, zoom_out=True).numpy()
    darker_corner = [image[0, 0, 0] < image[12, 12, 0] - 40 for image in framed]
    assert 4 <= sum(darker_corner) <= 32
    # Crops inside the image never frame it: a uniform image stays uniform.
    plain = robust(bright).numpy()
    assert all(np.ptp(image) < 1 for image in plain)


def test_resolution_jitter_softens_about_half_of_a_batch_and_leaves_the_rest() -> None:
    import tensorflow as tf

    from training.augment import resolution_jitter

    tf.random.set_seed(3)
    checkerboard = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.float32)
    batch = tf.constant(np.repeat(checkerboard[None, :, :, None], 3, axis=3)[[0] * 64])
    out = resolution_jitter(batch).numpy()
    untouched = [np.array_equal(image, batch[0].numpy()) for image in out]
    # A pixel-sized checkerboard does not survive a smaller size: softened images lose its
    # contrast, the others are the input itself.
    softened = [image.std() < 100 for image, same in zip(out, untouched, strict=True) if not same]
    assert 16 <= sum(untouched) <= 48
    assert softened
    assert all(softened)
    assert out.min() >= 0.0
    assert out.max() <= 255.0


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-cosine", "adamw-cosine"])
def test_each_optimizer_trains_a_small_model(optimizer: str) -> None:
    network = make_model("baseline_cnn", 32)
    compile_model(network, optimizer, label_smoothing=0.1, total_steps=6, warmup_steps=1)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 32).astype(np.float32)
    x = (rng.random((32, 32, 32, 3)) * 60 + y[:, None, None, None] * 120).astype(np.float32)
    history = network.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
