"""What leaves pneumoscan when a job ends: each DICOM study's report, sent to the PACS, and
the job's summary, POSTed to its callback URL (every attempt recorded)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, BigId, StrEnumText, UTCDateTime, utcnow


class DeliveryState(enum.StrEnum):
    """Pending until it is delivered or given up on (failed); a report of a job that did not
    complete is not sent (skipped)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"


class DicomDelivery(Base):
    """One study's report, to be sent by C-STORE once its job has ended."""

    __tablename__ = "dicom_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(200))
    state: Mapped[DeliveryState] = mapped_column(
        StrEnumText(DeliveryState), default=DeliveryState.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The peer's last answer: a C-STORE status, or why no association was made.
    last_status: Mapped[str | None] = mapped_column(Text)
    report_uid: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CallbackSecret(Base):
    """A key name's signing secret (shown once, when it is made) and its default URL."""

    __tablename__ = "callback_secrets"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    secret: Mapped[str] = mapped_column(String(64))
    default_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Callback(Base):
    """A job's summary, POSTed to `url` once the job has ended, signed with its owner's
    secret."""

    __tablename__ = "callbacks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(String(200))
    state: Mapped[DeliveryState] = mapped_column(
        StrEnumText(DeliveryState), default=DeliveryState.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Also the claim: a sender moves it past its timeout before it POSTs.
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CallbackAttempt(Base):
    """One POST of a callback: when, and what the receiver answered (or why nothing came)."""

    __tablename__ = "callback_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("callbacks.job_id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
