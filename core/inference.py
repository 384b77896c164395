"""Running a loaded Keras model over arrays; numpy only, so core still never imports TensorFlow."""

from __future__ import annotations

from typing import Any

import numpy as np


def predict_padded(network: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities for `inputs`, always calling the model with one fixed batch shape.

    Every new input shape makes TensorFlow trace the graph again (seconds each), so a short
    last batch is padded with zeros and the padding's outputs are dropped.
    """
    outputs = []
    for start in range(0, len(inputs), batch_size):
        part = inputs[start : start + batch_size]
        padded = np.zeros((batch_size, *inputs.shape[1:]), dtype=np.float32)
        padded[: len(part)] = part
        predicted = np.asarray(network.predict_on_batch(padded), dtype=np.float64)
        outputs.append(predicted[: len(part), 0])
    return np.concatenate(outputs) if outputs else np.zeros(0)
