"""The default threads pool under `pneumoscan up`: an image that kills the whole worker each
time it is scored costs that image only. `up` restarts the worker, beat's sweep puts the
images of the passes that died back in the queue, they run alone, and past the limit one at a
time until the poison is found and gets an error row."""

import contextlib
import io
import os
import re
import signal
import zipfile
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from core.models import Image
from tests import hostile
from tests.e2e.conftest import Service, pneumoscan
from tests.images import jpeg_bytes
from tests.support import wait_for

SCORING_LINE = re.compile(r"scoring \d+ images, ids (\d+)\.\.(\d+) \(attempt \d+, process (\d+)\)")


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {
        "PNEUMOSCAN_BATCH_SIZE": "2",
        "PNEUMOSCAN_MAX_BATCH_ATTEMPTS": "2",
        # The poison is a slow 121 M-pixel PNG, over the default limit of 50 M.
        "PNEUMOSCAN_MAX_IMAGE_PIXELS": "150000000",
        # Longer than a worker takes to come back and load the model, so each pass that died
        # is released once, and no second copy starts beside the first.
        "PNEUMOSCAN_STALL_SECONDS": "15",
    }


def test_a_poison_image_under_up_with_the_threads_pool_costs_only_itself(
    service: Service, baseline_model: Path
) -> None:
    env, process, log_path = service
    assert pneumoscan(env, "models", "import", str(baseline_model), "--activate").returncode == 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:  # passes: [0, poison], [2, 3], [4]
        bundle.writestr("0.jpeg", jpeg_bytes())
        bundle.writestr("1-poison.png", hostile.slow_png(side=11_000))  # decodes for ~0.5 s
        for index in range(2, 5):
            bundle.writestr(f"{index}.jpeg", jpeg_bytes())
    base = f"http://127.0.0.1:{env['PNEUMOSCAN_API_PORT']}"
    headers = {"Authorization": f"Bearer {env['PNEUMOSCAN_API_KEY']}"}
    response = httpx.post(
        f"{base}/v1/jobs",
        content=buffer.getvalue(),
        headers={**headers, "Content-Type": "application/zip"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    engine = create_engine(f"sqlite:///{env['PNEUMOSCAN_HOME']}/pneumoscan.db")
    poison = wait_for(lambda: _image_id(engine, job_id, "1-poison.png"), 60, "ingest")
    killed: set[int] = set()

    def kill_the_worker_scoring_the_poison() -> bool:
        # Stands in for an image that exhausts memory: the whole worker process dies with it.
        for first, last, pid in SCORING_LINE.findall(log_path.read_text(errors="replace")):
            if int(first) <= poison <= int(last) and int(pid) not in killed:
                killed.add(int(pid))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers).json()
        return job["status"] == "completed"

    wait_for(kill_the_worker_scoring_the_poison, 300, "the job to finish", interval=0.02)
    results = httpx.get(f"{base}/v1/jobs/{job_id}/results", headers=headers).json()["items"]
    by_path = {r["path"]: r for r in results}
    assert len(results) == 5
    assert "stopped 4 times" in by_path["1-poison.png"]["error"]
    assert all(r["probability"] is not None for p, r in by_path.items() if p != "1-poison.png")
    # Two starts of the pass it was in, two of the image alone: four workers died (a pass
    # beside it died with the first, and was then scored: suspects run alone).
    assert len(killed) == 4
    assert process.poll() is None  # up restarted the worker each time and is still serving
    assert log_path.read_text().count("worker exited with -9; restarting") == 4
    engine.dispose()


def _image_id(engine: Engine, job_id: str, path: str) -> int | None:
    with Session(engine) as session:
        image_id: int | None = session.scalar(
            select(Image.id).where(Image.job_id == job_id, Image.relative_path == path)
        )
        return image_id
