"""What a newcomer does: `pneumoscan up`, import a model, `pneumoscan submit --wait --out`."""

import csv
import signal
from pathlib import Path

from tests.e2e.conftest import Service, pneumoscan, processes_with


def test_up_serves_submit_writes_one_row_per_image_and_ctrl_c_stops_everything(
    service: Service,
    shared_data: Path,
    baseline_model: Path,
    tmp_path: Path,
) -> None:
    env, process, log_path = service
    imported = pneumoscan(env, "models", "import", str(baseline_model), "--activate")
    assert imported.returncode == 0, imported.stderr
    out = tmp_path / "r.csv"
    submitted = pneumoscan(env, "submit", str(shared_data / "origres"), "--wait", "--out", str(out))
    assert submitted.returncode == 0, submitted.stderr + log_path.read_text()[-3000:]
    assert "completed: 200 scored, 0 errors" in submitted.stderr
    assert "scoring 200/200" in submitted.stderr  # progress, a line per tenth without a terminal
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200
    assert all(0.0 <= float(row["probability"]) <= 1.0 for row in rows)

    marker = f"PNEUMOSCAN_HOME={env['PNEUMOSCAN_HOME']}".encode()
    # up, api (gunicorn and its workers), both workers (and their pool children), beat
    assert len(processes_with(marker)) >= 5
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0
    assert processes_with(marker) == []  # every child is gone
