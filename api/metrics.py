"""GET /metrics: Prometheus's text format, open like the health endpoints, outside /v1.

Only counts: no job ids, paths or key names. Built from the database at each scrape
(`core.metrics`), so it needs no state shared between gunicorn's processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from api.context import api_context
from core.db import Database
from core.metrics import ServiceCounts, service_counts

bp = APIBlueprint("metrics", __name__, tag="Health")
REGISTRY = "pneumoscan.metrics"
# The text format every Prometheus reads (the newer 1.0.0 differs only for non-ASCII names).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {
        "description": "Prometheus's text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


def init_app(app: APIFlask) -> None:
    registry = CollectorRegistry(auto_describe=False)
    context = api_context(app)
    max_wait = timedelta(seconds=context.settings.max_wait_seconds)
    registry.register(DatabaseCollector(context.db, max_wait))
    app.extensions[REGISTRY] = registry
    app.register_blueprint(bp)


class DatabaseCollector:
    """A Prometheus collector that counts what the database holds when it is scraped."""

    def __init__(self, db: Database, max_wait: timedelta) -> None:
        self.db = db
        self.max_wait = max_wait

    def collect(self) -> Iterator[Metric]:
        with self.db.session() as session:
            counts = service_counts(session, self.max_wait)
        yield from gauges(counts)


def gauges(counts: ServiceCounts) -> Iterator[Metric]:
    yield _labelled("pneumoscan_jobs", "Jobs by status.", "status", counts.jobs)
    yield GaugeMetricFamily(
        "pneumoscan_jobs_waiting_for_model",
        "Queued jobs that wait for a model to be activated.",
        value=counts.jobs_waiting_for_model,
    )
    yield _labelled(
        "pneumoscan_images",
        "Images of recorded jobs: scored, error (could not be decoded), pending (of queued and "
        "running jobs), and rejected entries (not images).",
        "state",
        counts.images,
    )
    yield GaugeMetricFamily(
        "pneumoscan_oldest_unfinished_job_seconds",
        "Age of the oldest queued or running job (0 when none): alert when work stops moving.",
        value=counts.oldest_unfinished_job_seconds,
    )
    active = {counts.active_model: 1} if counts.active_model is not None else {}
    yield _labelled(
        "pneumoscan_active_model", "The active model version (1), if any.", "version", active
    )
    yield _labelled(
        "pneumoscan_model_versions", "Model versions by status.", "status", counts.model_versions
    )
    yield _labelled(
        "pneumoscan_training_runs", "Training runs by status.", "status", counts.training_runs
    )
    yield _labelled(
        "pneumoscan_backlog_images",
        "Images of queued and running jobs without a result, by the priority they are scored "
        "at now (routine waiting past PNEUMOSCAN_MAX_WAIT_SECONDS counts as stat).",
        "priority",
        counts.backlog,
    )
    yield _labelled(
        "pneumoscan_dicom_reports",
        "DICOM reports to PNEUMOSCAN_DICOM_DESTINATION by state: pending (waiting for the job "
        "or for the next try), delivered, failed (every try refused), skipped.",
        "state",
        counts.dicom_reports,
    )
    yield _labelled(
        "pneumoscan_callbacks",
        "Job callbacks by state: pending (the job runs, or the next try waits), delivered, "
        "failed (every try got no 2xx).",
        "state",
        counts.callbacks,
    )
    if counts.pass_fill is not None:
        yield GaugeMetricFamily(
            "pneumoscan_pass_fill",
            "Mean images per forward pass over the batch size, of the last 100 passes.",
            value=counts.pass_fill,
        )


def _labelled(name: str, documentation: str, label: str, values: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


@bp.get("/metrics")
@bp.doc(responses=RESPONSES)
def metrics() -> Response:
    """Counts of jobs, images, model versions and training runs, for Prometheus."""
    registry: CollectorRegistry = current_app.extensions[REGISTRY]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE)
