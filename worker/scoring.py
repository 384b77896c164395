"""Scoring a batch: the active model (worker/model_cache.py), parallel decoding, one forward
pass, results recorded; a batch that keeps killing its worker is taken apart."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core.attempts import count_attempt, forget_attempts
from core.config import Settings
from core.imaging import ImageSource, decode_batch
from core.job_state import park_for_model
from core.models import ModelVersion
from core.registry import active_version
from core.results import ImageResult, ImageToScore, images_to_score, record_results
from core.storage import Storage
from core.text import storable, without_paths
from worker.context import WorkerContext
from worker.model_cache import LoadedModel, ModelLoadError, predict_padded

log = logging.getLogger(__name__)


MAX_ERROR_LENGTH = 2000
GAVE_UP = "the worker stopped {times} times while scoring this image, so it was not scored"


def score_images(context: WorkerContext, job_id: str, image_ids: Sequence[int]) -> int:
    """Score the images of one batch that still need it; returns how many results are new."""
    with context.db.session() as session:
        todo = images_to_score(session, job_id, image_ids)
        model = active_version(session) if todo else None
        if todo and model is None:
            park_for_model(session, job_id)
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
            park_for_model(
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
    sources = [ImageSource(storage.resolve(i.location), i.format, i.span) for i in images]
    decoded = decode_batch(
        sources, loaded.input_size, settings.max_image_pixels, loaded.preprocessing, pool
    )
    ok = {i: item for i, item in enumerate(decoded) if isinstance(item, np.ndarray)}
    probabilities: dict[int, float] = {}
    if ok:
        stacked = np.stack(list(ok.values())).astype(np.float32)
        predicted = predict_padded(loaded.network, stacked, settings.batch_size)
        for index, probability in zip(ok, predicted, strict=True):
            probabilities[index] = float(probability)
    return [
        ImageResult(image.image_id, probabilities[i], None)
        if i in probabilities
        else ImageResult(image.image_id, None, _shown(decoded[i], storage))
        for i, image in enumerate(images)
    ]


def _shown(error: object, storage: Storage) -> str:
    """An image's decode error as the client sees it: no path of the server's."""
    return storable(without_paths(str(error), storage.root), MAX_ERROR_LENGTH)
