"""The gate and the evaluation look at the shift: a model that is better on clean images but
falls apart under the stressed changes is not promoted, and every version is measured on the
input it was trained on (its own preprocessing)."""

from pathlib import Path

import pytest

from core import registry
from core.config import Settings
from core.db import Database
from core.storage import Storage
from tests.synthetic import brightness_model, synthetic_reference, texture_model
from training.data import read_labelled_folder
from training.evaluate import measure_version
from training.gate import GateRules, promote_if_allowed


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_reference(tmp_path_factory.mktemp("synthetic") / "reference")


def measure(storage: Storage, row: registry.ModelVersion, samples: list) -> tuple[dict, dict]:
    clean, stressed = measure_version(storage, row, samples, 2, 10**8, 0.95)
    assert stressed is not None
    return clean, stressed


def test_a_candidate_better_on_clean_images_but_worse_under_stress_is_not_promoted(
    settings: Settings, synthetic: Path, tmp_path: Path
) -> None:
    db, storage = Database(settings.database_url), Storage(settings.storage_dir)
    samples = read_labelled_folder(synthetic)
    with db.session() as session:
        robust = registry.import_model(session, storage, brightness_model(tmp_path / "b.keras"))
        fragile = registry.import_model(session, storage, texture_model(tmp_path / "t.keras"))
        registry.activate(session, robust.version)
    robust_clean, robust_stressed = measure(storage, robust, samples)
    fragile_clean, fragile_stressed = measure(storage, fragile, samples)
    # The premise: texture ranks the clean images better, and blur, compression and
    # resizing take it away; brightness holds.
    assert fragile_clean["auroc"] > robust_clean["auroc"] + 0.05
    assert fragile_stressed["mean_auroc"] < robust_stressed["mean_auroc"] - 0.04
    assert fragile_stressed["changes"]["blur"]["auroc"] < 0.6

    rules = GateRules(
        min_sensitivity=0.0, auroc_margin=0.01, specificity_margin=1.0, policy="if-better"
    )
    decision = promote_if_allowed(
        db,
        storage,
        fragile.version,
        fragile_clean,
        fragile_stressed,
        samples,
        rules,
        threads=2,
        max_pixels=10**8,
        keep_inactive=5,
    )
    assert not decision.activate
    assert "stressed holdout mean AUROC" in decision.reason
    # The active model was measured on the same images under the same changes.
    assert decision.active_stressed is not None
    assert decision.active_stressed["mean_auroc"] == pytest.approx(robust_stressed["mean_auroc"])
    with db.session() as session:
        assert registry.active_version(session).version == robust.version

    # Judged on clean images alone, as the gate used to, it would have been promoted.
    clean_only = promote_if_allowed(
        db,
        storage,
        fragile.version,
        fragile_clean,
        None,
        samples,
        rules,
        threads=2,
        max_pixels=10**8,
        keep_inactive=5,
    )
    assert clean_only.activate


def test_a_version_is_measured_on_the_input_its_own_preprocessing_makes(
    settings: Settings, synthetic: Path, tmp_path: Path
) -> None:
    db, storage = Database(settings.database_url), Storage(settings.storage_dir)
    samples = read_labelled_folder(synthetic)
    model = brightness_model(tmp_path / "b.keras")
    with db.session() as session:
        squash = registry.import_model(session, storage, model)
        equalize = registry.import_model(session, storage, model, preprocessing="equalize")
    assert (squash.preprocessing, equalize.preprocessing) == ("squash", "equalize")
    # Equalisation takes the brightness a brightness model scores away: same weights,
    # another input, another AUROC.
    assert measure(storage, squash, samples)[0]["auroc"] > 0.8
    assert measure(storage, equalize, samples)[0]["auroc"] < 0.6


def test_an_unknown_preprocessing_is_refused_at_import(settings: Settings, tmp_path: Path) -> None:
    db, storage = Database(settings.database_url), Storage(settings.storage_dir)
    with pytest.raises(registry.RegistryError, match="unknown preprocessing"), db.session() as s:
        registry.import_model(
            s, storage, brightness_model(tmp_path / "b.keras"), preprocessing="clahe"
        )
