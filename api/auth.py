"""Bearer API keys on every /v1 endpoint (or a reading-room session cookie, with its CSRF
token on anything that changes state); the role each endpoint needs (core/keys.py ROLES
says which scopes hold it: read < submit < admin, and review, which labels, beside submit)."""

from __future__ import annotations

from typing import Any, cast

from apiflask import HTTPTokenAuth
from flask import current_app

from api.context import api_context
from api.errors import api_error, render_error
from api.ui.sessions import api_caller_by_cookie
from core.keys import Principal, authenticate


class KeyOrSession(HTTPTokenAuth):
    """A Bearer key; failing that, a reading-room session cookie (api/ui/sessions.py)."""

    def authenticate(self, auth: Any, stored_password: Any) -> Any:
        if getattr(auth, "token", None):
            return super().authenticate(auth, stored_password)
        return api_caller_by_cookie()


auth = KeyOrSession(
    scheme="Bearer",
    description="An API key from `pneumoscan keys create --name N "
    "--scope read|submit|review|admin`.",
)
READ, SUBMIT, REVIEW, ADMIN = ["read"], ["submit"], ["review"], ["admin"]


@auth.verify_token
def _verify(token: str) -> Principal | None:
    if not token:
        return None
    with api_context(current_app).db.session() as session:
        return authenticate(session, token)


@auth.get_user_roles
def _roles(principal: Principal) -> list[str]:
    return principal.roles


@auth.error_processor
def _auth_error(error: Any) -> Any:
    if error.status_code == 401:
        return render_error(
            api_error(401, "send a valid API key: Authorization: Bearer <key>", "unauthorized")
        )
    return render_error(api_error(403, "this API key's scope does not allow this", "forbidden"))


def caller() -> Principal:
    """The principal of the key that authenticated this request."""
    return cast(Principal, auth.current_user)
