"""`pneumoscan up`: run api, worker and beat as child processes; stop them all together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

STOP_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment


class Supervisor:
    """Starts named commands, watches them, and stops every one when any stops or on a signal."""

    def __init__(self, commands: dict[str, Command]) -> None:
        self.commands = commands
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for name, command in self.commands.items():
                # Own session: the terminal's Ctrl-C reaches only us, and we stop children in order.
                self.processes[name] = subprocess.Popen(
                    command.argv, env={**os.environ, **command.env}, start_new_session=True
                )
            return self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch(self) -> int:
        while not self._stopping:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    print(
                        f"pneumoscan: {name} exited with {process.returncode}; stopping",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.5)
        return 0

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
