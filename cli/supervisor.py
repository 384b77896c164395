"""`pneumoscan up`: run api, workers and beat as child processes; restart one that dies;
stop them all together."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

STOP_TIMEOUT_SECONDS = 60.0
# A command that exits more than this many times within the window is broken, not unlucky.
RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 300.0
RESTART_DELAY_SECONDS = 2.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_when_parent_dies() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by `kill -9`, so no
    api or worker outlives `up` (Linux; elsewhere only a clean stop stops the children)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment


class Supervisor:
    """Starts named commands and watches them: one that dies is started again (a worker that
    crashed mid-batch comes back, and the sweep re-sends what it held); one that keeps dying
    stops them all, as does a signal."""

    def __init__(
        self,
        commands: dict[str, Command],
        restart_limit: int = RESTART_LIMIT,
        restart_delay: float = RESTART_DELAY_SECONDS,
    ) -> None:
        self.commands = commands
        self.restart_limit = restart_limit
        self.restart_delay = restart_delay
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._exits: dict[str, list[float]] = {name: [] for name in commands}
        self._stopping = False

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for name in self.commands:
                self._start(name)
            return self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, name: str) -> None:
        command = self.commands[name]
        # Own session: the terminal's Ctrl-C reaches only us, and we stop children in order.
        self.processes[name] = subprocess.Popen(
            command.argv,
            env={**os.environ, **command.env},
            start_new_session=True,
            preexec_fn=_stop_when_parent_dies,
        )

    def _watch(self) -> int:
        while not self._stopping:
            for name, process in list(self.processes.items()):
                if process.poll() is None or self._stopping:
                    continue
                now = time.monotonic()
                exits = [t for t in self._exits[name] if now - t < RESTART_WINDOW_SECONDS]
                exits.append(now)
                self._exits[name] = exits
                if len(exits) > self.restart_limit:
                    print(
                        f"pneumoscan: {name} exited with {process.returncode}, "
                        f"{len(exits)} times in {RESTART_WINDOW_SECONDS:.0f} s; stopping",
                        file=sys.stderr,
                    )
                    return 1
                print(
                    f"pneumoscan: {name} exited with {process.returncode}; restarting",
                    file=sys.stderr,
                )
                time.sleep(self.restart_delay)
                if not self._stopping:
                    self._start(name)
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
