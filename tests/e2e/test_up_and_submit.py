"""What a newcomer does: `pneumoscan up`, import a model, `pneumoscan submit --wait --out`."""

import csv
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[dict[str, str], subprocess.Popen[bytes], Path]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PNEUMOSCAN_")}
    env.update(
        PNEUMOSCAN_HOME=str(tmp_path / "var"),
        PNEUMOSCAN_API_PORT=str(free_port()),
        PNEUMOSCAN_SWEEP_SECONDS="2",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "up"], env=env, cwd=tmp_path, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{env['PNEUMOSCAN_API_PORT']}"
        wait_for(lambda: _ready(url) or process.poll() is not None, 90, "pneumoscan up")
        assert process.poll() is None, log_path.read_text()
        yield env, process, log_path
        if process.poll() is None:
            process.kill()
            process.wait()


def processes_with(marker: bytes) -> list[int]:
    """Pids whose environment holds `marker` (Linux /proc)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def pneumoscan(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_up_serves_submit_writes_one_row_per_image_and_ctrl_c_stops_everything(
    service: tuple[dict[str, str], subprocess.Popen[bytes], Path],
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
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200
    assert all(0.0 <= float(row["probability"]) <= 1.0 for row in rows)

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0
    leftovers = subprocess.run(
        ["pgrep", "-f", f"PNEUMOSCAN_HOME={env['PNEUMOSCAN_HOME']}"], capture_output=True
    )
    assert leftovers.stdout == b""
