"""Large uploads stream to disk through the production server: API memory stays flat."""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from core.config import Settings
from core.db import Database
from core.keys import create_key
from tests.support import ServiceProcess, free_port, http_ok, rss_kb, wait_for

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
