from pathlib import Path

import pytest
from pydantic import ValidationError

from cli.service import API_MALLOC_SETTINGS, api_environment
from core.config import Settings, load_settings


def test_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "var")
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'pneumoscan.db'}"
    assert settings.broker_url == "filesystem://"
    assert settings.storage_dir == tmp_path / "var" / "storage"
    assert settings.uses_embedded_broker
    assert settings.batch_size == 64


def test_environment_switches_to_postgresql_and_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMOSCAN_DATABASE_URL", "postgresql+psycopg://db/pneumoscan")
    monkeypatch.setenv("PNEUMOSCAN_BROKER_URL", "redis://cache:6379/0")
    monkeypatch.setenv("PNEUMOSCAN_IMPORT_ROOTS", "/mnt/import:/srv/studies")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://db/pneumoscan"
    assert not settings.uses_embedded_broker
    assert settings.import_roots == [Path("/mnt/import"), Path("/srv/studies")]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("broker_url", "kafka://x"),
        ("database_url", "not a url"),
        ("batch_size", 0),
        ("train_preprocessing", "clahe"),
        ("train_optimizer", "adam"),
        ("train_tta_views", 7),
        ("train_augment", "strong"),
    ],
)
def test_invalid_settings_are_refused_at_start(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_a_gpu_device_raises_the_scoring_defaults_and_explicit_values_win() -> None:
    cpu = load_settings()
    gpu = load_settings(device="gpu")
    assert (cpu.batch_size, cpu.decode_threads, cpu.worker_pool) == (64, 4, "threads")
    assert (gpu.batch_size, gpu.decode_threads, gpu.worker_pool, gpu.worker_concurrency) == (
        256,
        8,
        "solo",
        1,
    )
    assert (gpu.tf_intra_op_threads, gpu.tf_inter_op_threads) == (0, 0)
    assert load_settings(device="gpu", batch_size=128).batch_size == 128


def test_the_gpu_defaults_apply_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMOSCAN_DEVICE", "gpu")
    monkeypatch.setenv("PNEUMOSCAN_DECODE_THREADS", "6")
    settings = load_settings()
    assert (settings.batch_size, settings.decode_threads) == (256, 6)


def test_the_api_runs_with_its_malloc_settings_unless_the_environment_sets_them() -> None:
    assert api_environment({"PATH": "/bin"}) == {**API_MALLOC_SETTINGS, "PATH": "/bin"}
    chosen = api_environment({"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert chosen["MALLOC_MMAP_THRESHOLD_"] == "131072"
    assert chosen["MALLOC_TRIM_THRESHOLD_"] == API_MALLOC_SETTINGS["MALLOC_TRIM_THRESHOLD_"]


def test_an_import_root_may_be_open_to_named_keys_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMOSCAN_IMPORT_ROOTS", "/mnt/a=radiology-a+radiology-b,/mnt/b")
    settings = load_settings()
    assert settings.import_roots == [Path("/mnt/a"), Path("/mnt/b")]
    assert settings.import_root_owners == {Path("/mnt/a"): {"radiology-a", "radiology-b"}}


def test_who_may_use_an_import_root_is_not_read_from_a_variable_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PNEUMOSCAN_IMPORT_ROOTS", "/mnt/a=radiology-a")
    monkeypatch.setenv("PNEUMOSCAN_IMPORT_ROOT_OWNERS", '{"/mnt/a": ["intruder"]}')
    assert load_settings().import_root_owners == {Path("/mnt/a"): {"radiology-a"}}


@pytest.mark.parametrize("where", ["storage", "storage/import", "."])
def test_an_import_root_sharing_the_storage_folder_is_refused_at_start(
    tmp_path: Path, where: str
) -> None:
    with pytest.raises(ValueError, match="is, contains or lies inside the storage folder"):
        load_settings(home=tmp_path, import_roots=[tmp_path / where])


def test_the_database_url_is_shown_without_its_password() -> None:
    settings = load_settings(database_url="postgresql+psycopg://scan:s3cret@db.example/pneumo")
    assert settings.database_shown == "postgresql+psycopg://scan:***@db.example/pneumo"


def test_dicom_peers_and_destination_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PNEUMOSCAN_DICOM_PEERS", "PACS=radiology, ORTHANC = ward-3")
    monkeypatch.setenv("PNEUMOSCAN_DICOM_DESTINATION", "PACS@pacs.example:104")
    settings = Settings()
    assert settings.dicom_peers == {"PACS": "radiology", "ORTHANC": "ward-3"}
    assert settings.destination is not None
    assert settings.destination.ae_title == "PACS"
    assert settings.destination.host == "pacs.example"
    assert settings.destination.port == 104
    assert Settings().model_copy(update={"dicom_destination": ""}).destination is None


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("PNEUMOSCAN_DICOM_PEERS", "PACS", "is not AE_TITLE=key-name"),
        ("PNEUMOSCAN_DICOM_PEERS", "A_TITLE_LONGER_THAN_16=x", "not a DICOM AE title"),
        ("PNEUMOSCAN_DICOM_DESTINATION", "pacs.example:104", "is not AE@host:port"),
        ("PNEUMOSCAN_DICOM_DESTINATION", "PACS@pacs.example:http", "is not AE@host:port"),
        ("PNEUMOSCAN_DICOM_AE_TITLE", "BACK\\SLASH", "not a DICOM AE title"),
    ],
)
def test_a_bad_dicom_setting_is_refused_with_its_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=said):
        Settings()
