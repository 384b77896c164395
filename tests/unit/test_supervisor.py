"""`pneumoscan up`'s supervisor, with real child processes: a child that dies is started
again, one that keeps dying stops everything, a signal stops everything cleanly, and no child
outlives a supervisor killed outright."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support import REPO, wait_for

# Appends a line per start; exits 3 on its first `crashes` starts, then runs until stopped.
FLAKY = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    starts, crashes = Path(sys.argv[1]), int(sys.argv[2])
    with starts.open("a") as f:
        f.write(f"{os.getpid()}\\n")
    if len(starts.read_text().splitlines()) <= crashes:
        sys.exit(3)
    while True:
        time.sleep(0.1)
    """
)


def supervise(tmp_path: Path, crashes: int, limit: int) -> tuple[subprocess.Popen[str], Path]:
    starts = tmp_path / "starts"
    child = [sys.executable, "-c", FLAKY, str(starts), str(crashes)]
    program = (
        "import sys\n"
        "from cli.supervisor import Command, Supervisor\n"
        f"sys.exit(Supervisor({{'flaky': Command({child!r}), 'steady': Command({child[:3]!r} + "
        f"[{str(tmp_path / 'steady')!r}, '0'])}}, restart_limit={limit}, "
        "restart_delay=0.1).run())\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    return process, starts


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_child_that_dies_is_started_again_and_a_signal_stops_all(tmp_path: Path) -> None:
    process, starts = supervise(tmp_path, crashes=2, limit=5)
    try:
        wait_for(lambda: lines(starts) == 3, 30, "the third start")
        time.sleep(1.0)  # it now runs: no fourth start, the supervisor still up
        assert lines(starts) == 3
        assert lines(tmp_path / "steady") == 1
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert process.stderr is not None
        assert process.stderr.read().count("flaky exited with 3; restarting") == 2
    finally:
        process.kill()


def test_a_child_that_keeps_dying_stops_everything(tmp_path: Path) -> None:
    process, starts = supervise(tmp_path, crashes=100, limit=2)
    try:
        assert process.wait(30) == 1
        assert lines(starts) == 3  # started, restarted twice, then given up
        assert process.stderr is not None
        assert "flaky exited with 3, 3 times in 300 s; stopping" in process.stderr.read()
    finally:
        process.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) has stopped too.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_no_child_outlives_a_supervisor_killed_outright(tmp_path: Path) -> None:
    process, starts = supervise(tmp_path, crashes=0, limit=5)
    try:
        wait_for(lambda: lines(starts) == 1 and lines(tmp_path / "steady") == 1, 30, "children")
        children = [int(path.read_text().split()[0]) for path in (starts, tmp_path / "steady")]
        assert all(alive(pid) for pid in children)
        process.kill()  # no handler runs: only the kernel can tell the children
        process.wait()
        wait_for(lambda: not any(alive(pid) for pid in children), 10, "the children to stop")
    finally:
        process.kill()
