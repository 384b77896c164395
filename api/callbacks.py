"""/v1/callback: the caller's key name's callback signing secret (shown once, when it is
made) and default URL. The POSTs themselves: core/callbacks.py."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import current_app

from api.auth import SUBMIT, auth, caller
from api.context import api_context
from api.schemas_delivery import CallbackIn, CallbackOut
from core.callbacks import callback_settings, remove_callback, set_callback
from core.models import CallbackSecret

bp = APIBlueprint("callbacks", __name__, url_prefix="/v1", tag="Callbacks")


def init_app(app: APIFlask) -> None:
    app.register_blueprint(bp)


def _out(row: CallbackSecret, secret: str | None = None) -> dict[str, Any]:
    return {
        "owner": row.owner,
        "default_url": row.default_url,
        "secret": secret,
        "secret_created_at": row.created_at,
    }


@bp.put("/callback")
@bp.auth_required(auth, roles=SUBMIT)
@bp.input(CallbackIn)
@bp.output(CallbackOut)
def put_callback(json_data: dict[str, Any]) -> dict[str, Any]:
    """Set the default callback URL of the key's name (null: only URLs given on submit). The
    signing secret is made the first time, or again with `rotate_secret`, and shown only in
    that response: keep it."""
    with api_context(current_app).db.session() as session:
        row, made = set_callback(
            session, caller().name, json_data.get("default_url"), json_data["rotate_secret"]
        )
        return _out(row, made)


@bp.get("/callback")
@bp.auth_required(auth, roles=SUBMIT)
@bp.output(CallbackOut)
@bp.doc(responses={404: "No callback set up for this key name"})
def get_callback() -> dict[str, Any]:
    """The default URL and when the secret was made (never the secret)."""
    with api_context(current_app).db.session() as session:
        return _out(callback_settings(session, caller().name))


@bp.delete("/callback")
@bp.auth_required(auth, roles=SUBMIT)
@bp.output({}, status_code=204)
@bp.doc(responses={404: "No callback set up for this key name"})
def delete_callback() -> tuple[str, int]:
    """Forget the secret and the default URL; pending callbacks of the name's jobs fail."""
    with api_context(current_app).db.session() as session:
        remove_callback(session, caller().name)
    return "", 204
