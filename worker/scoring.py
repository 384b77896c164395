"""Scoring a batch: the active model cached per process, parallel decoding, one forward pass.

TensorFlow is imported here only inside functions, on first use in a worker child process:
a model loaded before fork hangs the child, and loading in `worker_process_init` gets the
child killed by Celery's start-up timeout.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.config import Settings
from core.imaging import ImageDecodeError, Preprocessing, decode_for_model
from core.inference import configure_tensorflow, predict_padded
from core.jobs import park_job_for_model
from core.models import ModelVersion
from core.recovery import count_attempt, forget_attempts
from core.registry import ArtifactIntegrityError, active_version, verified_artifact
from core.results import ImageResult, ImageToScore, images_to_score, record_results
from core.storage import Storage
from core.text import storable, without_paths
from worker.context import WorkerContext

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The active model is not a usable classifier."""


@dataclass(frozen=True)
class LoadedModel:
    version: str
    version_id: int
    input_size: int
    network: Any  # a keras.Model, safe for concurrent inference once traced
    preprocessing: Preprocessing  # the input the version was trained on


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
        try:
            path = verified_artifact(self.storage, version)
        except ArtifactIntegrityError as exc:
            raise ModelLoadError(str(exc)) from exc
        keras = _import_keras(self.settings)
        try:
            network = keras.models.load_model(path, compile=False)
        except Exception as exc:  # whatever Keras raises, the version cannot serve
            raise ModelLoadError(f"model version {version.version} does not load: {exc}") from exc
        _check_classifier(network, version)
        # Trace the one batch shape now, under the lock: concurrent first calls (threads pool)
        # would race to build the predict function, and the first batch would wait for it.
        size = version.input_size
        predict_padded(network, np.zeros((1, size, size, 3), np.float32), self.settings.batch_size)
        self.loads += 1
        log.info("loaded model version %s in %.1f s", version.version, time.monotonic() - started)
        recipe = Preprocessing.parse(version.preprocessing)
        return LoadedModel(version.version, version.id, version.input_size, network, recipe)


