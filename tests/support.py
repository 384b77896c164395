"""Helpers the tests share: data location, settings as environment, a worker process, polling."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from core.config import Settings

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """PNEUMOSCAN_TEST_DATA, else ../shared/data next to the repository, when it exists."""
    configured = os.environ.get("PNEUMOSCAN_TEST_DATA")
    path = Path(configured) if configured else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def settings_env(settings: Settings) -> dict[str, str]:
    """The PNEUMOSCAN_* environment that reproduces `settings` in another process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PNEUMOSCAN_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = os.pathsep.join(str(item) for item in value)
        if isinstance(value, dict):  # PNEUMOSCAN_DICOM_PEERS: AE=name,...
            value = ",".join(f"{key}={item}" for key, item in value.items())
        env[f"PNEUMOSCAN_{name.upper()}"] = str(value)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


class WorkerProcess:
    """A real `pneumoscan worker` subprocess with its log in a file."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        queues: str = "ingest,scoring",
        concurrency: int = 1,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = ["worker", "--queues", queues, "--concurrency", str(concurrency)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", *command],
            env=settings_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_for(
            lambda: " ready." in self.log() or self.process.poll() is not None, 60, "worker ready"
        )
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited at start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def zip_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for name, data in members:
            bundle.writestr(name, data)
    return buffer.getvalue()


def zip_folder_bytes(folder: Path) -> bytes:
    return zip_bytes(
        (path.relative_to(folder).as_posix(), path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    )


def api_client(app: Any, scope: str = "admin", name: str = "tests") -> Any:
    """A Flask test client sending a fresh API key of `scope` on every request."""
    from core.keys import create_key

    with app.extensions["pneumoscan"].db.session() as session:
        _, secret = create_key(session, name, scope)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    """A real `pneumoscan <command>` process (api, beat, ...) in its own process group."""

    def __init__(self, settings: Settings, log_path: Path, *command: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", *command],
            env=settings_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the whole group: no shutdown code runs anywhere."""
        import os
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def http_ok(url: str) -> bool:
    """True when `url` answers 200 (a server that is not up yet answers False, not an error)."""
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, read from /proc (no process started to ask)."""
    tree, frontier = [pid], [pid]
    while frontier:
        children = []
        for parent in frontier:
            for task in Path(f"/proc/{parent}/task").glob("*"):
                with contextlib.suppress(OSError):
                    children += [int(c) for c in (task / "children").read_text().split()]
        tree += children
        frontier = children
    return tree


def rss_kb(pid: int) -> dict[int, int]:
    """Resident memory, kB, of each process in `pid`'s tree (those still running)."""
    sizes = {}
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes[each] = int(line.split()[1])
    return sizes
