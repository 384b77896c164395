"""Scoring throughput against its physical bound and a naive pipeline, in one run.

    .venv/bin/python bench/throughput.py [--images 1000] [--runs 3]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/pneumoscan_bench]
        [--broker-url redis://127.0.0.1:6379/0]

InceptionResNetV2 at 75x75 (random weights) and the real full-resolution JPEGs of
../shared/data/origres (or PNEUMOSCAN_TEST_DATA), repeated to `--images`:

  model    the loaded model's forward pass on pre-decoded tensors, batches of the pipeline's
           size, in the precision the service scores in (PNEUMOSCAN_SCORING_PRECISION: bfloat16
           where the CPU has it); `model_float32` the same in float32
  decode   decoding and preprocessing alone, with the pipeline's own function and threads
  bound    1 / (1/model + 1/decode): the machine's rate if nothing else cost anything
  service  a zip POSTed to the real API, scored by real worker processes, from the start of
           the POST to the last result committed
  folder   the same images named as a folder on the import volume (`{"folder": ...}`): no
           upload and no extraction, so service/folder shows what receiving and storing the
           zip costs
  small    `--small-jobs` one-image jobs sent at once by 4 clients, against `big`, one job of
           the same images: small/big is what scoring study by study costs
  stat     a one-image stat job sent while a 2,000-image routine job is being scored: seconds
           from its POST to its result
  fill     mean images per pass over the batch size, in the service, small and big runs
  naive    what tutorials do: full decode and resize, one `predict` per image, one INSERT and
           commit per result

Each figure is the median of `--runs` runs (min and max shown); decode, model and service are
measured in turn within each run, so drift of the machine's speed touches all three alike, and
each run's service/bound is shown too. Also: worker memory, and the time from the start of an
upload to its first result on a warm worker. Progress goes to stderr. Worker settings come
from the environment (PNEUMOSCAN_*), as in production. A JSON copy goes to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    cpu_model,
    origres_images,
    service_env,
    write_results,
)
from service import Service, import_folder, study_zip

from core.config import Settings, load_settings
from core.imaging import load_model_input
from worker.model_cache import predict_padded
from worker.precision import load_in_precision, scoring_precision

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The worker's settings this bench passes on from its own environment, as in production.
WORKER_SETTINGS = (
    "PNEUMOSCAN_BATCH_SIZE",
    "PNEUMOSCAN_DECODE_THREADS",
    "PNEUMOSCAN_TF_INTRA_OP_THREADS",
    "PNEUMOSCAN_TF_INTER_OP_THREADS",
    "PNEUMOSCAN_WORKER_CONCURRENCY",
    "PNEUMOSCAN_WORKER_POOL",
    "PNEUMOSCAN_MIXED_PRECISION",
    "PNEUMOSCAN_SCORING_PRECISION",
    "PNEUMOSCAN_BATCH_WAIT_MS",
    "PNEUMOSCAN_EARLY_INGEST_MB_PER_S",
)


def step(what: str) -> None:
    """Progress on stderr: a full run takes minutes."""
    print(f"[{datetime.now():%H:%M:%S}] {what}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def measure_decode(paths: list[Path], threads: int, size: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: load_model_input(p, size, 10**9), paths))
    return len(paths) / (time.perf_counter() - started)


def measure_model(network: Any, inputs: np.ndarray, batch: int) -> float:
    started = time.perf_counter()
    predict_padded(network, inputs, batch)
    return len(inputs) / (time.perf_counter() - started)


def measure_naive(model_path: Path, paths: list[Path], database: Path) -> float:
    """Per image: full decode and resize, `model.predict` on one image, one INSERT, one commit."""
    import sqlite3

    import keras
    from PIL import Image

    network = keras.models.load_model(model_path, compile=False)
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE IF NOT EXISTS results (path TEXT, probability REAL)")
    network.predict(np.zeros((1, 75, 75, 3), np.float32), verbose=0)  # build, trace
    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((75, 75)), dtype=np.float32)
        probability = float(network.predict(pixels[np.newaxis], verbose=0)[0, 0])
        connection.execute("INSERT INTO results VALUES (?, ?)", (str(path), probability))
        connection.commit()
    rate = len(paths) / (time.perf_counter() - started)
    connection.close()
    return rate


@dataclass
class Measured:
    """Every run's raw figures, in the order they were taken."""

    decode: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    model_float32: list[float] = field(default_factory=list)
    service: list[dict[str, float]] = field(default_factory=list)
    folder: list[dict[str, float]] = field(default_factory=list)
    small: list[dict[str, float]] = field(default_factory=list)
    big: list[dict[str, float]] = field(default_factory=list)
    stat: list[dict[str, float]] = field(default_factory=list)
    fill: dict[str, list[float]] = field(default_factory=dict)
    naive: list[float] = field(default_factory=list)
    rss_total_mb: float = 0.0
    rss_process_mb: float = 0.0


