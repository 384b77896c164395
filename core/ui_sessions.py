"""Reading-room sessions: an API key pasted once becomes a server-side session.

The browser keeps only a random token in an HttpOnly cookie; the database keeps its sha256
and the key it stands for, so signing out, the session's expiry or revoking the key ends it
at once, and nothing the browser holds is worth stealing after that.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.keys import Principal, active_key, hash_key
from core.models import ApiKey, UiSession, utcnow


def open_session(session: Session, api_key: str, lifetime: timedelta) -> str | None:
    """A new session token for a valid, unrevoked key (None for anything else); expired
    sessions of every key are removed on the way."""
    key = active_key(session, api_key)
    if key is None:
        return None
    now = utcnow()
    session.execute(delete(UiSession).where(UiSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(UiSession(token_hash=hash_key(token), api_key_id=key.id, expires_at=now + lifetime))
    return token


def principal_of(session: Session, token: str) -> Principal | None:
    """Who a session token signs in as, while the session lives and its key is not revoked."""
    row = session.execute(
        select(ApiKey.name, ApiKey.scope, ApiKey.priority)
        .join(UiSession, UiSession.api_key_id == ApiKey.id)
        .where(
            UiSession.token_hash == hash_key(token),
            UiSession.expires_at > utcnow(),
            ApiKey.revoked_at.is_(None),
        )
    ).first()
    return Principal(row.name, row.scope, row.priority) if row else None


def close_session(session: Session, token: str) -> None:
    session.execute(delete(UiSession).where(UiSession.token_hash == hash_key(token)))
