"""Synthetic labelled X-ray folders and tiny real Keras models whose behaviour is known, for
tests of what the gate, the stressed validation and scoring do with a model's input.

In the folders, pneumonia images are a little brighter on average and carry a fine stripe
texture that normal ones lack. So a model that scores texture ranks them perfectly on clean
images and is fooled by blur, noise, compression and resizing, while a model that scores mean
brightness ranks them less well and barely minds those changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.images import jpeg_bytes

SIZE = 224


def synthetic_reference(root: Path, per_class: int = 24, seed: int = 11) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    stripes = 5 * np.sign(np.sin(2 * np.pi * x / 8))
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            level = rng.normal(118 + 14 * label, 12)
            body = level + 30 * np.cos(np.pi * (y / SIZE - 0.5)) + _blobs(rng)
            pixels = np.clip(body + label * stripes, 0, 255).astype(np.uint8)
            patient = f"person{label * 1000 + index}_virus_{index}.jpeg"
            (root / name / patient).write_bytes(
                jpeg_bytes(Image.fromarray(pixels, mode="L"), quality=95)
            )
    return root


def _blobs(rng: np.random.Generator) -> np.ndarray:
    """Smooth structure of a random strength: texture a blur cannot take away."""
    coarse = rng.normal(0, 1, (SIZE // 16, SIZE // 16))
    field = np.asarray(
        Image.fromarray(coarse.astype(np.float32), mode="F").resize(
            (SIZE, SIZE), Image.Resampling.BICUBIC
        )
    )
    return rng.uniform(0, 40) * field


def brightness_model(path: Path, size: int = 75) -> Path:
    """A real Keras model scoring the mean brightness of its input."""
    import keras

    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1, activation="sigmoid", name="pneumonia")
    model = keras.Model(inputs, dense(x))
    dense.set_weights([np.full((3, 1), 20 / 3, np.float32), np.array([-10.0], np.float32)])
    model.save(path)
    return path


def texture_model(path: Path, size: int = 75) -> Path:
    """A real Keras model scoring high-frequency energy: |Laplacian|, averaged."""
    import keras

    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    laplacian = keras.layers.Conv2D(2, 3, use_bias=False, activation="relu", name="laplacian")
    x = keras.layers.GlobalAveragePooling2D()(laplacian(x))
    dense = keras.layers.Dense(1, activation="sigmoid", name="pneumonia")
    model = keras.Model(inputs, dense(x))
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32) / 3  # over 3 channels
    both_signs = np.stack([kernel, -kernel], axis=-1)  # relu(k) + relu(-k) = |k|
    laplacian.set_weights([np.repeat(both_signs[:, :, None, :], 3, axis=2)])
    dense.set_weights([np.full((2, 1), 40.0, np.float32), np.array([-3.0], np.float32)])
    model.save(path)
    return path