def _import_keras(settings: Settings) -> Any:
    configure_tensorflow(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
    import keras

    return keras


def _check_classifier(network: Any, version: ModelVersion) -> None:
    expected_in = (None, version.input_size, version.input_size, 3)
    if tuple(network.input_shape) != expected_in or tuple(network.output_shape) != (None, 1):
        raise ModelLoadError(
            f"model version {version.version} maps {network.input_shape} to "
            f"{network.output_shape}; expected {expected_in} to (None, 1)"
        )


MAX_ERROR_LENGTH = 2000
GAVE_UP = "the worker stopped {times} times while scoring this image, so it was not scored"


def score_images(context: WorkerContext, job_id: str, image_ids: Sequence[int]) -> int:
    """Score the images of one batch that still need it; returns how many results are new."""
    with context.db.session() as session:
        todo = images_to_score(session, job_id, image_ids)
        model = active_version(session) if todo else None
        if todo and model is None:
            park_job_for_model(session, job_id)
        # Committed before the work starts, so a start that kills the worker still counts.
        attempt = count_attempt(session, job_id, image_ids) if todo and model else 0
    if not todo or model is None:
        log.info(
            "job %s batch of %d: nothing to score (already recorded, or the job stopped)",
            job_id,
            len(image_ids),
        )
        return 0
    if attempt > context.settings.max_batch_attempts:
        return _one_at_a_time(context, job_id, image_ids, todo, model, attempt)
    loaded = _load_or_park(context, job_id, model)
    if loaded is None:
        return 0
    # A batch whose first start killed its worker runs alone: it may do it again.
    with context.retries.alone() if attempt > 1 else context.retries.shared():
        return _score_and_record(context, job_id, loaded, todo, model, attempt, image_ids)


def _score_and_record(
    context: WorkerContext,
    job_id: str,
    loaded: LoadedModel,
    images: Sequence[ImageToScore],
    model: ModelVersion,
    attempt: int,
    counted: Sequence[int],
) -> int:
    """Score `images` and record their results; the start count kept under `counted` (the
    batch's ids, or one image's) is dropped in the same transaction: it has finished."""
    log.info(
        "job %s: scoring %d images, ids %d..%d (attempt %d, process %d)",
        job_id,
        len(images),
        images[0].image_id,
        images[-1].image_id,
        attempt,
        os.getpid(),
    )
    results = predict_images(loaded, images, context.storage, context.decode_pool, context.settings)
    with context.db.session() as session:
        new = record_results(session, job_id, results, model)
        forget_attempts(session, job_id, counted)
    log.info(
        "job %s batch of %d: %d new results, %d already recorded",
        job_id,
        len(images),
        new,
        len(results) - new,
    )
    return new


def _load_or_park(context: WorkerContext, job_id: str, model: ModelVersion) -> LoadedModel | None:
    try:
        return context.models.get(model)
    except ModelLoadError as exc:
        log.error("job %s parked: %s", job_id, exc)
        with context.db.session() as session:
            park_job_for_model(
                session,
                job_id,
                f"the active model cannot be used ({exc}); activate another version",
            )
        return None


def _one_at_a_time(
    context: WorkerContext,
    job_id: str,
    image_ids: Sequence[int],
    todo: Sequence[ImageToScore],
    model: ModelVersion,
    attempt: int,
) -> int:
    """A batch that keeps killing its worker: its images are scored one at a time, alone in
    the process, each start counted first, so the one that kills it is known by its count
    and recorded as an error once past the limit; one poison image never blocks the others.
    Whichever way its batches are sent again, an image's own count follows it."""
    limit = context.settings.max_batch_attempts
    if len(image_ids) > 1:
        log.warning(
            "job %s: a batch of %d was started %d times without finishing; "
            "scoring its images one at a time",
            job_id,
            len(image_ids),
            attempt - 1,
        )
    new, loaded = 0, None
    with context.retries.alone():
        for image in todo:
            # A batch of one is counted under the image's own key already.
            starts = attempt if len(image_ids) == 1 else _count_start(context, job_id, image)
            if starts > limit:
                new += _give_up(context, job_id, image.image_id, model, starts)
                continue
            loaded = loaded or _load_or_park(context, job_id, model)
            if loaded is None:
                return new
            ids = [image.image_id]
            new += _score_and_record(context, job_id, loaded, [image], model, starts, ids)
    with context.db.session() as session:
        forget_attempts(session, job_id, image_ids)
    return new


def _count_start(context: WorkerContext, job_id: str, image: ImageToScore) -> int:
    with context.db.session() as session:
        return count_attempt(session, job_id, [image.image_id])


def _give_up(
    context: WorkerContext, job_id: str, image_id: int, model: ModelVersion, starts: int
) -> int:
    error = GAVE_UP.format(times=starts - 1)
    with context.db.session() as session:
        new = record_results(session, job_id, [ImageResult(image_id, error=error)], model)
        forget_attempts(session, job_id, [image_id])
    log.error("job %s image %d: %s", job_id, image_id, error)
    return new


def predict_images(
    loaded: LoadedModel,
    images: Sequence[ImageToScore],
    storage: Storage,
    pool: ThreadPoolExecutor,
    settings: Settings,
) -> list[ImageResult]:
    """Decode in parallel, run the forward pass; an unreadable image becomes an error result."""
    size = loaded.input_size

    def decode(image: ImageToScore) -> np.ndarray | str:
        try:
            return decode_for_model(
                storage.resolve(image.location),
                image.format,
                size,
                settings.max_image_pixels,
                image.span,
                loaded.preprocessing,
            )
        except ImageDecodeError as exc:  # shown to the client: no path of the server's
            return storable(without_paths(str(exc), storage.root), MAX_ERROR_LENGTH)

    decoded = list(pool.map(decode, images))
    ok = [i for i, item in enumerate(decoded) if isinstance(item, np.ndarray)]
    probabilities: dict[int, float] = {}
    if ok:
        stacked = np.stack([decoded[i] for i in ok]).astype(np.float32)
        predicted = predict_padded(loaded.network, stacked, settings.batch_size)
        for index, probability in zip(ok, predicted, strict=True):
            probabilities[index] = float(probability)
    return [
        ImageResult(image.image_id, probabilities[i], None)
        if i in probabilities
        else ImageResult(image.image_id, None, str(decoded[i]))
        for i, image in enumerate(images)
    ]
