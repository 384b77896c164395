"""Grad-CAM heatmaps: where in the image the model's pneumonia score came from.

Grad-CAM (Selvaraju et al., 2017) reads the gradient of the score with respect to a
convolutional layer's map. We take it in its element-wise form (HiResCAM, Draelos and Carin,
2020): each cell's activations times their own gradients, summed over channels, positive part
kept. Grad-CAM's original form first averages the gradients over the whole map, which is exact
for a head of global pooling, but the write-up's head is Flatten then Dense, which weighs each
cell on its own: averaging would paint cells the score never looked at. The score is the logit
(the sigmoid's input), so a confident image does not lose its gradient to saturation.

Which layer: the output of the last block whose map is still at least `MIN_GRID` cells a side
(the one the network then shrinks). At the write-up's 75 px the last block of
InceptionResNetV2 (`conv_7b`) is 1x1, a map with nothing to show; its last block at 7x7 is
`block35_10`. The baseline CNN's is its last
convolution (19x19). An averaged model (an ensemble, test-time views) is explained through one
of its members (the last) on the image itself (the first view).

A heatmap is made with the model version that scored the image, in float32, by a network this
module loads for itself (never the scoring model, whose output layer it changes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.config import Settings
from core.db import Database
from core.imaging import ImageDecodeError, Preprocessing, decode_image, prepare
from core.models import ModelVersion
from core.previews import overlay_png, stored_image, write_atomically
from core.registry import ArtifactIntegrityError, verified_artifact
from core.storage import Storage
from worker.precision import FLOAT32, load_in_precision

log = logging.getLogger(__name__)

MIN_GRID = 7
_MAP_LAYERS = ("Conv2D", "Activation", "ReLU")


class HeatmapError(RuntimeError):
    """No heatmap can be made for this image; the message says why."""


def _layers(model: Any) -> Iterator[Any]:
    """Every layer, nested models opened, in the order they were added."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def target_layer(network: Any) -> Any:
    """The layer Grad-CAM reads: the convolution or activation whose map (of at least
    MIN_GRID x MIN_GRID) the network first shrinks below that, or the last such layer when
    it never does."""
    found: list[Any] = []
    for layer in _layers(network):
        shape = _map_shape(layer)
        if shape is None:
            continue
        if min(shape) >= MIN_GRID:
            if type(layer).__name__ in _MAP_LAYERS:
                found.append(layer)
        elif found:
            reduced = getattr(layer, "input", None)
            source = next((c for c in reversed(found) if c.output is reduced), None)
            if source is not None:
                return source
    if not found:
        raise HeatmapError(f"the model has no convolutional map of {MIN_GRID}x{MIN_GRID} or more")
    return found[-1]


def _map_shape(layer: Any) -> tuple[int, int] | None:
    """The height and width of a layer's output when it is a map (None otherwise)."""
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # not called in a graph: no known output
        return None
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return int(shape[1]), int(shape[2])


def as_logit_model(network: Any) -> Any:
    """`network` with its final sigmoid taken off, in place: it then outputs the logit."""
    import keras

    last = network.layers[-1]
    if getattr(last, "activation", None) is keras.activations.sigmoid:
        last.activation = keras.activations.linear
    return network


def grad_cam(network: Any, layer: Any, pixels: np.ndarray) -> np.ndarray:
    """The Grad-CAM grid (values 0..1, the layer's map size) for one input (size, size, 3)."""
    import tensorflow as tf

    seen: list[Any] = []
    call = layer.call

    def tap(*args: Any, **kwargs: Any) -> Any:
        out = call(*args, **kwargs)
        seen.append(out)
        return out

    layer.call = tap  # records the map of each call; the first is the image itself
    try:
        with tf.GradientTape() as tape:
            score = network(tf.constant(pixels[np.newaxis].astype(np.float32)), training=False)
        maps = seen[0]
        gradients = tape.gradient(score, maps)
    finally:
        layer.call = call
    if gradients is None:
        raise HeatmapError("the model's score does not depend on the chosen layer")
    cam = tf.nn.relu(tf.reduce_sum(gradients * maps, axis=-1))[0].numpy().astype(np.float64)
    top = cam.max()
    return cam / top if top > 0 else cam


@dataclass
class _Loaded:
    version_id: int
    network: Any
    layer: Any


class Explainer:
    """One float32 network per process for heatmaps, loaded on first use, swapped when a
    heatmap asks for another version; one heatmap at a time."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None

    def explain(self, version: ModelVersion, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._loaded is None or self._loaded.version_id != version.id:
                self._loaded = None
                self._loaded = self._load(version)
            return grad_cam(self._loaded.network, self._loaded.layer, pixels)

    def _load(self, version: ModelVersion) -> _Loaded:
        try:
            path = verified_artifact(self.storage, version)
        except ArtifactIntegrityError as exc:
            raise HeatmapError(str(exc)) from exc
        network = as_logit_model(load_in_precision(path, FLOAT32))
        layer = target_layer(network)
        log.info("heatmaps of version %s read layer %s", version.version, layer.name)
        return _Loaded(version.id, network, layer)


def make_heatmap(
    db: Database, storage: Storage, settings: Settings, explainer: Explainer, image_id: int
) -> bool:
    """Write the image's heatmap PNG (or, when none can be made, the reason beside it);
    returns whether a heatmap was written."""
    with db.session() as session:
        image = stored_image(session, storage, image_id)
        version = session.get(ModelVersion, image.model_version_id or -1)
        if version is not None:
            session.expunge(version)
    target = storage.heatmap(image.job_id, image.id)
    try:
        if version is None or image.probability is None:
            raise HeatmapError("the image has no score to explain")
        source = image.source
        size = version.input_size
        gray = decode_image(
            source.path, source.format, size, settings.max_image_pixels, source.span
        )
        recipe = Preprocessing.parse(version.preprocessing)
        cam = explainer.explain(version, prepare(gray, size, recipe))
        write_atomically(target, overlay_png(cam, gray.size, recipe))
    except (HeatmapError, ImageDecodeError) as exc:
        log.warning("no heatmap for image %s: %s", image_id, exc)
        write_atomically(target.with_suffix(".error"), str(exc).encode())
        return False
    target.with_suffix(".error").unlink(missing_ok=True)
    return True
