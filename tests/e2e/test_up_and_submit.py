"""What a newcomer does: `pneumoscan up`, import a model, `pneumoscan submit --wait --out`."""

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Service, free_port, pneumoscan, processes_with
from tests.pacs import Orthanc
from tests.support import wait_for


@pytest.fixture
def extra_env() -> dict[str, str]:
    """`up` also runs the DICOM node when it has a port."""
    return {"PNEUMOSCAN_DICOM_PORT": str(free_port()), "PNEUMOSCAN_DICOM_PEERS": "ORTHANC=pacs"}


def test_up_serves_submit_writes_one_row_per_image_and_ctrl_c_stops_everything(
    service: Service,
    shared_data: Path,
    baseline_model: Path,
    tmp_path: Path,
    pacs: Orthanc,
) -> None:
    env, process, log_path = service
    # The DICOM node `up` started answers the PACS's C-ECHO.
    assert f"DICOM node PNEUMOSCAN on port {env['PNEUMOSCAN_DICOM_PORT']}" in log_path.read_text()
    pacs.add_modality("up-node", "PNEUMOSCAN", int(env["PNEUMOSCAN_DICOM_PORT"]))
    wait_for(lambda: pacs.echo("up-node") == 200, 30, "the node to answer C-ECHO")
    imported = pneumoscan(env, "models", "import", str(baseline_model), "--activate")
    assert imported.returncode == 0, imported.stderr
    out = tmp_path / "r.csv"
    submitted = pneumoscan(
        env,
        "submit",
        str(shared_data / "origres"),
        "--priority",
        "stat",
        "--wait",
        "--out",
        str(out),
    )
    assert submitted.returncode == 0, submitted.stderr + log_path.read_text()[-3000:]
    assert re.search(r"job \w+ queued \(stat\)", submitted.stderr)
    assert "completed: 200 scored, 0 errors" in submitted.stderr
    assert "scoring 200/200" in submitted.stderr  # progress, a line per tenth without a terminal
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200
    assert all(0.0 <= float(row["probability"]) <= 1.0 for row in rows)

    marker = f"PNEUMOSCAN_HOME={env['PNEUMOSCAN_HOME']}".encode()
    # up, api (gunicorn and its workers), the workers (and their pool children), beat, node
    assert len(processes_with(marker)) >= 6
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0
    assert processes_with(marker) == []  # every child is gone


def test_up_does_not_print_the_database_password(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL here trusts local connections, so any password gets in: the one in the URL
    must not reach the terminal (nor a log collecting it)."""
    database = postgres_url.replace("postgres@", "postgres:hunter2-not-shown@")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PNEUMOSCAN_")}
    env.update(
        PNEUMOSCAN_HOME=str(tmp_path / "var"),
        PNEUMOSCAN_DATABASE_URL=database,
        PNEUMOSCAN_API_PORT=str(free_port()),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "up"], env=env, cwd=tmp_path, stdout=log, stderr=log
        )
        try:
            wait_for(lambda: "serving on" in log_path.read_text(), 90, "up to start serving")
        finally:
            process.terminate()
            process.wait(90)
    printed = log_path.read_text()
    assert "hunter2-not-shown" not in printed
    assert "postgresql+psycopg://postgres:***@127.0.0.1:5432/" in printed
