"""What the benches share: pneumoscan as real processes on a temporary home, the real X-rays,
and a JSON copy of the figures in bench/results/.

Imported as `common` by the scripts next to it; it puts the repository on `sys.path`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def origres_images() -> list[Path]:
    """The 200 original-resolution X-rays (PNEUMOSCAN_TEST_DATA, else ../shared/data)."""
    data = Path(os.environ.get("PNEUMOSCAN_TEST_DATA", REPO.parent / "shared" / "data"))
    paths = sorted((data / "origres").rglob("*.jpeg"))
    if not paths:
        raise SystemExit(f"no X-rays under {data / 'origres'}")
    return paths


def service_env(
    name: str,
    port: int,
    database_url: str = "",
    broker_url: str = "",
    keep: tuple[str, ...] = (),
    **settings: str,
) -> tuple[Path, dict[str, str]]:
    """A temporary home and the environment of a service living there: this environment
    without its PNEUMOSCAN_* variables (but those named in `keep`), plus `settings`."""
    home = Path(tempfile.mkdtemp(prefix=f"pneumoscan-{name}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMOSCAN_") or k in keep}
    env.update(
        PNEUMOSCAN_HOME=str(home),
        PNEUMOSCAN_API_PORT=str(port),
        PNEUMOSCAN_BROKER_PREFIX=f"{name}-{uuid.uuid4().hex[:8]}:",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update({f"PNEUMOSCAN_{key.upper()}": value for key, value in settings.items()})
    if database_url:
        env["PNEUMOSCAN_DATABASE_URL"] = database_url
    if broker_url:
        env["PNEUMOSCAN_BROKER_URL"] = broker_url
    return home, env


def run_cli(command: list[str], env: dict[str, str]) -> str:
    """`pneumoscan COMMAND...` to its end; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "cli", *command],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"pneumoscan {' '.join(command)} failed:\n{done.stderr}")
    return done.stdout.strip()


def start_cli(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`pneumoscan COMMAND...` in the background, its output in `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *command],
        env=env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until_ready(base_url: str, path: str = "/readyz", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{base_url}{path} did not answer within {timeout:.0f} s")


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(60)


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def write_results(kind: str, figures: dict[str, Any]) -> None:
    out = REPO / "bench" / "results" / f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out.relative_to(REPO)}")
