"""Liveness and readiness; open to everyone, outside /v1."""

from __future__ import annotations

import logging
from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import current_app
from sqlalchemy import text

from api.context import ApiContext, api_context
from api.schemas import HealthOut

log = logging.getLogger(__name__)
bp = APIBlueprint("health", __name__, tag="Health")


def init_app(app: APIFlask) -> None:
    app.register_blueprint(bp)


@bp.get("/healthz")
@bp.output(HealthOut)
def healthz() -> dict[str, Any]:
    """The process answers."""
    return {"status": "ok", "checks": []}


@bp.get("/readyz")
@bp.output(HealthOut)
@bp.doc(responses={503: "A dependency is unreachable"})
def readyz() -> tuple[dict[str, Any], int]:
    """The database and the broker answer."""
    context = api_context(current_app)
    checks = [_check("database", _database_ok, context), _check("broker", _broker_ok, context)]
    ready = all(check["ok"] for check in checks)
    return {"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503


def _check(name: str, probe: Any, context: ApiContext) -> dict[str, Any]:
    try:
        probe(context)
        return {"name": name, "ok": True, "detail": None}
    except Exception as exc:  # any failure means "not ready"; the log says why
        # An open endpoint: the message would name the host, the user, sometimes more.
        log.warning("readiness: %s unreachable: %s: %s", name, type(exc).__name__, exc)
        return {"name": name, "ok": False, "detail": f"{name} unreachable ({type(exc).__name__})"}


def _database_ok(context: ApiContext) -> None:
    with context.db.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _broker_ok(context: ApiContext) -> None:
    context.queue.check()
