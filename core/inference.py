"""Running a Keras model over arrays. TensorFlow is imported only inside the functions that need
it, so importing core never loads it."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> None:
    """Thread pools (0: TensorFlow chooses) and GPU memory growth, for scoring and training.

    Memory growth lets a GPU's memory be taken as needed instead of all at once. Both only
    take effect before TensorFlow runs its first operation in this process.
    """
    import tensorflow as tf

    try:
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        log.debug("TensorFlow was already initialised; thread and GPU settings unchanged")


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
