"""/v1/training-runs: start a retraining and follow it."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import current_app, url_for

from api.auth import ADMIN, READ, auth, caller
from api.context import api_context
from api.pagination import pagination
from api.schemas import PageQuery, TrainingRunIn, TrainingRunOut, TrainingRunsPageOut
from core.models import TrainingRun
from core.training_runs import (
    TrainingParams,
    get_run,
    list_runs,
    queue_requested_run,
    version_of_run,
)

bp = APIBlueprint("training", __name__, url_prefix="/v1", tag="Training")


def init_app(app: APIFlask) -> None:
    app.register_blueprint(bp)


@bp.post("/training-runs")
@bp.auth_required(auth, roles=ADMIN)
@bp.input(TrainingRunIn, location="json")
@bp.output(TrainingRunOut, status_code=202, description="The run, queued")
@bp.doc(
    responses={
        400: "Bad parameters or no reference data",
        409: "A run is in progress",
        503: "Queue unavailable (the run is recorded as failed)",
    }
)
def start_training_run(json_data: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Queue a retraining on the reference data plus confirmed labels."""
    context = api_context(current_app)
    params = TrainingParams.from_settings(context.settings, **json_data)
    run_id = queue_requested_run(
        context.db,
        params,
        caller().name,
        context.queue.train,
        context.settings.training_stale_after,
    )
    with context.db.session() as session:
        out = run_out(session, get_run(session, run_id))
    return out, 202, {"Location": url_for("training.get_training_run", run_id=run_id)}


@bp.get("/training-runs")
@bp.auth_required(auth, roles=READ)
@bp.input(PageQuery, location="query")
@bp.output(TrainingRunsPageOut)
def list_training_runs(query_data: dict[str, Any]) -> dict[str, Any]:
    """Training runs, newest first."""
    with api_context(current_app).db.session() as session:
        page = list_runs(session, query_data["page"], query_data["per_page"])
        return {
            "items": [run_out(session, run) for run in page.items],
            "pagination": pagination(page),
        }


@bp.get("/training-runs/<int(max=2147483647):run_id>")
@bp.auth_required(auth, roles=READ)
@bp.output(TrainingRunOut)
@bp.doc(responses={404: "No such run"})
def get_training_run(run_id: int) -> dict[str, Any]:
    """Status, epoch progress, metrics, the resulting version, or the error."""
    with api_context(current_app).db.session() as session:
        return run_out(session, get_run(session, run_id))


def run_out(session: Any, run: TrainingRun) -> dict[str, Any]:
    version = version_of_run(session, run.id)
    return {
        "id": run.id,
        "status": run.status,
        "trigger": run.trigger,
        "params": run.params,
        "epoch": run.epoch,
        "epochs": run.epochs,
        "progress": round(run.epoch / run.epochs, 4) if run.epochs else 0.0,
        "history": run.history,
        "metrics": run.metrics,
        "version": version.version if version else None,
        "activated": run.activated,
        "decision": run.decision,
        "error": run.error,
        "labels_used": run.labels_used,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }
