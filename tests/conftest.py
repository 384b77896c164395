"""Fixtures: settings on temporary folders, real PostgreSQL and Redis, a stack with a worker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
import redis

from core.config import Settings, load_settings
from core.migrate import upgrade
from tests.pacs import ORTHANC, Orthanc
from tests.stack import Stack
from tests.support import free_port, shared_data_dir

POSTGRES_URL = os.environ.get(
    "PNEUMOSCAN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PNEUMOSCAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Set by .ci/run: there, a missing service or data folder is a failure, never a skip.
REQUIRE_ALL = os.environ.get("PNEUMOSCAN_TEST_REQUIRE_ALL") == "1"


def unavailable(reason: str) -> NoReturn:
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (PNEUMOSCAN_TEST_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)


def _postgres_problem() -> str | None:
    try:
        with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}".strip()


def _redis_problem() -> str | None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        return None
    except redis.RedisError as exc:
        return f"Redis unreachable at {REDIS_URL}: {exc}"


def pytest_report_header(config: pytest.Config) -> list[str]:
    data = shared_data_dir()
    return [
        f"real data: {data}" if data else "real data: MISSING, real-data tests will be SKIPPED",
        f"postgresql: {_postgres_problem() or 'available'}",
        f"redis: {_redis_problem() or 'available'}",
    ]


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own PNEUMOSCAN_* variables must not leak into tests."""
    for key in list(os.environ):
        if key.startswith("PNEUMOSCAN_") and not key.startswith("PNEUMOSCAN_TEST_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = shared_data_dir()
    if data is None:
        unavailable("real X-rays not found: set PNEUMOSCAN_TEST_DATA or provide ../shared/data")
    return data


@pytest.fixture(scope="session")
def postgres_server() -> str:
    problem = _postgres_problem()
    if problem:
        unavailable(problem)
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name = f"pneumoscan_test_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    problem = _redis_problem()
    if problem:
        unavailable(problem)
    return REDIS_URL


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults (SQLite, filesystem broker) under a temporary home, migrated."""
    configured = load_settings(home=tmp_path / "var", import_roots=[tmp_path / "import"])
    (tmp_path / "import").mkdir()
    upgrade(configured.database_url)
    return configured


@pytest.fixture(params=["sqlite+filesystem", "postgresql+redis"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for each production shape: embedded defaults, and PostgreSQL with Redis."""
    (tmp_path / "import").mkdir()
    overrides: dict[str, object] = {"home": tmp_path / "var", "import_roots": [tmp_path / "import"]}
    if request.param == "postgresql+redis":
        overrides["database_url"] = request.getfixturevalue("postgres_url")
        overrides["broker_url"] = request.getfixturevalue("redis_url")
        overrides["broker_prefix"] = f"pneumoscan-test-{uuid.uuid4().hex[:8]}:"
    configured = load_settings(**overrides)
    upgrade(configured.database_url)
    return configured


@pytest.fixture
def stack(backend_settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """API (in process) plus a real worker process, on each backend."""
    running = Stack(backend_settings, tmp_path)
    yield running
    running.close()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def baseline_model(model_dir: Path) -> Path:
    """A real, small Keras model (the write-up's CNN) with random weights."""
    from training.model import BASELINE_CNN, save_untrained

    return save_untrained(BASELINE_CNN, model_dir / "baseline.keras")


@pytest.fixture(scope="session")
def inception_model(model_dir: Path) -> Path:
    """A real InceptionResNetV2 (random weights, 54 M parameters), saved once per session."""
    from training.model import INCEPTION_RESNET_V2, save_untrained

    return save_untrained(INCEPTION_RESNET_V2, model_dir / "inception_resnet_v2.keras")


@pytest.fixture(scope="session")
def small_reference(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few dozen real Kermany images per class, in the Kaggle layout."""
    import shutil

    root = tmp_path_factory.mktemp("reference")
    for name in ("NORMAL", "PNEUMONIA"):
        (root / name).mkdir()
        for path in sorted((shared_data / "kermany224" / name).iterdir())[:30]:
            shutil.copy(path, root / name / path.name)
    return root


@pytest.fixture(scope="session")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A real PACS (Debian's Orthanc), shared by the DICOM tests; each adds its own modality."""
    if not Path(ORTHANC).exists():
        unavailable("Orthanc is not installed (apt-get install orthanc; .ci/run does)")
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), free_port(), free_port(), "ORTHANC")
    yield orthanc
    orthanc.stop()
