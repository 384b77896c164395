"""Pure model builders: `make_model(architecture, ...)` returns an uncompiled keras.Model.

Every model takes (size, size, 3) pixel values in 0..255 and rescales them itself, so the
saved artifact carries its own input contract and scoring needs no builder.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

INCEPTION_RESNET_V2 = "inception_resnet_v2"
BASELINE_CNN = "baseline_cnn"
ARCHITECTURES = (INCEPTION_RESNET_V2, BASELINE_CNN)
DEFAULT_INPUT_SIZE = 75


def make_model(
    architecture: str = INCEPTION_RESNET_V2,
    input_size: int = DEFAULT_INPUT_SIZE,
    weights: str | None = None,
) -> keras.Model:
    """Build `architecture`; `weights` is None (random), "imagenet" or a weights file."""
    if architecture == INCEPTION_RESNET_V2:
        return make_inception_resnet_v2(input_size, weights)
    if architecture == BASELINE_CNN:
        if weights is not None:
            raise ValueError("baseline_cnn has no pretrained weights")
        return make_baseline_cnn(input_size)
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")


def make_inception_resnet_v2(
    input_size: int = DEFAULT_INPUT_SIZE, weights: str | None = None
) -> keras.Model:
    """The write-up's model: InceptionResNetV2 backbone, Flatten, Dense(75, relu), Dense(1)."""
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    # The backbone expects [-1, 1], as keras.applications.inception_resnet_v2 preprocesses.
    scaled = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
    backbone = keras.applications.InceptionResNetV2(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_shape=(input_size, input_size, 3),
    )
    if weights not in (None, "imagenet"):
        backbone.load_weights(Path(weights))
    features = layers.Flatten(name="flatten")(backbone(scaled))
    hidden = layers.Dense(75, activation="relu", name="dense_75")(features)
    # float32 output even under a mixed-precision policy, for a stable loss and probabilities.
    outputs = layers.Dense(1, activation="sigmoid", name="pneumonia", dtype="float32")(hidden)
    return keras.Model(inputs, outputs, name=INCEPTION_RESNET_V2)


def make_baseline_cnn(input_size: int = DEFAULT_INPUT_SIZE) -> keras.Model:
    """The write-up's first model: three Conv2D(75, 2x2)+MaxPool blocks, Dense(75), Dense(1)."""
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = layers.Rescaling(1 / 255.0, name="to_unit_range")(inputs)
    for block in range(3):
        x = layers.Conv2D(75, (2, 2), padding="same", activation="relu", name=f"conv{block}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{block}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(75, activation="relu", name="dense_75")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pneumonia", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=BASELINE_CNN)


def compile_model(model: keras.Model, learning_rate: float = 0.01, momentum: float = 0.9) -> None:
    """The write-up's optimiser: SGD with momentum, binary cross-entropy."""
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auroc")],
    )


def save_untrained(architecture: str, path: Path, input_size: int = DEFAULT_INPUT_SIZE) -> Path:
    """Save a randomly initialised model: enough to try the whole pipeline before training."""
    model = make_model(architecture, input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path
