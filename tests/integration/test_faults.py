"""Fault drills with real processes: killed workers, a restarted Redis, an unreachable
PostgreSQL, an API killed mid-upload, a batch that keeps killing its worker (prefork; the
threads pool's drill runs under `pneumoscan up`, in tests/e2e)."""

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from core.config import Settings, load_settings
from core.db import Database
from core.migrate import upgrade
from core.models import Image, Job, PassOutcome, ScoringPass
from core.storage import Storage
from core.sweep import remove_orphan_uploads
from tests import hostile
from tests.images import jpeg_bytes
from tests.proxy import TcpProxy
from tests.stack import Stack
from tests.support import (
    ServiceProcess,
    WorkerProcess,
    free_port,
    http_ok,
    process_tree,
    wait_for,
    zip_bytes,
)


def running_passes(stack: Stack) -> list[tuple[int, int, list[int]]]:
    """Passes under way: (pass id, the pid of the process running it, its images' ids)."""
    with stack.db.session() as session:
        rows = session.execute(
            select(ScoringPass.id, ScoringPass.worker, Image.id)
            .join(Image, Image.pass_id == ScoringPass.id)
            .where(ScoringPass.outcome == PassOutcome.RUNNING, Image.scored_at.is_(None))
            .order_by(ScoringPass.id, Image.id)
        ).all()
    passes: dict[tuple[int, int], list[int]] = {}
    for pass_id, worker, image_id in rows:
        passes.setdefault((pass_id, int(worker.rsplit(":", 1)[1])), []).append(image_id)
    return [(pass_id, pid, ids) for (pass_id, pid), ids in passes.items()]


def exactly_one_result_per_image(stack: Stack, job_id: str, total: int) -> None:
    done = stack.wait_finished(job_id, timeout=300)
    assert (done["status"], done["scored"] + done["errors"], done["total"]) == (
        "completed",
        total,
        total,
    )
    results = stack.results(job_id)
    assert len(results) == len({r["id"] for r in results}) == total
    assert all(r["probability"] is not None or r["error"] for r in results)
    with stack.db.session() as session:
        assert session.scalar(select(func.count()).where(Image.job_id == job_id)) == total


def test_killing_the_pool_child_scoring_a_pass_loses_and_duplicates_nothing(
    backend_settings: Settings, tmp_path: Path, inception_model: Path
) -> None:
    # Prefork: the worker's main process sees its child die and gives the message back.
    stack = Stack(backend_settings.model_copy(update={"worker_pool": "prefork"}), tmp_path)
    try:
        stack.import_model(inception_model)
        jobs = {
            stack.submit_zip(zip_bytes([(f"{i:03d}.jpeg", jpeg_bytes()) for i in range(n)]))[
                "id"
            ]: n
            for n in (30, 120)
        }
        stack.ingest_first(list(jobs))
        worker = stack.start_worker()
        # Both jobs were in before the first pass: it takes images of each.
        first = wait_for(lambda: running_passes(stack), 120, "the first pass to start")
        pass_id, pid, image_ids = first[0]
        assert pid != worker.process.pid  # a pool child, not the worker itself
        with stack.db.session() as session:
            held = set(session.scalars(select(Image.job_id).where(Image.id.in_(image_ids))))
        os.kill(pid, signal.SIGKILL)
        for job_id, total in jobs.items():
            exactly_one_result_per_image(stack, job_id, total)
        assert "WorkerLostError" in worker.log() or "exited with 'signal 9" in worker.log()
        assert f"passes [{pass_id}] died with their worker" in worker.log()
        assert held == set(jobs)
    finally:
        stack.close()


def test_a_worker_killed_outright_is_recovered_by_the_sweep(
    backend_settings: Settings, tmp_path: Path, baseline_model: Path
) -> None:
    settings = backend_settings.model_copy(
        update={"batch_size": 2, "stall_seconds": 3, "sweep_seconds": 1}
    )
    stack = Stack(settings, tmp_path)
    beat = ServiceProcess(settings, tmp_path / "beat.log", "beat")
    try:
        stack.import_model(baseline_model)
        worker = stack.start_worker()
        job_id = stack.submit_zip(zip_bytes([(f"{i:03d}.jpeg", jpeg_bytes()) for i in range(60)]))[
            "id"
        ]
        wait_for(lambda: stack.job(job_id)["scored"] > 0, 120, "the first results")
        # The whole worker, main process and pool: the messages it held are never acknowledged.
        for pid in process_tree(worker.process.pid):
            os.kill(pid, signal.SIGKILL)
        worker.process.wait()
        stack.start_worker()
        exactly_one_result_per_image(stack, job_id, 60)
    finally:
        beat.stop()
        stack.close()


