"""First run: no model, reference data configured; `up` trains one and waiting jobs start."""

from pathlib import Path

import pytest

from tests.e2e.conftest import Service, pneumoscan


@pytest.fixture
def extra_env(small_reference: Path) -> dict[str, str]:
    return {
        "PNEUMOSCAN_DATA_DIR": str(small_reference),
        "PNEUMOSCAN_TRAIN_ARCHITECTURE": "baseline_cnn",
        "PNEUMOSCAN_TRAIN_EPOCHS": "2",
        "PNEUMOSCAN_TRAIN_BATCH_SIZE": "16",
    }


def test_up_trains_the_first_model_and_the_queued_job_starts_when_it_is_activated(
    service: Service, small_reference: Path, tmp_path: Path
) -> None:
    env, _process, log_path = service
    assert "training run 1 started" in log_path.read_text()
    out = tmp_path / "r.csv"
    submitted = pneumoscan(
        env, "submit", str(small_reference / "NORMAL"), "--wait", "--out", str(out)
    )
    assert submitted.returncode == 0, submitted.stderr + log_path.read_text()[-3000:]
    assert "completed: 30 scored" in submitted.stderr
    listed = pneumoscan(env, "models", "list")
    assert " active " in listed.stdout
    assert "baseline_cnn" in listed.stdout
