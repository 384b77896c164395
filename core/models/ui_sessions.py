"""Signed-in browser sessions of the reading room: the cookie holds a random token, the
database its hash and the API key it stands for; the key itself never reaches the browser."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, BigId, UTCDateTime, utcnow


class UiSession(Base):
    __tablename__ = "ui_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # sha256 of the session token the browser's cookie carries.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    api_key_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