def test_lost_scoring_messages_are_sent_again_by_the_sweep(
    backend_settings: Settings, tmp_path: Path, baseline_model: Path
) -> None:
    settings = backend_settings.model_copy(
        update={"batch_size": 4, "stall_seconds": 2, "sweep_seconds": 1}
    )
    stack = Stack(settings, tmp_path)
    try:
        stack.import_model(baseline_model)
        stack.worker = WorkerProcess(settings, tmp_path / "ingest.log", queues="ingest")
        job_id = stack.submit_zip(zip_bytes([(f"{i:03d}.jpeg", jpeg_bytes()) for i in range(20)]))[
            "id"
        ]
        wait_for(lambda: stack.job(job_id)["status"] == "running", 60, "the job to be ingested")
        stack.worker.stop()
        # Every scoring message vanishes, as with a broker that lost them.
        with stack.celery.connection_for_write() as connection:
            assert connection.default_channel.queue_purge("scoring") == 5
        beat = ServiceProcess(settings, tmp_path / "beat.log", "beat")
        try:
            worker = stack.start_worker()
            exactly_one_result_per_image(stack, job_id, 20)
        finally:
            beat.stop()
        assert f"job {job_id}: no progress for" in worker.log()
    finally:
        stack.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, "RedisServer"]]:
    server = RedisServer(tmp_path / "redis", free_port())
    yield f"redis://127.0.0.1:{server.port}/0", server
    server.stop()


class RedisServer:
    """A Redis of the test's own, with an append-only file, so it can be restarted."""

    def __init__(self, directory: Path, port: int) -> None:
        directory.mkdir()
        self.directory, self.port = directory, port
        self.start()

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--pidfile",
                str(self.directory / "redis.pid"),
            ],
            check=True,
        )
        wait_for(self._answers, 20, "redis to start")

    def _answers(self) -> bool:
        return (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True
            ).returncode
            == 0
        )

    def stop(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True
        )
        wait_for(lambda: not self._answers(), 20, "redis to stop")


def test_redis_restarted_during_a_job(
    private_redis: tuple[str, RedisServer], tmp_path: Path, baseline_model: Path
) -> None:
    url, redis_server = private_redis
    (tmp_path / "import").mkdir()
    settings = load_settings(
        home=tmp_path / "var",
        broker_url=url,
        batch_size=2,
        stall_seconds=5,
        sweep_seconds=2,
        import_roots=[tmp_path / "import"],
    )
    upgrade(settings.database_url)
    stack = Stack(settings, tmp_path)
    beat = ServiceProcess(settings, tmp_path / "beat.log", "beat")
    try:
        stack.import_model(baseline_model)
        stack.start_worker()
        job_id = stack.submit_zip(zip_bytes([(f"{i:03d}.jpeg", jpeg_bytes()) for i in range(80)]))[
            "id"
        ]
        wait_for(lambda: stack.job(job_id)["scored"] > 0, 120, "the first results")
        redis_server.stop()
        time.sleep(3)
        redis_server.start()
        exactly_one_result_per_image(stack, job_id, 80)
    finally:
        beat.stop()
        stack.close()


