"""Thin Celery tasks: load ids, call one plain function, enqueue what follows.

Importing this module never imports TensorFlow (scoring and training import it on first use).
Senders elsewhere (the API, the CLI) send these tasks by name: `core/broker/routing.py`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from core import ingest
from core.errors import DomainError
from core.intake.kept_members import finish_kept_upload, jobs_with_unfinished_kept_uploads
from core.jobs import claim_waiting_jobs
from core.models import RunStatus, utcnow
from core.scoring_queue import free_images
from core.sweep import (
    jobs_to_ingest_again,
    jobs_to_score_again,
    release_stale_passes,
    remove_orphan_uploads,
)
from core.training_runs import TrainingParams, request_scheduled_run
from worker.celery_app import context_of
from worker.context import WorkerContext

log = logging.getLogger(__name__)

# A database outage must not lose work: the task runs again later, backing off up to 5 min.
RETRY_WHILE_DATABASE_IS_DOWN: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": None,
}

# An ingest that gave way to a slow upload is sent again this much later.
INGEST_AGAIN_AFTER_SECONDS = 5


@shared_task(bind=True, **RETRY_WHILE_DATABASE_IS_DOWN)
def ingest_job(self: Task, job_id: str) -> None:
    """Expand a job's upload into image rows, then release its scoring batches."""
    context = context_of(self.app)
    outcome = ingest.ingest_job(
        context.db,
        context.storage,
        context.settings,
        job_id,
        release=lambda image_ids: wake_scorers(context, len(image_ids)),
    )
    if outcome.deferred:
        # Its upload is still arriving: the slot goes to other work meanwhile.
        ingest_job.apply_async((job_id,), countdown=INGEST_AGAIN_AFTER_SECONDS)
        return
    log.info("job %s ingested: %d images", job_id, outcome.total)
    if outcome.scoring and not outcome.released:
        wake_for_job(context, job_id)  # a redelivered message: wake scorers for what is left
    elif not outcome.scoring:
        # A model may have been activated while this job was being parked: look again.
        release_waiting(context)


@shared_task(bind=True, **RETRY_WHILE_DATABASE_IS_DOWN)
def score_pass(self: Task) -> None:
    """A wake-up: run one pass of the most urgent images waiting, from any jobs. The message
    carries no work: the database is the queue (core/scoring_queue.py)."""
    _one_pass(self)


@shared_task(bind=True, **RETRY_WHILE_DATABASE_IS_DOWN)
def score_batch(self: Task, job_id: str, image_ids: list[int]) -> None:
    """A per-job batch message sent before the scoring queue existed: now a wake-up."""
    _one_pass(self)


def _one_pass(task: Task) -> None:
    from worker.scoring import run_pass

    context = context_of(task.app)
    report = run_pass(context, task.request.id)
    if not report.images:
        log.info("wake-up %s: no images waiting", task.request.id)
    elif report.suspect:
        # A pass of suspects takes fewer than it might: another wake-up for the rest.
        wake_if_waiting(context)


@shared_task(bind=True, **RETRY_WHILE_DATABASE_IS_DOWN)
def release_waiting_jobs(self: Task) -> None:
    """Start the jobs that were waiting for a model, once one is active (also run by beat)."""
    release_waiting(context_of(self.app))


def release_waiting(context: WorkerContext) -> None:
    with context.db.session() as session:
        claimed = claim_waiting_jobs(session)
    for job_id in claimed:
        log.info("job %s released: a model is active", job_id)
        wake_for_job(context, job_id)


def _release_or_leave_to_the_sweep(context: WorkerContext) -> None:
    """After an activation the run has done its work: a release that fails (the database or
    the broker gone for a moment) must not fail the run; the sweep releases the jobs."""
    try:
        release_waiting(context)
    except Exception:
        log.exception("waiting jobs not released after the activation; the sweep will")


