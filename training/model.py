"""Pure model builders: `make_model(architecture, ...)` returns an uncompiled keras.Model.

Every model takes (size, size, 3) pixel values in 0..255 and rescales them itself, so the
saved artifact carries its own input contract and scoring needs no builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from core.choices import Architecture, Optimizer, values

INCEPTION_RESNET_V2 = Architecture.INCEPTION_RESNET_V2.value
BASELINE_CNN = Architecture.BASELINE_CNN.value
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
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {values(Architecture)}")


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


def compile_model(
    model: keras.Model,
    optimizer: str = "sgd",
    label_smoothing: float = 0.0,
    total_steps: int = 1,
    warmup_steps: int = 0,
) -> None:
    """Binary cross-entropy (with optional label smoothing) and one of three optimisers:

    - `sgd`: the write-up's, SGD with momentum 0.9 at a constant learning rate of 0.01;
    - `sgd-cosine`: the same SGD, warmed up to 0.01 then decayed to 0 by a cosine;
    - `adamw-cosine`: AdamW (weight decay 1e-4) warmed up to 1e-3 then decayed to 0.
    """
    model.compile(
        optimizer=make_optimizer(optimizer, total_steps, warmup_steps),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy", keras.metrics.AUC(name="auroc")],
    )


def make_optimizer(name: str, total_steps: int = 1, warmup_steps: int = 0) -> Any:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    peak = {"sgd-cosine": 0.01, "adamw-cosine": 1e-3}.get(name)
    if peak is None:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {values(Optimizer)}")
    schedule = keras.optimizers.schedules.CosineDecay(
        peak / 10 if warmup_steps else peak,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    if name == "sgd-cosine":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=1e-4)


# Test-time views, in the order `views` takes them: the image itself, a centred 90 % window,
# then 90 % windows at the four corners, each resized back to the model's input.
_VIEW_WINDOWS = ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0))
MAX_VIEWS = 1 + len(_VIEW_WINDOWS)
_VIEW_FRACTION = 0.9


def averaged(members: Sequence[keras.Model], views: int = 1) -> keras.Model:
    """One model whose logit is the mean of every member's logit over `views` test-time views.

    Members end in Dense(1, sigmoid) and take the same input; the result does too (a fixed
    averaging Dense), so it saves, loads, calibrates and scores like any single model, and
    needs no custom layer. An ensemble of seeds and test-time augmentation are both this.
    """
    if not 1 <= views <= MAX_VIEWS:
        raise ValueError(f"views must lie between 1 and {MAX_VIEWS}")
    size = int(members[0].input_shape[1])
    inputs = keras.Input((size, size, 3), name="pixels")
    heads = [logit_model(member, f"member{index}") for index, member in enumerate(members)]
    logits = [head(view) for view in _views(inputs, size, views) for head in heads]
    joined = layers.Concatenate(name="logits")(logits) if len(logits) > 1 else logits[0]
    mean = layers.Dense(1, activation="sigmoid", name="pneumonia", dtype="float32")
    outputs = mean(joined)
    mean.set_weights(
        [np.full((len(logits), 1), 1 / len(logits), np.float32), np.zeros(1, np.float32)]
    )
    mean.trainable = False
    return keras.Model(inputs, outputs, name=f"mean_of_{len(members)}x{views}")


def logit_model(network: keras.Model, name: str) -> keras.Model:
    """`network` up to its logit: its final Dense(1, sigmoid) without the sigmoid."""
    last = network.layers[-1]
    linear = layers.Dense(1, name="logit", dtype="float32")
    logit = linear(last.input)
    linear.set_weights(last.get_weights())
    return keras.Model(network.inputs, logit, name=name)


def _views(inputs: Any, size: int, views: int) -> list[Any]:
    cut = size - round(size * _VIEW_FRACTION)
    out = [inputs]
    for index, (left, top) in enumerate(_VIEW_WINDOWS[: views - 1]):
        x, y = round(cut * left), round(cut * top)
        cropped = layers.Cropping2D(((y, cut - y), (x, cut - x)), name=f"view{index + 1}_crop")(
            inputs
        )
        out.append(layers.Resizing(size, size, name=f"view{index + 1}_resize")(cropped))
    return out


def save_untrained(architecture: str, path: Path, input_size: int = DEFAULT_INPUT_SIZE) -> Path:
    """Save a randomly initialised model: enough to try the whole pipeline before training."""
    model = make_model(architecture, input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path