def test_postgresql_unreachable_for_a_while(
    postgres_url: str, redis_url: str, tmp_path: Path, baseline_model: Path
) -> None:
    from sqlalchemy.engine import make_url

    real = make_url(postgres_url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    through_proxy = real.set(port=proxy.port).render_as_string(hide_password=False)
    (tmp_path / "import").mkdir()
    settings = load_settings(
        home=tmp_path / "var",
        database_url=through_proxy,
        broker_url=redis_url,
        batch_size=2,
        broker_prefix=f"faults-{free_port()}:",
        import_roots=[tmp_path / "import"],
    )
    upgrade(settings.database_url)
    stack = Stack(settings, tmp_path)
    try:
        stack.import_model(baseline_model)
        worker = stack.start_worker()
        job_id = stack.submit_zip(zip_bytes([(f"{i:03d}.jpeg", jpeg_bytes()) for i in range(60)]))[
            "id"
        ]
        wait_for(lambda: stack.job(job_id)["scored"] > 0, 120, "the first results")
        proxy.cut()
        assert stack.client.get("/readyz").status_code == 503
        wait_for(lambda: "Retry in" in worker.log(), 60, "tasks to retry")
        time.sleep(5)
        proxy.restore()
        wait_for(lambda: stack.client.get("/readyz").status_code == 200, 60, "readiness")
        exactly_one_result_per_image(stack, job_id, 60)
    finally:
        stack.close()
        proxy.close()


def test_api_killed_during_an_upload_leaves_no_job_and_its_upload_is_removed(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    live = settings.model_copy(update={"api_port": port})
    api = ServiceProcess(live, tmp_path / "api.log", "api")
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, "the api")
        from core.keys import create_key

        db = Database(settings.database_url)
        with db.session() as session:
            _, secret = create_key(session, "uploader", "submit")
        sent = threading.Event()

        def body() -> Iterator[bytes]:
            boundary_head = (
                b'--b\r\nContent-Disposition: form-data; name="archive"; filename="s.zip"\r\n'
                b"Content-Type: application/zip\r\n\r\nPK\x03\x04"
            )
            yield boundary_head
            for _ in range(40):
                yield bytes(256 * 1024)
            sent.set()
            time.sleep(60)  # never finishes: the API dies first
            yield b"\r\n--b--\r\n"

        def upload() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(
                    f"http://127.0.0.1:{port}/v1/jobs",
                    content=body(),
                    timeout=120,
                    headers={
                        "Authorization": f"Bearer {secret}",
                        "Content-Type": "multipart/form-data; boundary=b",
                    },
                )

        threading.Thread(target=upload, daemon=True).start()
        assert sent.wait(30)
        incoming = settings.storage_dir / "uploads" / ".incoming"
        wait_for(
            lambda: [p for p in incoming.glob("upload-*") if p.stat().st_size > 1024 * 1024],
            30,
            "part of the upload on disk",
        )
        api.kill()
        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 0  # no half job

        def sweep_uploads() -> int:
            # The killed worker's lock goes with its process, a moment after the signal.
            with db.session() as session:
                return remove_orphan_uploads(
                    session, Storage(settings.storage_dir), settings.stall_after
                )

        assert wait_for(sweep_uploads, 10, "the orphan upload to be removed") == 1
        assert list(incoming.glob("upload-*")) == []
    finally:
        api.stop()


def test_a_pass_that_keeps_killing_its_worker_is_narrowed_down_to_the_poison_image(
    backend_settings: Settings, tmp_path: Path, baseline_model: Path
) -> None:
    settings = backend_settings.model_copy(
        update={
            "batch_size": 4,
            "max_batch_attempts": 2,
            "max_image_pixels": 150_000_000,
            "worker_pool": "prefork",  # each death costs one pool child; the worker carries on
        }
    )
    stack = Stack(settings, tmp_path)
    try:
        stack.import_model(baseline_model)
        # The poison's job and another share the first pass: its neighbours are another job's.
        poisoned = [("000.jpeg", jpeg_bytes()), ("001-poison.png", hostile.slow_png(side=11_000))]
        poisoned_id = stack.submit_zip(zip_bytes(poisoned))["id"]
        other_id = stack.submit_zip(
            zip_bytes([(f"{i:03d}.jpeg", jpeg_bytes()) for i in range(10)])
        )["id"]
        # Both ingested first, by an ingest-only worker, so the first pass holds both.
        stack.worker = WorkerProcess(settings, tmp_path / "ingest.log", queues="ingest")
        for job_id in (poisoned_id, other_id):
            wait_for(
                lambda j=job_id: stack.job(j)["total"] is not None, 60, "the jobs to be ingested"
            )
        stack.worker.stop()
        stack.start_worker()
        with stack.db.session() as session:
            poison = session.scalar(
                select(Image.id).where(
                    Image.job_id == poisoned_id, Image.relative_path == "001-poison.png"
                )
            )
        killed: dict[int, list[int]] = {}  # pass id: its images

        def kill_whoever_scores_the_poison() -> bool:
            # Stands in for an image that exhausts memory: every process that starts on it dies.
            for pass_id, pid, image_ids in running_passes(stack):
                if poison in image_ids and pass_id not in killed:
                    killed[pass_id] = image_ids
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            return all(stack.job(j)["status"] == "completed" for j in (poisoned_id, other_id))

        wait_for(
            kill_whoever_scores_the_poison,
            300,
            "the jobs to finish around the poison",
            interval=0.02,
        )
        results = {r["id"]: r for j in (poisoned_id, other_id) for r in stack.results(j)}
        assert "stopped 4 times" in results[poison]["error"]
        assert all(r["probability"] is not None for i, r in results.items() if i != poison)
        assert len(results) == 12
        # A pass of both jobs, twice (its second start alone), then the poison alone, twice.
        assert [len(ids) for ids in killed.values()] == [4, 4, 1, 1]
        with stack.db.session() as session:
            first = next(iter(killed.values()))
            first_pass = set(session.scalars(select(Image.job_id).where(Image.id.in_(first))))
        assert first_pass == {poisoned_id, other_id}
    finally:
        stack.close()
