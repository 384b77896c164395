"""What the reading room's queries and pictures cost on a 20,000-image job.

    .venv/bin/python bench/reading_room.py [--database-url URL] [--images 20000]

Builds one job of `--images` scored images (probabilities at random; one in 1,000 an error)
in the given database (default: SQLite in a temporary folder), then times, interleaved and
repeated, the ranking's first page, a page near the end, a filtered page, an image's place in
the ranking and the filter counts; and the first preview of original-resolution X-rays
(decode as scoring does, shrink, JPEG) against serving it again from its file. Prints the
medians in milliseconds; a copy goes to bench/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import cpu_model, origres_images, write_results
from sqlalchemy import insert, select

from core.db import Database
from core.imaging import ImageSource
from core.jobs import create_job
from core.migrate import upgrade
from core.models import Image, SourceKind
from core.previews import StoredImage, preview
from core.reading_room import Show, counts, neighbours, ranked_page
from core.storage import Storage

PER_PAGE = 48


def build(db: Database, images: int) -> list[int]:
    rng = np.random.default_rng(7)
    with db.session() as session:
        create_job(session, SourceKind.IMAGES, "bench", "bench-reading-room")
        for start in range(0, images, 5000):
            session.execute(
                insert(Image),
                [
                    {
                        "job_id": "bench-reading-room",
                        "relative_path": f"{i}.jpg",
                        "location": f"x/{i}",
                        "format": "jpeg",
                        "size_bytes": 1,
                        "sha256": "0" * 64,
                        "probability": None if i % 1000 == 0 else float(p),
                        "label": None if i % 1000 == 0 else ("PNEUMONIA" if p >= 0.5 else "NORMAL"),
                        "error": "not decodable" if i % 1000 == 0 else None,
                    }
                    for i, p in zip(
                        range(start, min(start + 5000, images)),
                        rng.uniform(0, 1, images)[start : start + 5000],
                        strict=False,
                    )
                ],
            )
    with db.session() as session:
        return list(session.scalars(select(Image.id).where(Image.job_id == "bench-reading-room")))


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-reading-room-"))
    url = args.database_url or f"sqlite:///{folder / 'bench.db'}"
    upgrade(url)
    db = Database(url)
    with db.session() as session:  # a run before this one left its job
        session.execute(Image.__table__.delete().where(Image.job_id == "bench-reading-room"))
        from core.models import Job

        session.execute(Job.__table__.delete().where(Job.id == "bench-reading-room"))
    ids = build(db, args.images)
    last_page = (args.images + PER_PAGE - 1) // PER_PAGE
    job = "bench-reading-room"
    queries: dict[str, Callable[[], object]] = {
        "first page": lambda: ranked_page(session, job, Show.ALL, 1, PER_PAGE),
        "last page": lambda: ranked_page(session, job, Show.ALL, last_page, PER_PAGE),
        "PNEUMONIA, page 100": lambda: ranked_page(session, job, Show.PNEUMONIA, 100, PER_PAGE),
        "place in the ranking": lambda: neighbours(session, job, ids[len(ids) // 2], Show.ALL),
        "filter counts": lambda: counts(session, job),
    }
    times: dict[str, list[float]] = {name: [] for name in queries}
    with db.session() as session:
        for _ in range(args.runs):  # interleaved, so drift touches every query alike
            for name, query in queries.items():
                times[name].append(timed(query))
    figures: dict[str, object] = {
        "database": db.engine.dialect.name,
        "cpu": cpu_model(),
        "images": args.images,
        "queries_ms": {name: round(statistics.median(t), 1) for name, t in times.items()},
    }
    storage = Storage(folder / "storage")
    first, again = [], []
    for index, path in enumerate(origres_images()[:20]):
        stored = StoredImage(index, "previews", ImageSource(path, "jpeg"), 0.5, 1, "v", True)
        first.append(timed(lambda stored=stored: preview(storage, stored, 512, 10**8)))
        again.append(timed(lambda stored=stored: preview(storage, stored, 512, 10**8)))
    figures["preview_512_ms"] = {
        "first (decode, shrink, JPEG)": round(statistics.median(first), 1),
        "again (from its file)": round(statistics.median(again), 2),
    }
    for name, value in figures.items():
        print(f"{name}: {value}", file=sys.stdout)
    write_results("reading_room", figures)
    db.dispose()


if __name__ == "__main__":
    main()
