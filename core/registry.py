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

from core.errors import ConflictError, InvalidInputError, NotFoundError
from core.imaging import SQUASH, Preprocessing
from core.models import ModelStatus, ModelVersion, utcnow
from core.storage import Storage, sha256_of

MODEL_FILENAME = "model.keras"


class RegistryError(InvalidInputError):
    """A model artifact was refused; the message says why."""

    code = "invalid_model"


class ModelNotFoundError(NotFoundError):
    pass


class ArtifactDeletedError(ConflictError):
    code = "artifact_deleted"


class ArtifactIntegrityError(RuntimeError):
    """A version's artifact is missing or its bytes no longer match the recorded sha256."""


def verified_artifact(storage: Storage, version: ModelVersion) -> Path:
    """The path of `version`'s model file, after checking it is there and unaltered."""
    path = storage.resolve(version.artifact_path)
    if not path.is_file():
        raise ArtifactIntegrityError(
            f"artifact of model version {version.version} is missing: {path}"
        )
    if sha256_of(path) != version.sha256:
        raise ArtifactIntegrityError(
            f"artifact of model version {version.version} fails its sha256"
        )
    return path


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
    preprocessing: str = SQUASH,
) -> ModelVersion:
    """Copy `source` into the registry as a new candidate version."""
    if not source.is_file():
        raise RegistryError(f"no such file: {source}")
    read_input_size(source)  # refuse a file that is not a usable model before copying it
    staging = storage.staging_dir()
    shutil.copyfile(source, staging / MODEL_FILENAME)
    return register_version(
        session,
        storage,
        staging,
        architecture=architecture,
        threshold=threshold,
        origin="import",
        preprocessing=preprocessing,
    )


def register_version(
    session: Session,
    storage: Storage,
    staging: Path,
    *,
    architecture: str | None,
    threshold: float,
    origin: str,
    metrics: dict[str, Any] | None = None,
    training_run_id: int | None = None,
    preprocessing: str = SQUASH,
) -> ModelVersion:
    """Move a staging folder holding `model.keras` (and reports) into place as a candidate."""
    if not 0.0 <= threshold <= 1.0:
        raise RegistryError("the threshold must lie between 0 and 1")
    try:
        preprocessing = Preprocessing.parse(preprocessing).name
    except ValueError as exc:
        raise RegistryError(str(exc)) from exc
    model_file = staging / MODEL_FILENAME
    input_size = read_input_size(model_file)
    digest = sha256_of(model_file)
    version = _new_version_name(session, digest)
    target = storage.model_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(target)
    row = ModelVersion(
        version=version,
        status=ModelStatus.CANDIDATE,
        architecture=architecture,
        source=origin,
        artifact_path=storage.relative(target / MODEL_FILENAME),
        sha256=digest,
        input_size=input_size,
        threshold=threshold,
        preprocessing=preprocessing,
        metrics=metrics,
        training_run_id=training_run_id,
    )
    session.add(row)
    session.flush()
    return row


def prune_artifacts(session: Session, storage: Storage, keep: int) -> list[str]:
    """Delete the artifacts of all but the `keep` newest inactive versions; rows stay."""
    inactive = session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.status != ModelStatus.ACTIVE, ModelVersion.artifact_deleted_at.is_(None)
        )
        .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    ).all()
    pruned = []
    for row in inactive[keep:]:
        shutil.rmtree(storage.resolve(row.artifact_path).parent, ignore_errors=True)
        row.artifact_deleted_at = utcnow()
        pruned.append(row.version)
    return pruned


def get_version(session: Session, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise ModelNotFoundError(f"no model version {version!r}")
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
        raise ModelNotFoundError(f"no model version {version!r}")
    if row.status == ModelStatus.ACTIVE:
        return row
    if row.artifact_deleted_at is not None:
        raise ArtifactDeletedError(f"the artifact of version {version} was pruned; it cannot serve")
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
