"""API keys: stored only as hashes; a name is the client (owner of its jobs), a scope its rights."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, StrEnumText, UTCDateTime, utcnow
from core.models.jobs import Priority


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    scope: Mapped[str] = mapped_column(String(16))
    # sha256 of the secret: keys are long random strings, so a fast hash is safe to store.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    # The priority of this key's jobs when a submission does not say.
    priority: Mapped[Priority] = mapped_column(
        StrEnumText(Priority), default=Priority.ROUTINE, server_default=Priority.ROUTINE.value
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
