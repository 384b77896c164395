"""Callbacks: when a job ends, its summary is POSTed to a URL, signed with its owner's secret.

A key name gets a signing secret (shown once, when it is made) and may set a default URL
(`PUT /v1/callback`); a submission may name its own URL (`?callback_url=`). Each POST carries

    Pneumoscan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    Pneumoscan-Delivery: <job id>

A receiver checks the signature and that `t` is recent (`verify`), and ignores a delivery id
it has seen: a replayed request fails one or the other. A POST that gets no 2xx is tried
again after PNEUMOSCAN_CALLBACK_RETRY_SECONDS, doubling, PNEUMOSCAN_CALLBACK_ATTEMPTS times
in all; every attempt is recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.config import Settings
from core.db import Database
from core.deliveries import retry_at
from core.errors import ConflictError, NotFoundError
from core.models import (
    FINISHED_STATUSES,
    Callback,
    CallbackAttempt,
    CallbackSecret,
    DeliveryState,
    Job,
    utcnow,
)
from core.text import storable

SIGNATURE_HEADER = "Pneumoscan-Signature"
DELIVERY_HEADER = "Pneumoscan-Delivery"
EVENT = "job.ended"
# (HTTP status or None, error or None) of one POST of `body` with `headers` to `url`.
Post = Callable[[str, bytes, dict[str, str]], tuple[int | None, str | None]]


class NoCallbackSecretError(ConflictError):
    code = "no_callback_secret"


def http_post(timeout: float) -> Post:
    """POSTs with httpx: redirects are not followed (a 3xx is a failed attempt)."""
    import httpx

    def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"

    return post


def set_callback(
    session: Session, owner: str, default_url: str | None, rotate: bool = False
) -> tuple[CallbackSecret, str | None]:
    """Set the key name's default URL; make its secret if it has none (or `rotate`).
    Returns the row and the new secret, which is shown only now (None if unchanged)."""
    row = session.get(CallbackSecret, owner)
    made = None
    if row is None:
        row = CallbackSecret(owner=owner)
        session.add(row)
    if row.secret is None or rotate:
        made = secrets.token_hex(32)
        row.secret, row.created_at = made, utcnow()
    row.default_url = default_url
    session.flush()
    return row, made


def callback_settings(session: Session, owner: str) -> CallbackSecret:
    row = session.get(CallbackSecret, owner)
    if row is None:
        raise NotFoundError(f"no callback is set up for {owner}: PUT /v1/callback")
    return row


def remove_callback(session: Session, owner: str) -> None:
    session.delete(callback_settings(session, owner))


def check_callback_url(session: Session, owner: str, url: str | None) -> None:
    """A submission may name a URL only once its key name has a secret to sign with."""
    if url and session.get(CallbackSecret, owner) is None:
        raise NoCallbackSecretError(
            f"{owner} has no callback secret yet: PUT /v1/callback makes one (shown once)"
        )


def attach(session: Session, job_id: str, owner: str | None, url: str | None) -> None:
    """The job's callback, to `url` or else to its owner's default URL, if either is set."""
    if owner is None:
        return
    check_callback_url(session, owner, url)
    row = session.get(CallbackSecret, owner)
    target = url or (row.default_url if row else None)
    if target:
        session.add(Callback(job_id=job_id, url=target, owner=owner))


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, tolerance: float = 300, now: float | None = None
) -> bool:
    """What a receiver checks: the signature is ours, over this body, made recently."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    fresh = abs((time.time() if now is None else now) - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected, fields.get("v1", ""))


def summary(job: Job, api_url: str) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "event": EVENT,
        "job": {
            "id": job.id,
            "status": str(job.status),
            "status_detail": job.status_detail,
            "source_kind": str(job.source_kind),
            "total": job.total,
            "scored": job.scored,
            "errors": job.errors,
            "rejected": job.rejected,
            "model_versions": list(job.model_versions or []),
            "created_at": when(job.created_at),
            "finished_at": when(job.finished_at),
            "url": f"{api_url}/v1/jobs/{job.id}",
            "results_url": f"{api_url}/v1/jobs/{job.id}/results",
        },
    }


def send_due(db: Database, settings: Settings, post: Post, limit: int = 20) -> int:
    """POST every callback that is due, once; returns how many were delivered."""
    delivered = 0
    for job_id in _claim_due(db, settings, limit):
        with db.session() as session:
            callback = session.get(Callback, job_id)
            job = session.get(Job, job_id)
            secret = session.get(CallbackSecret, callback.owner) if callback else None
            if callback is None or job is None:
                continue
            if secret is None:
                callback.state = DeliveryState.FAILED
                _record(session, callback, None, "the key name's callback secret was removed", 0)
                continue
            body = json.dumps(summary(job, settings.api_url), sort_keys=True).encode()
            url, key = callback.url, secret.secret
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(key, body, int(time.time())),
            DELIVERY_HEADER: job_id,
            "User-Agent": "pneumoscan-callback",
        }
        started = time.monotonic()
        status, error = post(url, body, headers)
        took = int((time.monotonic() - started) * 1000)
        ok = status is not None and 200 <= status < 300
        with db.session() as session:
            callback = session.get(Callback, job_id)
            if callback is None:
                continue
            _record(session, callback, status, error, took)
            now = utcnow()
            if ok:
                callback.state, callback.delivered_at = DeliveryState.DELIVERED, now
                delivered += 1
            elif callback.attempts >= settings.callback_attempts:
                callback.state = DeliveryState.FAILED
            else:
                callback.next_attempt_at = retry_at(
                    now, settings.callback_retry_seconds, callback.attempts
                )
    return delivered


def _claim_due(db: Database, settings: Settings, limit: int) -> list[str]:
    """Callbacks due (their job ended, their wait over), each claimed by one sender: its next
    attempt is moved past the POST's timeout in a guarded update that only one can make."""
    now = utcnow()
    lease = now + timedelta(seconds=settings.callback_timeout_seconds * 2 + 30)
    claimed = []
    with db.session() as session:
        due = session.scalars(
            select(Callback.job_id)
            .join(Job, Job.id == Callback.job_id)
            .where(
                Callback.state == DeliveryState.PENDING,
                Callback.next_attempt_at <= now,
                Job.status.in_(FINISHED_STATUSES),
            )
            .order_by(Callback.next_attempt_at)
            .limit(limit)
        ).all()
    for job_id in due:
        with db.session() as session:
            taken = session.execute(
                update(Callback)
                .where(
                    Callback.job_id == job_id,
                    Callback.state == DeliveryState.PENDING,
                    Callback.next_attempt_at <= now,
                )
                .values(next_attempt_at=lease)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                claimed.append(job_id)
    return claimed


def _record(
    session: Session, callback: Callback, status: int | None, error: str | None, took: int
) -> None:
    callback.attempts += 1
    session.add(
        CallbackAttempt(
            job_id=callback.job_id,
            number=callback.attempts,
            http_status=status,
            error=storable(error, 1000) if error else None,
            duration_ms=took,
        )
    )


def callback_of(session: Session, job_id: str) -> tuple[Callback, list[CallbackAttempt]] | None:
    callback = session.get(Callback, job_id)
    if callback is None:
        return None
    attempts = session.scalars(
        select(CallbackAttempt)
        .where(CallbackAttempt.job_id == job_id)
        .order_by(CallbackAttempt.number)
    )
    return callback, list(attempts)