def measure(
    args: argparse.Namespace, home: Path, env: dict[str, str], settings: Settings
) -> Measured:
    """Decode, model, service, folder, small, big and stat in turn, `args.runs` times, then
    the naive pipeline."""
    import keras

    from training.model import make_model

    paths, size, batch = origres_images(), 75, settings.batch_size
    prefork = settings.worker_pool == "prefork"
    decode_threads = settings.decode_threads * (settings.worker_concurrency if prefork else 1)
    model_path = home / "inception_resnet_v2.keras"
    make_model("inception_resnet_v2", size).save(model_path)
    sample = [paths[i % len(paths)] for i in range(args.images)]
    inputs = np.stack([load_model_input(p, size, 10**9) for p in paths]).astype(np.float32)
    inputs = np.concatenate([inputs] * (args.images // len(paths) + 1))[: args.images]
    archive = study_zip(paths, args.images, home / "study.zip")
    folder = import_folder(archive, Path(env["PNEUMOSCAN_IMPORT_ROOTS"]))
    warm = study_zip(paths, batch * settings.worker_concurrency * 2, home / "warm.zip")
    singles = [paths[i % len(paths)] for i in range(args.small_jobs)]
    big = study_zip(paths, args.small_jobs, home / "big.zip")
    backlog = study_zip(paths, 2000, home / "backlog.zip")
    precision = scoring_precision(settings.scoring_precision, settings.device)

    step("starting api and worker")
    service, measured = Service(home, env, model_path, args.port), Measured()
    try:
        service.score(warm)  # warm: the model loaded and traced in each worker process
        network = keras.models.load_model(model_path, compile=False)
        scoring = load_in_precision(model_path, precision)
        for each in (network, scoring):
            predict_padded(each, inputs[:batch], batch)  # trace the one batch shape
        # Interleaved, so that each run's figures share the same minutes: this VM's speed
        # drifts by 10-20 % from one minute to the next.
        for run in range(args.runs):
            step(f"run {run + 1}/{args.runs}: decode, model, service, folder, small, big, stat")
            measured.decode.append(measure_decode(sample, decode_threads, size))
            measured.model.append(measure_model(scoring, inputs, batch))
            measured.model_float32.append(measure_model(network, inputs, batch))
            for name, work in (
                ("service", lambda: service.score(archive)),
                ("folder", lambda: service.score_folder(folder)),
                ("small", lambda: service.score_small(singles)),
                ("big", lambda: service.score(big)),
            ):
                since = datetime.now(UTC)
                getattr(measured, name).append(work())
                measured.fill.setdefault(name, []).append(service.fill(since))
            measured.stat.append(service.stat_behind(backlog, paths[run % len(paths)]))
        del network, scoring
    finally:
        service.close()
    measured.rss_total_mb, measured.rss_process_mb = service.rss_total, service.rss_process
    step(f"naive ({args.naive_images} images per run)")
    for _ in range(args.runs):
        naive_paths = paths[: args.naive_images]
        measured.naive.append(measure_naive(model_path, naive_paths, home / "naive.db"))
    return measured


def rates(runs: list[dict[str, float]]) -> list[float]:
    return [run["images"] / run["seconds"] for run in runs]


def figures_of(measured: Measured, args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The figures printed and written: medians, ratios, each run in full."""
    model, decode = statistics.median(measured.model), statistics.median(measured.decode)
    bound = 1 / (1 / model + 1 / decode)
    service, folder = rates(measured.service), rates(measured.folder)

    def per_run(served: list[float]) -> list[float]:
        """Each run's rate against the bound of its own decode and model figures."""
        pairs = zip(served, measured.model, measured.decode, strict=True)
        return [round(s / (1 / (1 / m + 1 / d)), 3) for s, m, d in pairs]

    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, {cpu_model()}, {os.uname().machine}",
        "images": args.images,
        "settings": {
            "batch_size": settings.batch_size,
            "worker_pool": settings.worker_pool,
            "worker_concurrency": settings.worker_concurrency,
            "decode_threads": settings.decode_threads,
            "tf_intra_op_threads": settings.tf_intra_op_threads,
            "tf_inter_op_threads": settings.tf_inter_op_threads,
            "mixed_precision": settings.mixed_precision,
            "database": "postgresql" if args.database_url else "sqlite",
            "broker": "redis" if args.broker_url else "filesystem",
        },
        "precision": measured_precision(settings),
        "model": summary(measured.model),
        "model_float32": summary(measured.model_float32),
        "decode": summary(measured.decode),
        "bound": round(bound, 1),
        "service": summary(service),
        "folder": summary(folder),
        "naive": summary(measured.naive),
        "service_over_bound": round(statistics.median(service) / bound, 3),
        "service_over_bound_per_run": per_run(service),
        "folder_over_bound": round(statistics.median(folder) / bound, 3),
        "folder_over_bound_per_run": per_run(folder),
        "small_jobs": args.small_jobs,
        "small": summary(rates(measured.small)),
        "big": summary(rates(measured.big)),
        "small_over_big_per_run": [
            round(s["images"] / s["seconds"] / (b["images"] / b["seconds"]), 3)
            for s, b in zip(measured.small, measured.big, strict=True)
        ],
        "small_posts_seconds": summary([run["posts_seconds"] for run in measured.small]),
        "big_seconds": summary([run["seconds"] for run in measured.big]),
        "stat_seconds": summary([run["seconds"] for run in measured.stat]),
        "fill": {
            name: round(statistics.median(values), 3) for name, values in measured.fill.items()
        },
        "service_over_naive": round(
            statistics.median(service) / statistics.median(measured.naive), 1
        ),
        "first_result_seconds": summary([run["first_result_seconds"] for run in measured.service]),
        "phases_seconds": {
            phase: summary([run[f"{phase}_seconds"] for run in measured.service])["median"]
            for phase in ("upload", "running", "after_upload")
        },
        # Each run in full: where a slow run lost its time.
        "runs": [
            {
                "decode": round(d, 1),
                "model": round(m, 1),
                **{key: round(value, 2) for key, value in run.items()},
                "folder_seconds": round(folder_run["seconds"], 2),
            }
            for d, m, run, folder_run in zip(
                measured.decode, measured.model, measured.service, measured.folder, strict=True
            )
        ],
        "worker_rss_mb": {
            "total": round(measured.rss_total_mb),
            "largest_process": round(measured.rss_process_mb),
        },
    }


def measured_precision(settings: Settings) -> str:
    return scoring_precision(settings.scoring_precision, settings.device)


def report(figures: dict[str, Any]) -> None:
    print(f"machine           {figures['machine']}")
    print(
        f"images            {figures['images']} (origres repeated), "
        f"batch {figures['settings']['batch_size']}"
    )
    print(f"precision         {figures['precision']} (the service's and `model`'s)")
    for name in ("model", "model_float32", "decode", "service", "folder", "small", "big", "naive"):
        f = figures[name]
        print(f"{name:17} {f['median']:7.1f} images/s  (min {f['min']}, max {f['max']})")
    print(f"bound             {figures['bound']:7.1f} images/s")
    phases = figures["phases_seconds"]
    print(
        f"service phases    upload {phases['upload']} s, job running after "
        f"{phases['running']} s, last result {phases['after_upload']} s after the upload "
        "(medians, from the start of the POST)"
    )
    for name in ("service", "folder"):
        print(
            f"{name + '/bound':17} {figures[f'{name}_over_bound']:7.3f}  (each run against its "
            f"own bound: {', '.join(map(str, figures[f'{name}_over_bound_per_run']))})"
        )
    small_big = figures["small_over_big_per_run"]
    print(
        f"small/big         {statistics.median(small_big):7.3f}  ({figures['small_jobs']} "
        f"one-image jobs against one job of them; each run: {', '.join(map(str, small_big))})"
    )
    print(
        f"small's POSTs     {figures['small_posts_seconds']['median']:7.2f} s for the API to take "
        f"them in; big took {figures['big_seconds']['median']} s from its POST to its last result"
    )
    stat = figures["stat_seconds"]
    print(
        f"stat behind 2000  {stat['median']:7.2f} s from its POST to its result "
        f"(min {stat['min']}, max {stat['max']})"
    )
    fills = ", ".join(f"{name} {value}" for name, value in figures["fill"].items())
    print(f"pass fill         {fills}")
    print(f"service/naive     {figures['service_over_naive']:7.1f}")
    print(
        f"first result      {figures['first_result_seconds']['median']:7.1f} s after upload began"
    )
    print(
        f"worker RSS        {figures['worker_rss_mb']['total']} MB in all, "
        f"{figures['worker_rss_mb']['largest_process']} MB largest process"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--naive-images", type=int, default=100)
    parser.add_argument("--small-jobs", type=int, default=128)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--broker-url", default="")
    parser.add_argument("--port", type=int, default=8768)
    args = parser.parse_args()

    home, env = service_env(
        "throughput",
        args.port,
        args.database_url,
        args.broker_url,
        keep=WORKER_SETTINGS,
        max_upload_mb="8192",
    )
    env["PNEUMOSCAN_IMPORT_ROOTS"] = str(home / "import")
    env.setdefault("PNEUMOSCAN_DATABASE_URL", f"sqlite:///{home / 'pneumoscan.db'}")
    settings = load_settings(
        **{k[11:].lower(): v for k, v in env.items() if k.startswith("PNEUMOSCAN_")}
    )
    figures = figures_of(measure(args, home, env, settings), args, settings)
    report(figures)
    write_results("throughput", figures)


if __name__ == "__main__":
    main()
