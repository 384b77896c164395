"""A large archive through the real API: streamed to disk, API memory flat, no server timeout.

    .venv/bin/python bench/upload.py [--gigabytes 2] [--seconds 0]

Starts `pneumoscan api` (gunicorn, the production settings) on a temporary home, streams a
multipart upload of `--gigabytes` GB (a stored zip of one large member) and samples the
resident memory of the API's processes while it arrives. `--seconds N` paces the upload to
last about N seconds, longer than gunicorn's worker timeout (120 s), to show a slow client
is not cut off. Prints the figures; a JSON copy goes to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
from common import run_cli, service_env, start_cli, stop, wait_until_ready, write_results

from tests.support import rss_kb

CHUNK = 1024 * 1024


def stored_zip_stream(size: int, seconds: float) -> Iterator[bytes]:
    """A zip with one stored member of `size` zero bytes, generated on the fly."""
    name = b"large.bin"
    crc = 0
    zero = bytes(CHUNK)
    # General purpose flag 0x08: sizes and CRC follow the data, so nothing is known in advance.
    yield (
        b"PK\x03\x04"
        + (20).to_bytes(2, "little")
        + (0x08).to_bytes(2, "little")
        + bytes(2)
        + bytes(4)
        + bytes(12)
        + len(name).to_bytes(2, "little")
        + bytes(2)
        + name
    )
    started, sent = time.monotonic(), 0
    while sent < size:
        piece = zero[: min(CHUNK, size - sent)]
        crc = zlib.crc32(piece, crc)
        sent += len(piece)
        yield piece
        if seconds:
            time.sleep(max(0.0, started + seconds * sent / size - time.monotonic()))
    yield b"PK\x07\x08" + crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little") * 2


def multipart(parts: Iterator[bytes]) -> Iterator[bytes]:
    yield (
        b'--bench\r\nContent-Disposition: form-data; name="archive"; filename="large.zip"\r\n'
        b"Content-Type: application/zip\r\n\r\n"
    )
    yield from parts
    yield b"\r\n--bench--\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    home, env = service_env("upload", args.port, max_upload_mb="4096")
    run_cli(["db", "upgrade"], env)
    key = run_cli(["keys", "create", "--name", "bench", "--scope", "submit"], env)
    api = start_cli(["api"], env, home / "api.log")
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_until_ready(base, "/healthz")
        time.sleep(1)
        baseline = sum(rss_kb(api.pid).values())
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, sum(rss_kb(api.pid).values()))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        size = int(args.gigabytes * 1024**3)
        started = time.perf_counter()
        response = httpx.post(
            f"{base}/v1/jobs",
            content=multipart(stored_zip_stream(size, args.seconds)),
            timeout=None,
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "multipart/form-data; boundary=bench",
            },
        )
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        job = response.json()
        stored = home / "storage" / "uploads" / job.get("id", "-") / "archive.zip"
        figures = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{os.cpu_count()} CPUs",
            "upload_bytes": size,
            "status": response.status_code,
            "seconds": round(seconds, 1),
            "megabytes_per_second": round(size / 1024**2 / seconds, 1),
            "api_rss_before_mb": round(baseline / 1024, 1),
            "api_rss_peak_mb": round(peak / 1024, 1),
            "api_rss_growth_mb": round((peak - baseline) / 1024, 1),
            "stored_bytes": stored.stat().st_size if stored.exists() else None,
        }
    finally:
        stop(api)
    for name, value in figures.items():
        print(f"{name:22} {value}")
    write_results("upload", figures)


if __name__ == "__main__":
    main()
