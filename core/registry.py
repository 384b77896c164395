"""Model versions: importing artifacts, activating one, finding the active one.

Reading a `.keras` file's input shape needs no TensorFlow: the archive carries its config.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.models import ModelStatus, ModelVersion, utcnow
from core.storage import Storage, sha256_of

MODEL_FILENAME = "model.keras"


class RegistryError(ValueError):
    """A model artifact or version request was refused; the message says why."""


def read_input_size(artifact: Path) -> int:
    """The square input size of a saved `.keras` model taking (size, size, 3) images."""
    try:
        with zipfile.ZipFile(artifact) as bundle:
            config = json.loads(bundle.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as exc:
        raise RegistryError(f"{artifact} is not a Keras 3 .keras file: {exc}") from exc
    shape = _find_input_shape(config)
    if shape is None or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
        raise RegistryError(f"the model must take (size, size, 3) images, it takes {shape}")
    return int(shape[1])


def _find_input_shape(config: Any) -> list[Any] | None:
    if isinstance(config, dict):
        if config.get("class_name") == "InputLayer":
            inner = config.get("config", {})
            return inner.get("batch_shape") or inner.get("batch_input_shape")
        for value in config.values():
            found = _find_input_shape(value)
            if found is not None:
                return found
    elif isinstance(config, list):
        for value in config:
            found = _find_input_shape(value)
            if found is not None:
                return found
    return None


def import_model(
    session: Session,
    storage: Storage,
    source: Path,
    *,
    architecture: str | None = None,
    threshold: float = 0.5,
    metrics: dict[str, Any] | None = None,
    origin: str = "import",
) -> ModelVersion:
    """Copy `source` into the registry as a new candidate version."""
    if not source.is_file():
        raise RegistryError(f"no such file: {source}")
    if not 0.0 < threshold < 1.0:
        raise RegistryError("the threshold must lie strictly between 0 and 1")
    input_size = read_input_size(source)
    digest = sha256_of(source)
    version = _new_version_name(session, digest)
    target = storage.model_dir(version) / MODEL_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    partial.replace(target)
    row = ModelVersion(
        version=version,
        status=ModelStatus.CANDIDATE,
        architecture=architecture,
        source=origin,
        artifact_path=storage.relative(target),
        sha256=digest,
        input_size=input_size,
        threshold=threshold,
        metrics=metrics,
    )
    session.add(row)
    session.flush()
    return row


def _new_version_name(session: Session, digest: str) -> str:
    """`<UTC timestamp>-<sha256 prefix>`, with a counter when the same file comes twice a second."""
    base = f"{utcnow():%Y%m%d-%H%M%S}-{digest[:8]}"
    taken = set(
        session.scalars(select(ModelVersion.version).where(ModelVersion.version.startswith(base)))
    )
    version, n = base, 1
    while version in taken:
        n += 1
        version = f"{base}-{n}"
    return version


def activate(session: Session, version: str) -> ModelVersion:
    """Make `version` the one active version, retiring the previous one, in this transaction."""
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.version == version).with_for_update()
    )
    if row is None:
        raise RegistryError(f"no model version {version!r}")
    if row.status == ModelStatus.ACTIVE:
        return row
    # Retire first: the partial unique index allows only one active row at any moment.
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.status == ModelStatus.ACTIVE)
        .values(status=ModelStatus.RETIRED)
    )
    row.status = ModelStatus.ACTIVE
    row.activated_at = utcnow()
    session.flush()
    return row


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE))


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))
