"""Large uploads through the production server: they stream to disk with flat API memory,
and a fast raw zip is scored while it arrives."""

import contextlib
import io
import socket
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from core.config import Settings
from core.db import Database
from core.intake.growing_file import writer_holds
from core.keys import create_key
from core.models import Image, Job
from core.storage import KEPT_NAME, PENDING_NAME, Span
from tests.dicoms import BIRTH_DATE, PATIENT_NAME, chest_like, dataset, encode
from tests.images import gradient, jpeg_bytes, png_bytes
from tests.stack import Stack
from tests.support import (
    ServiceProcess,
    WorkerProcess,
    free_port,
    http_ok,
    rss_kb,
    wait_for,
    zip_bytes,
)

MB = 1024 * 1024


def test_a_large_upload_streams_to_disk_with_flat_api_memory(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    api = ServiceProcess(
        settings.model_copy(update={"api_port": port}), tmp_path / "api.log", "api"
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(f"{base}/healthz"), 60, "the api")
        with Database(settings.database_url).session() as session:
            _, key = create_key(session, "uploader", "submit")
        time.sleep(1)
        # gunicorn runs with the malloc settings that keep its body buffers on the heap.
        environ = Path(f"/proc/{api.process.pid}/environ").read_bytes().split(b"\0")
        assert b"MALLOC_MMAP_THRESHOLD_=33554432" in environ
        before = sum(rss_kb(api.process.pid).values())
        samples = [before]
        size = 400 * MB

        def body() -> Iterator[bytes]:
            yield (
                b'--b\r\nContent-Disposition: form-data; name="archive"; filename="big.zip"\r\n'
                b"Content-Type: application/zip\r\n\r\nPK\x03\x04"
            )
            for index in range(size // MB):
                if index % 25 == 0:
                    samples.append(sum(rss_kb(api.process.pid).values()))
                yield bytes(MB)
            yield b"\r\n--b--\r\n"

        response = httpx.post(
            f"{base}/v1/jobs",
            content=body(),
            timeout=300,
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "multipart/form-data; boundary=b",
            },
        )
        assert response.status_code == 202, response.text
        stored = settings.storage_dir / "uploads" / response.json()["id"] / "archive.zip"
        assert stored.stat().st_size == size + 4
        assert max(samples) - before < 50 * 1024  # kilobytes: the body never sits in memory
    finally:
        api.stop()


def _zip_with_cut(
    padding: int, images: list[bytes], more: Sequence[tuple[str, bytes, int]] = ()
) -> tuple[bytes, int]:
    """A stored zip (a non-image first, then the images, then `more`: name, bytes, method)
    and the offset of the second half's first image."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        bundle.writestr("padding.bin", bytes(padding))
        for index, data in enumerate(images):
            bundle.writestr(f"study/{index:03d}.jpeg", data)
        for name, data, method in more:
            bundle.writestr(name, data, method)
        cut = bundle.infolist()[1 + len(images) // 2].header_offset
    return buffer.getvalue(), cut


def read_response(client: socket.socket) -> bytes:
    """One whole HTTP response: its head, then as many bytes as its Content-Length says."""
    answer = b""
    while b"\r\n\r\n" not in answer and (piece := client.recv(65536)):
        answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = int(lengths[0].split(b":")[1]) if lengths else 0
    while len(body) < length and (piece := client.recv(65536)):
        body += piece
    return head + b"\r\n\r\n" + body


@dataclass
class EarlyUpload:
    """The API and a two-task worker running, and a zip of 16 images behind 17 MiB of
    padding (enough to be judged fast) whose first half ends on a MiB boundary: the API
    reads the body a MiB at a time, so all of the first half reaches the disk while a
    client holds back the second."""

    stack: Stack
    api: ServiceProcess
    key: str
    data: bytes
    cut: int

    def post(self, body: Iterator[bytes]) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{self.stack.settings.api_port}/v1/jobs",
            content=body,
            timeout=300,
            headers={
                "Authorization": f"Bearer {self.key}",
                "Content-Type": "application/zip",
                "Content-Length": str(len(self.data)),
            },
        )

    def first_half(self) -> Iterator[bytes]:
        for start in range(0, self.cut, MB):
            yield self.data[start : start + MB]

    def recorded_images(self) -> int:
        with self.stack.db.session() as session:
            return session.scalar(select(func.count()).select_from(Image)) or 0

    def wait_until_nothing_is_left(self) -> None:
        """A failed upload: no job, no image row, no folder, and the ingest reading it ended."""

        def nothing_left() -> bool:
            with self.stack.db.session() as session:
                jobs = session.scalar(select(func.count()).select_from(Job))
            folders = list((self.stack.settings.storage_dir / "uploads").glob("[0-9a-f]*"))
            return jobs == 0 and self.recorded_images() == 0 and not folders

        wait_for(nothing_left, 30, "the failed upload's job and files to go")
        assert self.stack.worker is not None
        worker = self.stack.worker
        wait_for(lambda: "ingested: 0 images" in worker.log(), 30, "ingest to stop")


def _early_upload(settings: Settings, tmp_path: Path, model: Path) -> Iterator[EarlyUpload]:
    settings = settings.model_copy(update={"api_port": free_port(), "batch_size": 4})
    stack = Stack(settings, tmp_path)
    api = ServiceProcess(settings, tmp_path / "api.log", "api")
    try:
        stack.import_model(model)
        # Two tasks at once, as the service runs: ingest waits for bytes while a batch scores.
        stack.worker = WorkerProcess(settings, tmp_path / "worker.log", concurrency=2)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{settings.api_port}/healthz"), 60, "the api")
        with stack.db.session() as session:
            _, key = create_key(session, "uploader", "submit")
        images = [jpeg_bytes(gradient((300 + i, 240))) for i in range(16)]
        _, cut = _zip_with_cut(17 * MB, images)
        data, cut = _zip_with_cut(17 * MB + (-cut % MB), images)
        assert cut % MB == 0
        yield EarlyUpload(stack, api, key, data, cut)
    finally:
        api.stop()
        stack.close()


@pytest.fixture
def early_upload(
    backend_settings: Settings, tmp_path: Path, baseline_model: Path
) -> Iterator[EarlyUpload]:
    yield from _early_upload(backend_settings, tmp_path, baseline_model)


@pytest.fixture
def early_upload_embedded(
    settings: Settings, tmp_path: Path, baseline_model: Path
) -> Iterator[EarlyUpload]:
    yield from _early_upload(settings, tmp_path, baseline_model)


@pytest.fixture
def early_upload_impatient(
    settings: Settings, tmp_path: Path, baseline_model: Path
) -> Iterator[EarlyUpload]:
    impatient = settings.model_copy(update={"upload_idle_seconds": 3})
    yield from _early_upload(impatient, tmp_path, baseline_model)


@pytest.fixture
def early_upload_tolerant(
    settings: Settings, tmp_path: Path, baseline_model: Path
) -> Iterator[EarlyUpload]:
    """No minimum rate: uploads may trickle for as long as they keep sending."""
    tolerant = settings.model_copy(update={"upload_min_kb_per_s": 0})
    yield from _early_upload(tolerant, tmp_path, baseline_model)


@pytest.fixture
def early_upload_strict(
    settings: Settings, tmp_path: Path, baseline_model: Path
) -> Iterator[EarlyUpload]:
    """A minimum rate of 256 KB/s (each MiB within 4 s) and one upload per key name."""
    strict = settings.model_copy(update={"upload_min_kb_per_s": 256, "max_uploads_per_owner": 1})
    yield from _early_upload(strict, tmp_path, baseline_model)


def test_a_fast_raw_zip_upload_is_scored_while_it_arrives(early_upload: EarlyUpload) -> None:
    """The first half of the zip is scored while the client still holds back the second."""
    up = early_upload
    scored_during_upload: list[int] = []

    def scored() -> int:
        with up.stack.db.session() as session:
            return session.scalar(select(func.coalesce(func.sum(Job.scored), 0))) or 0

    def body() -> Iterator[bytes]:
        yield from up.first_half()
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: scored() >= 8, 60, "scoring during the upload")
        scored_during_upload.append(scored())
        yield up.data[up.cut :]

    response = up.post(body())
    assert response.status_code == 202, response.text
    assert scored_during_upload == [8], up.api.log()[-3000:] + up.stack.worker.log()[-3000:]
    job = up.stack.wait_finished(response.json()["id"])
    assert (job["status"], job["total"], job["scored"], job["rejected"]) == (
        "completed",
        16,
        16,
        1,
    )
    uploads = up.stack.settings.storage_dir / "uploads"
    assert not list((uploads / job["id"]).glob("archive.zip*"))


def test_stored_images_are_scored_where_they_lie_and_nothing_else_of_the_upload_stays(
    early_upload: EarlyUpload,
) -> None:
    """Stored JPEG and PNG members read early are not copied out: their rows point into the
    kept upload, which keeps their bytes and nothing else (no DICOM original, no header)."""
    images = [jpeg_bytes(gradient((300 + i, 240))) for i in range(16)]
    twin = images[3]
    more = [
        ("deflated/twin.jpeg", twin, zipfile.ZIP_DEFLATED),  # copied out: same bytes, same score
        ("study/scan.png", png_bytes(), zipfile.ZIP_STORED),
        ("study/patient.dcm", encode(dataset(chest_like())), zipfile.ZIP_STORED),
        ("notes.txt", f"{PATIENT_NAME} born {BIRTH_DATE}".encode(), zipfile.ZIP_STORED),
    ]
    _, cut = _zip_with_cut(17 * MB, images, more)
    data, cut = _zip_with_cut(17 * MB + (-cut % MB), images, more)
    up = replace(early_upload, data=data, cut=cut)

    def body() -> Iterator[bytes]:
        yield from up.first_half()
        wait_for(lambda: up.recorded_images() >= 8, 60, "ingest to read the first half")
        yield up.data[up.cut :]

    response = up.post(body())
    assert response.status_code == 202, response.text
    job = up.stack.wait_finished(response.json()["id"])
    assert (job["status"], job["total"], job["errors"], job["rejected"]) == (
        "completed",
        19,
        0,
        2,
    )
    files = up.stack.settings.storage_dir / "uploads" / job["id"] / "files"
    kept = files / KEPT_NAME
    with up.stack.db.session() as session:
        rows = {i.relative_path: i for i in session.scalars(select(Image))}
    in_place = {path for path, row in rows.items() if row.member_offset is not None}
    assert in_place == {f"study/{i:03d}.jpeg" for i in range(16)} | {"study/scan.png"}
    assert {rows[path].location for path in in_place} == {str(kept.relative_to(files.parents[2]))}
    # Only what was not scored in place was copied out: the deflated twin and the DICOM file.
    assert sorted(p.name for p in files.iterdir()) == ["000018", "000020", KEPT_NAME]
    assert rows["deflated/twin.jpeg"].probability == rows["study/003.jpeg"].probability
    assert rows["study/003.jpeg"].probability is not None

    content = kept.read_bytes()
    assert len(content) == len(data)  # the upload's own bytes, not a copy
    spans = sorted(Span(rows[p].member_offset or 0, rows[p].size_bytes) for p in in_place)
    position = 0
    for span in spans:
        assert not any(content[position : span.offset])  # blanked up to the image
        image = content[span.offset : span.offset + span.length]
        assert image == data[span.offset : span.offset + span.length]
        position = span.offset + span.length
    assert not any(content[position:])
    for path in files.parent.rglob("*"):  # no name or birth date in any file of the job
        for secret in (PATIENT_NAME, BIRTH_DATE):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), (secret, path)
    assert not (files / PENDING_NAME).exists()


def test_a_raw_zip_upload_cut_off_while_ingest_reads_it_leaves_nothing(
    early_upload_embedded: EarlyUpload,
) -> None:
    up = early_upload_embedded

    def body() -> Iterator[bytes]:
        yield from up.first_half()
        wait_for(lambda: up.recorded_images() >= 8, 60, "ingest to read the first half")
        raise ConnectionAbortedError("the client gives up")

    with pytest.raises(ConnectionAbortedError):  # httpx drops the connection
        up.post(body())
    up.wait_until_nothing_is_left()
    assert up.stack.worker is not None
    assert "Traceback" not in up.stack.worker.log()


def test_cancelling_a_job_while_its_zip_arrives_keeps_it_cancelled_and_answers_409(
    early_upload_embedded: EarlyUpload,
) -> None:
    """The cancel is accepted, the upload is answered with a clear 409 naming the job, the job
    stays (cancelled, what was scored kept), and nothing of the upload stays on disk."""
    up = early_upload_embedded
    cancelled: list[int] = []
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{up.stack.settings.api_port}",
        headers={"Authorization": f"Bearer {up.key}"},
    )

    def body() -> Iterator[bytes]:
        yield from up.first_half()
        wait_for(lambda: up.recorded_images() >= 8, 60, "ingest to read the first half")
        with up.stack.db.session() as session:
            job_id = session.scalars(select(Job.id)).one()
        cancelled.append(client.post(f"/v1/jobs/{job_id}/cancel").status_code)
        time.sleep(1.5)  # the API looks at its job once a second while it receives
        for start in range(up.cut, len(up.data), MB):
            yield up.data[start : start + MB]

    response = up.post(body())
    assert cancelled == [202]
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "job_finished"
    assert "was cancelled while its upload arrived" in error["message"]
    job = up.stack.job(error["details"]["job_id"])
    assert job["status"] == "cancelled"
    rows = up.stack.results(job["id"])
    assert len(rows) >= 8  # what ingest recorded before the cancel is kept
    assert sum(row["probability"] is not None for row in rows) == job["scored"]
    folder = up.stack.settings.storage_dir / "uploads" / job["id"]
    wait_for(
        lambda: not [p for p in folder.rglob("*") if "archive.zip" in p.name or p.suffix == ".zip"],
        30,
        "the upload's files to go",
    )
    client.close()


def test_a_stalled_upload_is_dropped_and_frees_the_ingest_waiting_for_it(
    early_upload_impatient: EarlyUpload,
) -> None:
    """A client that goes quiet mid-body (its connection open, nothing sent) would otherwise
    hold an API thread, and the worker slot of the ingest reading its zip, for ever."""
    up = early_upload_impatient
    port = up.stack.settings.api_port
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {up.key}\r\nContent-Type: application/zip\r\n"
        f"Content-Length: {len(up.data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(head)
        for chunk in up.first_half():
            client.sendall(chunk)
        client.settimeout(60)  # the client says nothing more, and waits for the answer
        answer = read_response(client)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:500]
    assert b"incomplete_upload" in answer
    assert b"nothing arrived for 3 s" in answer
    up.wait_until_nothing_is_left()


def test_an_upload_pausing_for_less_than_the_idle_limit_goes_through(
    early_upload_impatient: EarlyUpload,
) -> None:
    """The limit is on silence, not on the upload's length: pauses of 2 s under a 3 s limit,
    spread over more than 3 s, lose nothing."""
    up = early_upload_impatient

    def body() -> Iterator[bytes]:
        yield from up.first_half()
        rest = up.data[up.cut :]
        third = len(rest) // 3 + 1
        for start in range(0, len(rest), third):  # three pieces, 6 s in all
            time.sleep(2)
            yield rest[start : start + third]

    response = up.post(body())
    assert response.status_code == 202, response.text
    job = up.stack.wait_finished(response.json()["id"])
    assert (job["status"], job["total"], job["scored"]) == ("completed", 16, 16)


def test_a_stalled_multipart_upload_is_dropped_and_leaves_no_job_or_temporary_file(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"api_port": free_port(), "upload_idle_seconds": 2})
    api = ServiceProcess(settings, tmp_path / "api.log", "api")
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{settings.api_port}/healthz"), 60, "the api")
        with Database(settings.database_url).session() as session:
            _, key = create_key(session, "uploader", "submit")
        part = (
            b'--b\r\nContent-Disposition: form-data; name="archive"; filename="s.zip"\r\n'
            b"Content-Type: application/zip\r\n\r\nPK\x03\x04" + bytes(3 * MB)
        )
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {len(part) + 5 * MB}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", settings.api_port)) as client:
            client.sendall(head + part)  # then nothing: two fifths of the body never come
            client.settimeout(60)
            answer = read_response(client)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:500]
        assert b"incomplete_upload" in answer
        with Database(settings.database_url).session() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 0
        incoming = settings.storage_dir / "uploads" / ".incoming"
        wait_for(lambda: not list(incoming.glob("upload-*")), 10, "the temporary file to go")
    finally:
        api.stop()


class Trickler(threading.Thread):
    """A raw-socket upload that sends its first half at once (fast enough to be expanded while
    it arrives), then a byte a second until told to send the rest, or until answered."""

    def __init__(self, up: EarlyUpload) -> None:
        super().__init__(daemon=True)
        self.up = up
        self.send_the_rest = threading.Event()
        self.answer: bytes | None = None

    def run(self) -> None:
        port = self.up.stack.settings.api_port
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {self.up.key}\r\nContent-Type: application/zip\r\n"
            f"Content-Length: {len(self.up.data)}\r\n\r\n"
        ).encode()
        rest = self.up.data[self.up.cut :]
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(head)
            for chunk in self.up.first_half():
                client.sendall(chunk)
            sent = 0
            client.settimeout(1)
            while not self.send_the_rest.is_set():
                try:  # an answer before the end: the API dropped the upload
                    early_answer = client.recv(65536)
                except TimeoutError:
                    client.sendall(rest[sent : sent + 1])
                    sent += 1
                    continue
                client.settimeout(10)
                self.answer = early_answer + read_response(client)
                return
            client.sendall(rest[sent:])
            client.settimeout(60)
            self.answer = read_response(client)


def test_two_trickling_uploads_do_not_delay_another_owners_job(
    early_upload_tolerant: EarlyUpload,
) -> None:
    """Two uploads that start fast (so their ingest reads them as they arrive) and then
    trickle hold no worker slot while they wait: another owner's one-image job, submitted
    behind them to the same two-task worker, is scored meanwhile. Once the tricklers send the
    rest, their jobs complete with every image, nothing lost across the waits."""
    up = early_upload_tolerant
    tricklers = [Trickler(up), Trickler(up)]
    for trickler in tricklers:
        trickler.start()

    def trickling_jobs() -> list[str] | None:
        with up.stack.db.session() as session:
            ids = list(session.scalars(select(Job.id).where(Job.owner == "uploader")))
        return ids if len(ids) == 2 and up.recorded_images() >= 16 else None

    their_jobs = wait_for(trickling_jobs, 60, "both trickling uploads' ingests to start")
    other = up.stack.submit_zip(zip_bytes([("one.jpeg", jpeg_bytes())]))  # the admin's job
    job = up.stack.wait_finished(other["id"], timeout=60)
    assert (job["status"], job["scored"]) == ("completed", 1)
    assert all(t.is_alive() and t.answer is None for t in tricklers)  # still trickling
    assert "still arriving; ingest goes on later" in up.stack.worker.log()
    for trickler in tricklers:
        trickler.send_the_rest.set()
        trickler.join(60)
        assert trickler.answer is not None
        assert trickler.answer.startswith(b"HTTP/1.1 202"), trickler.answer[:500]
    for job_id in their_jobs:
        done = up.stack.wait_finished(job_id)
        assert (done["status"], done["total"], done["scored"], done["rejected"]) == (
            "completed",
            16,
            16,
            1,
        )


def test_an_upload_that_slows_to_a_trickle_after_a_fast_start_is_dropped(
    early_upload_strict: EarlyUpload,
) -> None:
    """A byte a second never trips the idle limit (60 s of silence); the minimum rate does:
    the upload is answered 408 with the reason, and its job and files go, as for any upload
    that does not arrive whole."""
    up = early_upload_strict
    trickler = Trickler(up)
    trickler.start()
    trickler.join(60)
    assert trickler.answer is not None, "the trickling upload was never answered"
    assert trickler.answer.startswith(b"HTTP/1.1 408"), trickler.answer[:500]
    assert b"upload_too_slow" in trickler.answer
    assert b"slower than the minimum of 256 KB/s" in trickler.answer
    up.wait_until_nothing_is_left()


def test_one_key_name_has_at_most_its_share_of_uploads_arriving(
    early_upload_strict: EarlyUpload,
) -> None:
    """With one upload per name, a second upload of the same name while the first arrives is
    answered 429; another name's upload is taken meanwhile, and the first name's next upload
    once its first has ended."""
    settings = early_upload_strict.stack.settings
    stack, key = early_upload_strict.stack, early_upload_strict.key
    with stack.db.session() as session:
        _, other_key = create_key(session, "other", "submit")
    small = zip_bytes([("one.jpeg", jpeg_bytes())])

    def post(api_key: str) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{settings.api_port}/v1/jobs",
            content=small,
            timeout=60,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/zip"},
        )

    def first_body() -> Iterator[bytes]:
        yield small[:100]
        held.set()
        assert release.wait(60)
        yield small[100:]

    held, release = threading.Event(), threading.Event()
    first: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: first.append(
            httpx.post(
                f"http://127.0.0.1:{settings.api_port}/v1/jobs",
                content=first_body(),
                timeout=60,
                headers={
                    "Authorization": f"Bearer {key}",
                    "Content-Type": "application/zip",
                    "Content-Length": str(len(small)),
                },
            )
        ),
        daemon=True,
    )
    sender.start()
    assert held.wait(30)
    slots = settings.storage_dir / "upload-slots"
    wait_for(lambda: any(map(writer_holds, slots.glob("*"))), 30, "the first upload's slot")
    refused = post(key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_uploads"
    assert refused.headers["Retry-After"] == "30"
    assert post(other_key).status_code == 202
    release.set()
    sender.join(60)
    assert first[0].status_code == 202, first[0].text
    assert post(key).status_code == 202  # its slot was given back
