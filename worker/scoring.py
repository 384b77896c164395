"""Scoring one pass: images of any jobs claimed from the queue (core/scoring_queue.py), decoded
in parallel, one forward pass of the active model (worker/model_cache.py), every result
recorded in one transaction.

A pass of images back from a pass that died runs alone in its process (`RetryGate`); an
image that died `max_batch_attempts` times goes alone, and after as many more deaths alone it
is recorded as an error: one poison image never blocks the others.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlalchemy.orm import Session

from core.config import Settings
from core.imaging import ImageSource, decode_batch
from core.job_state import WAITING_FOR_MODEL, park_for_model
from core.models import ModelVersion, ScoringPass
from core.passes import finish_pass, open_pass, passes_of_message, release_passes
from core.registry import active_version
from core.results import ImageResult, record_results
from core.scoring_queue import (
    ImageToScore,
    QueuePolicy,
    anything_waiting,
    claim,
    jobs_with_free_images,
    worn_out,
)
from core.storage import Storage
from core.text import storable, without_paths
from worker.context import WorkerContext
from worker.model_cache import LoadedModel, ModelLoadError, predict_padded

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000
GAVE_UP = "the worker stopped {times} times while scoring this image, so it was not scored"
FILL_POLL_SECONDS = 0.01


@dataclass(frozen=True)
class Claimed:
    pass_id: int
    images: list[ImageToScore]
    suspect: bool


@dataclass(frozen=True)
class PassReport:
    images: int = 0  # claimed
    new: int = 0  # results recorded now
    suspect: bool = False


def policy_of(settings: Settings) -> QueuePolicy:
    return QueuePolicy(
        settings.batch_size,
        timedelta(seconds=settings.max_wait_seconds),
        settings.max_batch_attempts,
    )


def run_pass(context: WorkerContext, task_id: str | None) -> PassReport:
    """One pass of the most urgent images waiting; an empty report when none are."""
    with context.db.session() as session:
        if task_id and (dead := passes_of_message(session, task_id)):
            back = release_passes(session, dead)
            log.warning("passes %s died with their worker: %d images back in the queue", dead, back)
        if not anything_waiting(session):
            return PassReport()
        model = active_version(session)
        policy = policy_of(context.settings)
        if model is not None:
            _give_up_on_worn_out(session, model, policy)
    if model is None:
        _park_waiting(context, WAITING_FOR_MODEL)
        return PassReport()
    try:
        loaded = context.models.get(model)
    except ModelLoadError as exc:
        log.error("scoring parked: %s", exc)
        _park_waiting(context, f"the active model cannot be used ({exc}); activate another version")
        return PassReport()
    with context.retries.shared():
        claimed = _claim_pass(context, policy, task_id)
        if claimed is not None and not claimed.suspect:
            return _score(context, claimed, loaded, model)
    if claimed is None:
        return PassReport()
    # Its images were in a pass that died: alone, they cannot take others down with them.
    with context.retries.alone():
        return _score(context, claimed, loaded, model)


def _park_waiting(context: WorkerContext, detail: str) -> None:
    with context.db.session() as session:
        for job_id in jobs_with_free_images(session):
            park_for_model(session, job_id, detail)


def _claim_pass(context: WorkerContext, policy: QueuePolicy, task_id: str | None) -> Claimed | None:
    """Claim a pass, waiting up to `batch_wait_ms` for a pass that is not full to fill."""
    deadline = time.monotonic() + context.settings.batch_wait_ms / 1000
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with context.db.session() as session:
        scoring_pass = open_pass(session, worker, task_id, policy.capacity)
        images = claim(session, scoring_pass, policy)
        if not images:
            session.rollback()
            return None
        pass_id, suspect = scoring_pass.id, scoring_pass.suspect
    while len(images) < policy.capacity and not suspect and time.monotonic() < deadline:
        time.sleep(min(FILL_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        with context.db.session() as session:
            again = session.get(ScoringPass, pass_id)
            assert again is not None
            images += claim(session, again, policy)
    return Claimed(pass_id, sorted(images, key=lambda i: i.image_id), suspect)


def _score(
    context: WorkerContext,
    claimed: Claimed,
    loaded: LoadedModel,
    model: ModelVersion,
) -> PassReport:
    images = claimed.images
    jobs = {image.job_id for image in images}
    log.info(
        "pass %d (%d jobs): scoring %d images, ids %d..%d (attempt %d, process %d)",
        claimed.pass_id,
        len(jobs),
        len(images),
        images[0].image_id,
        images[-1].image_id,
        max(image.starts for image in images),
        os.getpid(),
    )
    try:
        results = predict_images(
            loaded, images, context.storage, context.decode_pool, context.settings
        )
    except BaseException:
        _release_after_error(context, claimed.pass_id)
        raise
    with context.db.session() as session:
        new = record_results(session, results, model, claimed.pass_id)
        finish_pass(session, claimed.pass_id, len(jobs), model.id, loaded.precision)
    log.info(
        "pass %d: %d new results, %d already recorded", claimed.pass_id, new, len(results) - new
    )
    return PassReport(len(images), new, claimed.suspect)


def _give_up_on_worn_out(session: Session, model: ModelVersion, policy: QueuePolicy) -> None:
    """Images that kept killing their worker, alone too, are recorded as errors: no pass
    starts on them again, so no further worker dies of them."""
    given_up = [
        ImageResult(image_id, job_id, error=GAVE_UP.format(times=starts))
        for image_id, job_id, starts in worn_out(session, policy)
    ]
    if given_up and record_results(session, given_up, model):
        for result in given_up:
            log.error("job %s image %d: %s", result.job_id, result.image_id, result.error)


def _release_after_error(context: WorkerContext, pass_id: int) -> None:
    """The pass failed without killing its worker: its images go back, as suspects."""
    try:
        with context.db.session() as session:
            release_passes(session, [pass_id])
    except Exception:
        log.exception("pass %d not released; the sweep will", pass_id)


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
        ImageResult(image.image_id, image.job_id, probabilities[i], None)
        if i in probabilities
        else ImageResult(image.image_id, image.job_id, None, _shown(decoded[i], storage))
        for i, image in enumerate(images)
    ]


def _shown(error: object, storage: Storage) -> str:
    """An image's decode error as the client sees it: no path of the server's."""
    return storable(without_paths(str(error), storage.root), MAX_ERROR_LENGTH)
