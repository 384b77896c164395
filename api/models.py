"""/v1/models: registered versions with their metrics and plots; promote or roll back."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import current_app, send_file

from api.auth import ADMIN, READ, auth
from api.context import api_context
from api.errors import api_error
from api.schemas import ActivatedModelOut, ModelsOut
from core.activation import activate_version
from core.models import ModelVersion
from core.registry import get_version, list_versions

bp = APIBlueprint("models", __name__, url_prefix="/v1", tag="Models")


def init_app(app: APIFlask) -> None:
    app.register_blueprint(bp)


@bp.get("/models")
@bp.auth_required(auth, roles=READ)
@bp.output(ModelsOut)
def list_models() -> dict[str, Any]:
    """Every version, newest first, with metrics, threshold, status and training run."""
    with api_context(current_app).db.session() as session:
        return {"items": [model_out(row) for row in list_versions(session)]}


@bp.post("/models/<version>/activate")
@bp.auth_required(auth, roles=ADMIN)
@bp.output(ActivatedModelOut)
@bp.doc(
    responses={
        404: "No such version",
        409: "Its artifact was pruned",
        503: "Activated, but the queue is unavailable: the scheduler releases waiting jobs",
    }
)
def activate_model(version: str) -> dict[str, Any]:
    """Make this version the active one (promote a candidate, or roll back)."""
    context = api_context(current_app)
    return model_out(activate_version(context.db, version, context.queue.release_waiting_jobs))


PLOTS = ("roc", "confusion_matrix", "reliability", "training_curves")
PLOT_RESPONSES: dict[int | str, Any] = {
    200: {"description": "The plot", "content": {"image/png": {}}},
    404: {
        "description": "No such version or plot (`training_curves` exists only for "
        "versions trained here)"
    },
}


@bp.get("/models/<version>/plots/<name>.png")
@bp.auth_required(auth, roles=READ)
@bp.doc(responses=PLOT_RESPONSES)
def model_plot(version: str, name: str) -> Any:
    """One of the version's evaluation pictures: `roc`, `confusion_matrix`, `reliability`,
    `training_curves`."""
    context = api_context(current_app)
    with context.db.session() as session:
        get_version(session, version)
    path = context.storage.model_dir(version) / f"{name}.png"
    if name not in PLOTS or not path.is_file():
        raise api_error(404, f"model version {version} has no plot {name!r}", "no_plot")
    return send_file(path, mimetype="image/png", max_age=3600)


def model_out(row: ModelVersion) -> dict[str, Any]:
    return {
        "version": row.version,
        "status": row.status,
        "architecture": row.architecture,
        "source": row.source,
        "input_size": row.input_size,
        "threshold": row.threshold,
        "preprocessing": row.preprocessing,
        "sha256": row.sha256,
        "metrics": row.metrics,
        "training_run_id": row.training_run_id,
        "artifact_available": row.artifact_deleted_at is None,
        "created_at": row.created_at,
        "activated_at": row.activated_at,
    }
