"""BatchNorm statistics recomputed on the training images once the weights are final.

During training each BatchNormalization layer keeps an exponential moving average (momentum
0.99) of its batch statistics. A network trained from scratch moves its weights faster than
that average follows, so the statistics used at inference belong to weights of some epochs
ago: validation accuracy jumps from epoch to epoch while training accuracy climbs. Passing the
training images once more through the final weights, with each layer keeping the plain mean of
its batch statistics, gives the statistics those weights actually produce.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np


def batch_norm_layers(layer: Any) -> Iterator[keras.layers.BatchNormalization]:
    """Every BatchNormalization inside `layer`, nested models included."""
    if isinstance(layer, keras.layers.BatchNormalization):
        yield layer
    for inner in getattr(layer, "layers", ()):
        yield from batch_norm_layers(inner)


def recalibrate_batch_norm(
    network: keras.Model, images: np.ndarray, batch_size: int = 100, seed: int = 0
) -> int:
    """Replace the moving statistics of every BatchNormalization layer in `network` by the
    mean over `images` (uint8, shuffled into batches) of its batch statistics; returns how
    many batches were used. The weights themselves do not change."""
    layers = list(batch_norm_layers(network))
    if not layers or len(images) == 0:
        return 0
    momenta = [layer.momentum for layer in layers]
    order = np.random.default_rng(seed).permutation(len(images))
    # Whole batches only: a small last batch would weigh as much as a full one.
    batches = max(len(images) // batch_size, 1)
    try:
        for index in range(batches):
            # moving = moving * m + batch * (1 - m) with m = k / (k + 1) is the running mean.
            for layer in layers:
                layer.momentum = index / (index + 1)
            chunk = images[order[index * batch_size : (index + 1) * batch_size]]
            network(chunk.astype(np.float32), training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return batches
