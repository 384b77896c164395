"""The embedded broker never hands a consumer a message that is still being written."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import Connection
from kombu.transport import filesystem

REPO = Path(__file__).resolve().parents[2]
PUTTER = """
import sys
from kombu import Connection
transport, folder = sys.argv[1], sys.argv[2]
options = {"data_folder_in": folder, "data_folder_out": folder, "store_processed": False}
with Connection("filesystem://", transport=transport, transport_options=options) as conn:
    channel = conn.channel()
    for _ in range(40):
        channel._put("q", {"body": "x" * 4_000_000})
"""


def half_read_messages(transport: str, folder: Path) -> int:
    """40 messages of 4 MB put by another process while this one takes them as fast as it
    can: how many it could not decode (kombu raises on an empty or partial file)."""
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    putter = subprocess.Popen([sys.executable, "-c", PUTTER, transport, str(folder)], cwd=REPO)
    failures = taken = 0
    with Connection("filesystem://", transport_options=options) as conn:
        taker = conn.channel()
        deadline = time.monotonic() + 120
        while failures + taken < 40 and time.monotonic() < deadline:
            try:
                taker._get("q")
                taken += 1
            except filesystem.Empty:
                continue
            except ValueError:  # json.JSONDecodeError: an empty or partial file
                failures += 1
    assert putter.wait(60) == 0
    assert failures + taken == 40
    return failures


def test_messages_appear_whole(tmp_path: Path) -> None:
    assert half_read_messages("core.broker.filesystem:Transport", tmp_path) == 0


# What the test sees without the fix (40 of 40 here); not strict: kombu may fix it one day.
@pytest.mark.xfail(reason="a race in kombu's filesystem transport", strict=False)
def test_kombu_s_own_transport_hands_out_half_written_messages(tmp_path: Path) -> None:
    assert half_read_messages("filesystem", tmp_path) > 0
