"""Model versions: import, activation, one active version guaranteed by the database."""

from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from core import registry
from core.config import Settings
from core.db import Database
from core.models import ModelStatus, ModelVersion
from core.storage import Storage, sha256_of


def test_import_copies_the_artifact_and_records_its_shape_and_hash(
    settings: Settings, baseline_model: Path
) -> None:
    storage = Storage(settings.storage_dir)
    with Database(settings.database_url).session() as session:
        row = registry.import_model(session, storage, baseline_model, architecture="baseline_cnn")
    stored = storage.resolve(row.artifact_path)
    assert stored.is_file()
    assert settings.storage_dir in stored.parents
    assert row.sha256 == sha256_of(baseline_model) == sha256_of(stored)
    assert row.input_size == 75
    assert row.status == ModelStatus.CANDIDATE


def test_activating_a_version_retires_the_previous_one(
    settings: Settings, baseline_model: Path
) -> None:
    storage = Storage(settings.storage_dir)
    db = Database(settings.database_url)
    with db.session() as session:
        first = registry.import_model(session, storage, baseline_model).version
        registry.activate(session, first)
    with db.session() as session:
        second = registry.import_model(session, storage, baseline_model).version
        registry.activate(session, second)
    with db.session() as session:
        statuses = {row.version: row.status for row in registry.list_versions(session)}
        assert registry.active_version(session).version == second  # type: ignore[union-attr]
    assert statuses == {first: ModelStatus.RETIRED, second: ModelStatus.ACTIVE}


def test_the_database_refuses_a_second_active_version(
    settings: Settings, baseline_model: Path
) -> None:
    storage = Storage(settings.storage_dir)
    db = Database(settings.database_url)
    with db.session() as session:
        registry.activate(session, registry.import_model(session, storage, baseline_model).version)
        other = registry.import_model(session, storage, baseline_model)
        other_id = other.id
    with pytest.raises(IntegrityError), db.session() as session:
        session.get(ModelVersion, other_id).status = ModelStatus.ACTIVE  # type: ignore[union-attr]


def test_a_file_that_is_not_a_keras_model_is_refused(settings: Settings, tmp_path: Path) -> None:
    bogus = tmp_path / "model.keras"
    bogus.write_bytes(b"not a zip")
    with (
        pytest.raises(registry.RegistryError, match="not a Keras 3"),
        Database(settings.database_url).session() as session,
    ):
        registry.import_model(session, Storage(settings.storage_dir), bogus)
