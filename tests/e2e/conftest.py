"""`pneumoscan up` as a real process tree on a temporary home and a free port."""

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, http_ok, wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Service = tuple[dict[str, str], subprocess.Popen[bytes], Path]


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {}


@pytest.fixture
def service(tmp_path: Path, extra_env: dict[str, str]) -> Iterator[Service]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PNEUMOSCAN_")}
    env.update(
        PNEUMOSCAN_HOME=str(tmp_path / "var"),
        PNEUMOSCAN_API_PORT=str(free_port()),
        PNEUMOSCAN_SWEEP_SECONDS="2",
        TF_CPP_MIN_LOG_LEVEL="2",
        **extra_env,
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "up"], env=env, cwd=tmp_path, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{env['PNEUMOSCAN_API_PORT']}"
        wait_for(
            lambda: http_ok(f"{url}/readyz") or process.poll() is not None, 90, "pneumoscan up"
        )
        assert process.poll() is None, log_path.read_text()
        # The admin key `up` printed once on its first start; the client reads it from here.
        printed = re.search(r"export PNEUMOSCAN_API_KEY=(\S+)", log_path.read_text())
        assert printed is not None, log_path.read_text()
        env["PNEUMOSCAN_API_KEY"] = printed.group(1)
        yield env, process, log_path
        if process.poll() is None:
            process.terminate()  # as Ctrl-C: up stops its children in order
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()  # its children get SIGTERM from the kernel (PR_SET_PDEATHSIG)
                process.wait()
        marker = f"PNEUMOSCAN_HOME={env['PNEUMOSCAN_HOME']}".encode()
        wait_for(lambda: processes_with(marker) == [], 60, "every process of this up to stop")


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


def pneumoscan(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
