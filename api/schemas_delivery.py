"""Schemas of what leaves pneumoscan when a job ends: DICOM reports' deliveries, callbacks."""

from __future__ import annotations

from apiflask import Schema
from apiflask.fields import URL, Boolean, DateTime, Integer, List, Nested, String
from apiflask.validators import Length


class CallbackIn(Schema):
    default_url = URL(
        schemes={"http", "https"},
        require_tld=False,
        validate=Length(max=2000),
        allow_none=True,
        load_default=None,
        metadata={"description": "Where every job of this key name reports when it ends."},
    )
    rotate_secret = Boolean(
        load_default=False, metadata={"description": "Make a new secret (the old one stops)."}
    )


class CallbackOut(Schema):
    owner = String()
    default_url = String(allow_none=True)
    secret = String(
        allow_none=True,
        metadata={"description": "Only in the response that made it: HMAC-SHA256 key."},
    )
    secret_created_at = DateTime()


class CallbackAttemptOut(Schema):
    number = Integer()
    started_at = DateTime()
    http_status = Integer(allow_none=True)
    error = String(allow_none=True)
    duration_ms = Integer()


class JobCallbackOut(Schema):
    url = String()
    state = String(metadata={"enum": ["pending", "delivered", "failed"]})
    next_attempt_at = DateTime(allow_none=True)
    delivered_at = DateTime(allow_none=True)
    attempts = List(Nested(CallbackAttemptOut))


class DicomReportOut(Schema):
    study_uid = String()
    destination = String(metadata={"description": "`AE@host:port`"})
    state = String(metadata={"enum": ["pending", "delivered", "failed", "skipped"]})
    attempts = Integer()
    last_status = String(
        allow_none=True, metadata={"description": "The peer's C-STORE status, or why none came."}
    )
    next_attempt_at = DateTime(allow_none=True)
    delivered_at = DateTime(allow_none=True)
    report_uid = String(allow_none=True, metadata={"description": "The SR's SOPInstanceUID."})
