"""Signing in to the reading room, and the request's principal from its session cookie.

The cookie is Flask's signed session (HttpOnly, SameSite=Strict, Secure when the request came
over TLS) and holds two random values: the server-side session's token (core/ui_sessions.py)
and Flask-WTF's CSRF secret. The API key is never in it, nor in the browser's storage.
A request signed in this way may call the /v1 API too (the pages load previews and send
uploads through it); a state-changing one must then carry the CSRF token in `X-CSRFToken`.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect

from api.context import api_context
from api.errors import api_error, render_error
from core.config import Settings
from core.keys import Principal
from core.ui_sessions import close_session, open_session, principal_of

csrf = CSRFProtect()
TOKEN = "sid"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SessionCookie(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request itself came over TLS
    (gunicorn sets the scheme from X-Forwarded-Proto for the proxies it trusts)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def init_app(app: Flask, settings: Settings) -> None:
    app.secret_key = settings.secret_key or _kept_secret(settings.storage_dir / ".secret-key")
    app.session_interface = SessionCookie()
    app.config.update(
        SESSION_COOKIE_NAME="pneumoscan_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.ui_session_hours),
        # Checked where it matters (every /ui form, and /v1 calls signed in by cookie), not
        # on /v1 calls with an API key, which no other site can make for the browser.
        WTF_CSRF_CHECK_DEFAULT=False,
        # The token lives as long as the sign-in, not an hour: a page left open still works.
        WTF_CSRF_TIME_LIMIT=None,
    )
    csrf.init_app(app)
    app.register_error_handler(CSRFError, _csrf_refused)


def _csrf_refused(error: CSRFError) -> Any:
    """A /v1 call signed in by cookie, without its token (the pages answer in HTML)."""
    message = f"a request signed in by a session cookie must send X-CSRFToken: {error.description}"
    return render_error(api_error(400, message, "csrf_failed"))


def _kept_secret(path: Path) -> str:
    """A random secret made once on the storage volume, so every API process (and every
    restart) signs cookies with the same one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under a private name, then linked into place: of processes starting
        # together, one link wins and every one reads the same complete secret.
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
        with os.fdopen(handle, "w") as out:
            out.write(secrets.token_urlsafe(48))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    return path.read_text().strip()


def sign_in(api_key: str) -> bool:
    """Start a session for a valid key; the old cookie's contents (and CSRF token) go."""
    context = api_context(current_app)
    lifetime = timedelta(hours=context.settings.ui_session_hours)
    with context.db.session() as db_session:
        token = open_session(db_session, api_key.strip(), lifetime)
    if token is None:
        return False
    session.clear()
    session.permanent = True
    session[TOKEN] = token
    return True


def sign_out() -> None:
    token = session.get(TOKEN)
    if token:
        with api_context(current_app).db.session() as db_session:
            close_session(db_session, token)
    session.clear()


def signed_in() -> Principal | None:
    """Who the request's session cookie signs in as (None: nobody), once per request."""
    if "ui_principal" not in g:
        token = session.get(TOKEN)
        found = None
        if isinstance(token, str):
            with api_context(current_app).db.session() as db_session:
                found = principal_of(db_session, token)
        g.ui_principal = found
    principal: Principal | None = g.ui_principal
    return principal


def api_caller_by_cookie() -> Principal | None:
    """The principal of a /v1 request that carries no API key but a session cookie; a
    state-changing request must prove it came from our pages (CSRFError otherwise)."""
    principal = signed_in()
    if principal is not None and request.method not in SAFE_METHODS:
        csrf.protect()
    return principal
