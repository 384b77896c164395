"""The model runtime: a verified artifact loaded, checked and traced once; padded batches.

Scoring (`ActiveModelCache`) and evaluation (`load_network`) load versions the same way.
TensorFlow is imported only inside functions, on first use in a worker child process: a
model loaded before fork hangs the child, and loading in `worker_process_init` gets the
child killed by Celery's start-up timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.config import Settings
from core.imaging import Preprocessing
from core.models import ModelVersion
from core.registry import ArtifactIntegrityError, verified_artifact
from core.storage import Storage
from worker.precision import FLOAT32, load_in_precision, scoring_precision

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


# A pass that is not full is padded to this many images instead of the whole batch: one study
# then costs an eighth of a full pass, for one more traced shape (docs/performance.md).
SMALL_PASS = 8


def batch_shapes(batch_size: int) -> tuple[int, ...]:
    """The batch shapes the model is called with: a small one, and the full batch."""
    return (SMALL_PASS, batch_size) if batch_size > SMALL_PASS else (batch_size,)


def predict_padded(network: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities for `inputs`, always calling the model with one of `batch_shapes`.

    Every new input shape makes TensorFlow trace the graph again (seconds each), so a short
    batch is padded with zeros to the smallest shape that holds it and the padding's outputs
    are dropped.
    """
    outputs = []
    for start in range(0, len(inputs), batch_size):
        part = inputs[start : start + batch_size]
        shape = next(size for size in batch_shapes(batch_size) if size >= len(part))
        padded = np.zeros((shape, *inputs.shape[1:]), dtype=np.float32)
        padded[: len(part)] = part
        predicted = np.asarray(network.predict_on_batch(padded), dtype=np.float64)
        outputs.append(predicted[: len(part), 0])
    return np.concatenate(outputs) if outputs else np.zeros(0)


class ModelLoadError(RuntimeError):
    """The active model is not a usable classifier."""


@dataclass(frozen=True)
class LoadedModel:
    version: str
    version_id: int
    input_size: int
    network: Any  # a keras.Model, safe for concurrent inference once traced
    preprocessing: Preprocessing  # the input the version was trained on
    precision: str = FLOAT32  # what the forward pass computes in (worker/precision.py)


class ActiveModelCache:
    """Holds the one model this process scores with; swaps it when the active version changes."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        self._lock = threading.Lock()
        self._loaded: LoadedModel | None = None
        self.loads = 0

    def get(self, version: ModelVersion) -> LoadedModel:
        with self._lock:
            if self._loaded is None or self._loaded.version_id != version.id:
                # Load the new model first, then drop the old one.
                self._loaded = self._load(version)
            return self._loaded

    def _load(self, version: ModelVersion) -> LoadedModel:
        log.info("loading model version %s", version.version)
        started = time.monotonic()
        configure_tensorflow(self.settings.tf_intra_op_threads, self.settings.tf_inter_op_threads)
        # Traced under the lock: concurrent first calls (threads pool) would race to build
        # the predict function, and the first batch would wait for it.
        settings = self.settings
        precision = scoring_precision(settings.scoring_precision, settings.device)
        network = load_network(self.storage, version, settings.batch_size, precision)
        self.loads += 1
        log.info(
            "loaded model version %s in %.1f s, scoring in %s",
            version.version,
            time.monotonic() - started,
            precision,
        )
        recipe = Preprocessing.parse(version.preprocessing)
        return LoadedModel(
            version.version, version.id, version.input_size, network, recipe, precision
        )


def load_network(
    storage: Storage, version: ModelVersion, batch_size: int, precision: str = FLOAT32
) -> Any:
    """A version's verified artifact as a Keras model in `precision`, checked to be a
    classifier of the version's input size and traced for `batch_size`; ModelLoadError says
    why it cannot."""
    try:
        path = verified_artifact(storage, version)
    except ArtifactIntegrityError as exc:
        raise ModelLoadError(str(exc)) from exc
    try:
        network = load_in_precision(path, precision)
    except Exception as exc:  # whatever Keras raises, the version cannot serve
        raise ModelLoadError(f"model version {version.version} does not load: {exc}") from exc
    _check_classifier(network, version)
    size = version.input_size
    for shape in batch_shapes(batch_size):  # traced now, not in the first passes
        predict_padded(network, np.zeros((shape, size, size, 3), np.float32), batch_size)
    return network


def _check_classifier(network: Any, version: ModelVersion) -> None:
    expected_in = (None, version.input_size, version.input_size, 3)
    if tuple(network.input_shape) != expected_in or tuple(network.output_shape) != (None, 1):
        raise ModelLoadError(
            f"model version {version.version} maps {network.input_shape} to "
            f"{network.output_shape}; expected {expected_in} to (None, 1)"
        )