def wake_scorers(context: WorkerContext, images: int) -> None:
    """One wake-up per `batch_size` images newly waiting (at least one): enough passes for
    them whatever else is queued, since every pass takes as many as it has room for."""
    wakeups = max(1, -(-images // context.settings.batch_size))
    for _ in range(wakeups):
        score_pass.delay()


def wake_for_job(context: WorkerContext, job_id: str) -> None:
    with context.db.session() as session:
        waiting = free_images(session, job_id)
    if waiting:
        wake_scorers(context, waiting)


def wake_if_waiting(context: WorkerContext) -> None:
    with context.db.session() as session:
        waiting = free_images(session)
    if waiting:
        score_pass.delay()


@shared_task(bind=True, **RETRY_WHILE_DATABASE_IS_DOWN)
def train_model(self: Task, run_id: int) -> None:
    """Run one training run (queue `training`); its activation releases waiting jobs."""
    from training.train import run_training

    context = context_of(self.app)
    outcome = run_training(
        context.db,
        context.storage,
        context.settings,
        run_id,
        release=lambda: _release_or_leave_to_the_sweep(context),
    )
    log.info("training run %s %s: %s", run_id, outcome.status, outcome.decision or outcome.error)


@shared_task(bind=True, **RETRY_WHILE_DATABASE_IS_DOWN)
def schedule_retraining(self: Task, force: bool = False) -> None:
    """Beat's nightly trigger: one run per scheduled minute, skipped when no labels are new."""
    context = context_of(self.app)
    try:
        params = TrainingParams.from_settings(context.settings, force=force)
    except DomainError as exc:
        log.warning("nightly retraining not started: %s", exc.message)
        return
    key = f"schedule:{utcnow():%Y-%m-%dT%H:%M}"
    with context.db.session() as session:
        run, created = request_scheduled_run(
            session, params, key, stale_after=context.settings.training_stale_after
        )
        run_id, status, reason = run.id, run.status, run.decision
    if created and status == RunStatus.QUEUED:
        train_model.delay(run_id)
    log.info("nightly retraining %s: run %s %s %s", key, run_id, status, reason or "")


@shared_task(bind=True, **RETRY_WHILE_DATABASE_IS_DOWN)
def make_heatmap(self: Task, image_id: int) -> None:
    """The Grad-CAM heatmap of one scored image, with the version that scored it."""
    from worker.heatmaps import make_heatmap as make

    context = context_of(self.app)
    try:
        make(context.db, context.storage, context.settings, context.explainer, image_id)
    except DomainError as exc:  # the image (or its job) was deleted meanwhile
        log.info("no heatmap for image %s: %s", image_id, exc)


@shared_task(bind=True)
def send_callbacks(self: Task) -> None:
    """Beat's tick: POST the summaries of ended jobs whose callbacks are due (a database
    outage just skips the tick: the next one sends them)."""
    from core.callbacks import http_post, send_due

    context = context_of(self.app)
    settings = context.settings
    sent = send_due(context.db, settings, http_post(settings.callback_timeout_seconds))
    if sent:
        log.info("%d callbacks delivered", sent)


@shared_task(bind=True, **RETRY_WHILE_DATABASE_IS_DOWN)
def sweep(self: Task) -> None:
    """Beat's safety net: start jobs waiting for a model, send again the work of jobs that
    stopped moving (a lost message, a dead worker), remove uploads nobody will finish."""
    context = context_of(self.app)
    release_waiting(context)
    stall = context.settings.stall_after
    with context.db.session() as session:
        back = release_stale_passes(session, stall)
        to_ingest = jobs_to_ingest_again(session, stall)
        to_score = jobs_to_score_again(session, stall)
        removed = remove_orphan_uploads(session, context.storage, stall)
        unfinished = jobs_with_unfinished_kept_uploads(session, context.storage)
    for job_id in to_ingest:
        log.warning("job %s: ingest did not finish; sending it again", job_id)
        ingest_job.delay(job_id)
    if back:
        log.warning("passes silent for %s: %d images back in the queue", stall, back)
    for job_id in to_score:
        log.warning("job %s: no progress for %s; waking scorers for its images", job_id, stall)
        wake_for_job(context, job_id)
    for job_id in unfinished:
        log.warning("job %s: its ingest ended before blanking its kept upload; blanking", job_id)
        finish_kept_upload(context.db, context.storage, job_id)
    if removed:
        log.info("removed %d abandoned uploads", removed)
