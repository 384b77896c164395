"""What is kept of an upload whose images were read in place: only their bytes, blanked
around them when ingest ends, or by the sweep when the ingest died first."""

import os
from pathlib import Path

from core.config import Settings
from core.db import Database
from core.intake.kept_members import blank_outside, jobs_with_unfinished_kept_uploads
from core.jobs import create_job
from core.models import Image, JobStatus, SourceKind
from core.storage import KEPT_NAME, PENDING_NAME, Span, Storage
from tests.support import ServiceProcess, WorkerProcess, wait_for


def test_blanking_zeroes_everything_but_the_spans(tmp_path: Path) -> None:
    path = tmp_path / "kept"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    spans = [Span(2_000_000, 500), Span(10, 90), Span(3_000_000, 7)]
    blank_outside(path, spans)
    content = path.read_bytes()
    assert len(content) == len(data)
    position = 0
    for span in sorted(spans):
        assert not any(content[position : span.offset])
        end = span.offset + span.length
        assert content[span.offset : end] == data[span.offset : end]
        position = end
    assert not any(content[position:])


def _job_with_kept_upload(
    db: Database, storage: Storage, job_id: str, status: JobStatus, total: int | None
) -> tuple[Path, bytes]:
    """A job whose ingest linked its upload and recorded one image in it, then died."""
    files = storage.job_files_dir(job_id)
    files.mkdir(parents=True)
    data = os.urandom(4096)
    (files / KEPT_NAME).write_bytes(data)
    (files / PENDING_NAME).touch()
    with db.session() as session:
        job = create_job(session, SourceKind.ARCHIVE, "study.zip", job_id, owner="t")
        job.status, job.total = status, total
        session.add(
            Image(
                job_id=job_id,
                relative_path="a.jpeg",
                location=storage.relative(files / KEPT_NAME),
                format="jpeg",
                size_bytes=1000,
                member_offset=1000,
                sha256="0" * 64,
            )
        )
    return files, data


def test_the_sweep_finishes_what_a_dead_ingest_left_and_leaves_live_ingests_alone(
    settings: Settings, tmp_path: Path
) -> None:
    # Stalls are judged after 10 minutes: the live ingest below is not sent again meanwhile.
    settings = settings.model_copy(update={"stall_seconds": 600, "sweep_seconds": 1})
    db, storage = Database(settings.database_url), Storage(settings.storage_dir)
    recorded, data = _job_with_kept_upload(db, storage, "a" * 32, JobStatus.COMPLETED, 1)
    live, _ = _job_with_kept_upload(db, storage, "b" * 32, JobStatus.RUNNING, None)
    cancelled, _ = _job_with_kept_upload(db, storage, "c" * 32, JobStatus.CANCELLED, None)
    with db.session() as session:
        found = sorted(jobs_with_unfinished_kept_uploads(session, storage))
    assert found == ["a" * 32, "c" * 32]  # the live ingest will finish its own

    beat = ServiceProcess(settings, tmp_path / "beat.log", "beat")
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        wait_for(
            lambda: (
                not (recorded / PENDING_NAME).exists() and not (cancelled / PENDING_NAME).exists()
            ),
            60,
            "the sweep to finish the kept uploads",
        )
    finally:
        beat.stop()
        worker.stop()
    assert f"job {'a' * 32}: its ingest ended before blanking" in worker.log()
    content = (recorded / KEPT_NAME).read_bytes()
    assert content[1000:2000] == data[1000:2000]  # the image's bytes
    assert not any(content[:1000])
    assert not any(content[2000:])
    assert not (cancelled / KEPT_NAME).exists()  # a cancelled job keeps nothing of it
    for files in (recorded, cancelled):
        assert not (files / PENDING_NAME).exists()
    assert (live / PENDING_NAME).exists()
    assert (live / KEPT_NAME).read_bytes()
    db.dispose()
