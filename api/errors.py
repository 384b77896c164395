"""Every error leaves the API as JSON: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from apiflask import APIFlask, HTTPError
from flask.typing import ResponseReturnValue

from core.errors import (
    ConflictError,
    DomainError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)

log = logging.getLogger(__name__)

STATUS_OF = {
    NotFoundError: 404,
    ForbiddenError: 403,
    InvalidInputError: 400,
    ConflictError: 409,
    UnavailableError: 503,
}


def api_error(status: int, message: str, code: str | None = None) -> HTTPError:
    """An HTTPError with a stable machine-readable code."""
    return HTTPError(status, message, extra_data={"code": code or _code_for(status)})


def init_app(app: APIFlask) -> None:
    app.error_processor(render_error)
    app.register_error_handler(DomainError, _from_domain_error)


def _from_domain_error(error: DomainError) -> ResponseReturnValue:
    status = next((s for cls, s in STATUS_OF.items() if isinstance(error, cls)), 400)
    return render_error(api_error(status, error.message, error.code))


def render_error(error: HTTPError) -> Any:
    if error.status_code >= 500:
        log.error("request failed with %s: %s", error.status_code, error.message)
    extra = error.extra_data or {}
    is_validation = error.status_code in (400, 422) and bool(error.detail)
    code = extra.get("code") or (
        "validation_error" if is_validation else _code_for(error.status_code)
    )
    body = {"code": code, "message": error.message, "details": error.detail or None}
    return {"error": body}, error.status_code, error.headers


# Spelled out rather than derived from HTTP reason phrases, which change between Pythons.
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def _code_for(status: int) -> str:
    return CODES.get(status, "error")
