"""The settings of what leaves pneumoscan when a job ends (the DICOM node's reports, the
callbacks) and of the DICOM node itself; `core.config.Settings` inherits them."""

from __future__ import annotations

import re
from typing import Annotated, Any, NamedTuple

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or controls.
AE_TITLE = re.compile(r"^[ -\[\]-~]{1,16}$")


class Destination(NamedTuple):
    """Where reports are sent: `AE@host:port`."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def ae_title(value: str) -> str:
    value = value.strip()
    if not AE_TITLE.match(value):
        raise ValueError(f"{value!r} is not a DICOM AE title (1-16 printable characters)")
    return value


def parse_destination(value: str) -> Destination:
    title, at, address = value.strip().rpartition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{value!r} is not AE@host:port")
    return Destination(ae_title(title), host, int(port))


class DeliverySettings(BaseSettings):
    """PNEUMOSCAN_DICOM_*, PNEUMOSCAN_CALLBACK_*."""

    model_config = SettingsConfigDict(env_prefix="PNEUMOSCAN_", extra="ignore")

    dicom_port: int = Field(
        0, ge=0, le=65535, description="The DICOM node's port; 0: `up` starts no node."
    )
    dicom_host: str = Field("0.0.0.0", description="The address the DICOM node listens on.")
    dicom_ae_title: str = Field("PNEUMOSCAN", description="The DICOM node's own AE title.")
    dicom_peers: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="`AE_TITLE=key-name,...`: who may send studies, and who owns their jobs.",
    )
    dicom_study_idle_seconds: float = Field(
        60.0, gt=0, description="A study closes into a job after this long with no new instance."
    )
    dicom_destination: str = Field(
        "", description="`AE@host:port` that receives each study's report; empty: none is sent."
    )
    dicom_delivery_attempts: int = Field(
        10, ge=1, description="Sends of a report before its delivery counts as failed."
    )
    dicom_retry_seconds: float = Field(
        10.0, gt=0, description="The wait after a report's first failed send; doubles each time."
    )
    callback_attempts: int = Field(
        8, ge=1, description="POSTs of a job's summary before its callback counts as failed."
    )
    callback_retry_seconds: float = Field(
        10.0, gt=0, description="The wait after a callback's first failed POST; doubles each time."
    )
    callback_timeout_seconds: float = Field(
        10.0, gt=0, description="How long one callback POST may take."
    )
    delivery_poll_seconds: float = Field(
        2.0, gt=0, description="How often callbacks and DICOM reports due are looked for."
    )

    @field_validator("dicom_ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return ae_title(value)

    @field_validator("dicom_destination")
    @classmethod
    def _check_destination(cls, value: str) -> str:
        return str(parse_destination(value)) if value.strip() else ""

    @field_validator("dicom_peers", mode="before")
    @classmethod
    def _split_peers(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        peers = {}
        for part in value.split(","):
            if not part.strip():
                continue
            title, equals, name = part.partition("=")
            if not equals or not name.strip():
                raise ValueError(f"peer {part.strip()!r} is not AE_TITLE=key-name")
            peers[ae_title(title)] = name.strip()
        return peers

    @property
    def destination(self) -> Destination | None:
        return parse_destination(self.dicom_destination) if self.dicom_destination else None
