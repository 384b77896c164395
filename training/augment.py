"""Training-time augmentation, applied to each batch inside the tf.data pipeline.

- `none`: the images as they are.
- `threshold`: the write-up's copy of the set with pixels below 25 set to 0 (training/data.py
  adds the copies; nothing happens per batch).
- `standard`: light and anatomy-preserving: rotation up to 0.03 turn, shifts up to 5 %, zoom
  up to 10 %, contrast up to 10 %; no flips (the heart sits on one side).
- `robust`: random resized crops (a window of 35-100 % of the area, aspect 3:4 to 4:3,
  resized back) with per-image gamma (0.75-1.33), contrast (+-25 %) and brightness (+-10 %)
  jitter: the best supported remedy in the literature for the shift between the Kermany
  splits, where a model learns one hospital's exposure and framing. The magnitudes stay inside
  the stressed validation's (gamma 0.6 and 1.6, contrast +-40 %), which training never reaches.
- `robust-resolution`: `robust`, then half of each batch's images resized down to a random
  50-100 % of their side and back up: the softer films of a coarser detector or of a resizing
  pipeline. The stressed validation's blur and quarter-resolution changes go further than
  that (about 37 % of the side), so they stay beyond anything training shows.
- `acquisition`: `robust-resolution`, with a quarter of the crops zoomed out instead (a
  window 100-115 % of the side, black around the image): a wider field of view, as
  `standard`'s zoom has. The stressed zoom 0.8 (a window of 125 %) stays beyond it.
- `both`: `threshold` and `standard`.

The names are `core.choices.Augmentation`, which the settings, the API and the CLI check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras

CROP_AREA = (0.35, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
GAMMA = (0.75, 4 / 3)
CONTRAST = 0.25
BRIGHTNESS = 0.10
RESOLUTION = (0.5, 1.0)  # side of the down-and-up resize, as a fraction of the input's
RESOLUTION_SHARE = 0.5  # of each batch's images
ZOOM_OUT = (1.0, 1.15)  # side of a zoomed-out window, as a fraction of the image's
ZOOM_OUT_SHARE = 0.25  # of each batch's crops

Augmenter = Callable[[Any, Any], tuple[Any, Any]]


def augmenter(augment: str, seed: int) -> Augmenter:
    """The per-batch map for `augment`: uint8 images in, float32 0..255 images out."""
    import tensorflow as tf

    if augment == "robust":
        return lambda x, y: (robust(tf.cast(x, tf.float32)), y)
    if augment == "robust-resolution":
        return lambda x, y: (resolution_jitter(robust(tf.cast(x, tf.float32))), y)
    if augment == "acquisition":
        return lambda x, y: (resolution_jitter(robust(tf.cast(x, tf.float32), True)), y)
    if augment in ("standard", "both"):
        layers = keras.Sequential(
            [
                keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
                keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed),
                keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
                keras.layers.RandomContrast(0.1, seed=seed),
            ]
        )
        return lambda x, y: (layers(tf.cast(x, tf.float32), training=True), y)
    return lambda x, y: (tf.cast(x, tf.float32), y)


def robust(images: Any, zoom_out: bool = False) -> Any:
    """Random resized crop, then gamma, contrast and brightness jitter, per image of a batch
    of float32 0..255 images (n, size, size, 3). With `zoom_out`, `ZOOM_OUT_SHARE` of the
    windows are larger than the image instead, which shrinks it inside a black frame."""
    import tensorflow as tf

    n, size = tf.shape(images)[0], images.shape[1]
    area = tf.random.uniform([n], *CROP_AREA)
    aspect = tf.exp(tf.random.uniform([n], math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
    width = tf.minimum(tf.sqrt(area * aspect), 1.0)
    height = tf.minimum(tf.sqrt(area / aspect), 1.0)
    if zoom_out:
        wide = tf.random.uniform([n]) < ZOOM_OUT_SHARE
        side = tf.random.uniform([n], *ZOOM_OUT)
        width, height = tf.where(wide, side, width), tf.where(wide, side, height)
    # A window wider than the image starts left of (or above) it: the margin is negative.
    left = tf.random.uniform([n]) * (1.0 - width) * size
    top = tf.random.uniform([n]) * (1.0 - height) * size
    # Output pixel (x, y) samples input (left + x * width, top + y * height): the window,
    # resized to the whole image (the affine transform Keras's own random layers use).
    zero = tf.zeros([n])
    transform = tf.stack([width, zero, left, zero, height, top, zero, zero], axis=1)
    cropped = keras.ops.image.affine_transform(
        images / 255.0,
        transform,
        interpolation="bilinear",
        fill_mode="constant" if zoom_out else "nearest",
        fill_value=0.0,
    )

    def per_image(low: float, high: float) -> Any:
        return tf.random.uniform([n, 1, 1, 1], low, high)

    gamma = tf.exp(per_image(math.log(GAMMA[0]), math.log(GAMMA[1])))
    x = tf.pow(tf.clip_by_value(cropped, 0.0, 1.0), gamma)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = mean + (x - mean) * per_image(1 - CONTRAST, 1 + CONTRAST)
    x = x + per_image(-BRIGHTNESS, BRIGHTNESS)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def resolution_jitter(images: Any) -> Any:
    """A random `RESOLUTION_SHARE` of a batch of float32 images (n, size, size, 3), resized
    down to one random fraction of `RESOLUTION` of their side (antialiased) and back up."""
    import tensorflow as tf

    n, size = tf.shape(images)[0], images.shape[1]
    side = tf.cast(tf.round(size * tf.random.uniform([], *RESOLUTION)), tf.int32)
    small = tf.image.resize(images, tf.stack([side, side]), antialias=True)
    soft = tf.image.resize(small, [size, size], method="bilinear")
    picked = tf.random.uniform([n, 1, 1, 1]) < RESOLUTION_SHARE
    return tf.where(picked, tf.clip_by_value(soft, 0.0, 255.0), images)
