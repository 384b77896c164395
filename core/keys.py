"""Creating, finding and revoking API keys. Only sha256 hashes of keys are stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import InvalidInputError, NotFoundError
from core.models import ApiKey, Priority, utcnow

# What each scope may do. read: see its own (its key name's) jobs; submit: send jobs too;
# review: see every job's results and confirm labels, which train the shared model (a
# radiologist's key: submitting does not let a client teach the model); admin: everything.
ROLES: dict[str, tuple[str, ...]] = {
    "read": ("read",),
    "submit": ("read", "submit"),
    "review": ("read", "review"),
    "admin": ("read", "submit", "review", "admin"),
}
SCOPES = tuple(ROLES)
KEY_PREFIX = "psk_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name (owner of its jobs), its scope, and the priority its
    jobs get when a submission does not say."""

    name: str
    scope: str
    priority: Priority = Priority.ROUTINE

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    @property
    def roles(self) -> list[str]:
        return list(ROLES[self.scope])

    @property
    def owner_filter(self) -> str | None:
        """The owner whose jobs this caller may see; None means every job (admins, and
        reviewers, who read every job's results)."""
        return None if self.scope in ("admin", "review") else self.name


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session, name: str, scope: str, priority: Priority = Priority.ROUTINE
) -> tuple[ApiKey, str]:
    """A new key; the secret is returned once and never stored."""
    if scope not in SCOPES:
        raise InvalidInputError(f"scope must be one of {', '.join(SCOPES)}")
    if not name.strip() or len(name) > 200:
        raise InvalidInputError("a key needs a name of 1 to 200 characters")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name.strip(),
        scope=scope,
        key_hash=hash_key(secret),
        prefix=secret[:12],
        priority=priority,
    )
    session.add(row)
    session.flush()
    return row, secret


def active_key(session: Session, secret: str) -> ApiKey | None:
    """The unrevoked key whose secret this is."""
    return session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
    )


def authenticate(session: Session, secret: str) -> Principal | None:
    row = active_key(session, secret)
    return Principal(row.name, row.scope, row.priority) if row else None


def revoke_key(session: Session, prefix: str) -> ApiKey:
    """Revoke the one active key whose shown prefix starts with `prefix`, exactly: `%` and
    `_` are characters, not wildcards, and case counts (SQLite's LIKE would ignore it)."""
    candidates = session.scalars(
        select(ApiKey).where(
            ApiKey.prefix.startswith(prefix, autoescape=True), ApiKey.revoked_at.is_(None)
        )
    )
    rows = [row for row in candidates if row.prefix.startswith(prefix)] if prefix else []
    if len(rows) != 1:
        raise NotFoundError(f"{len(rows)} active keys start with {prefix!r}; give a longer prefix")
    rows[0].revoked_at = utcnow()
    return rows[0]


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def any_keys(session: Session) -> bool:
    return bool(session.scalar(select(func.count()).select_from(ApiKey)))
