"""Measure the two costs of scoring on this machine: decoding and the model's forward pass.

    .venv/bin/python bench/pipeline_parts.py [--data ../shared/data/origres] [--batch 64] \
        [--recipes squash,equalize]

Prints images/s for the pipeline's decoding (Pillow draft mode into 75x75x3, in threads) with
each preprocessing recipe (the runs of the recipes interleaved) and for InceptionResNetV2's
batched forward pass (random weights, fixed padded batch shape). The bound uses the first
recipe. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core.imaging import Preprocessing, load_model_input

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def decode_rate(paths: list[Path], threads: int, size: int, recipe: Preprocessing) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: load_model_input(p, size, 10**9, None, recipe), paths))
    return len(paths) / (time.perf_counter() - started)


def model_rate(batch: int, batches: int, size: int) -> float:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("TF_THREADS", "2")))
    from training.model import make_model

    network = make_model("inception_resnet_v2", size)
    inputs = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3)).astype(np.float32)
    network.predict_on_batch(inputs)  # trace once
    started = time.perf_counter()
    for _ in range(batches):
        network.predict_on_batch(inputs)
    return batch * batches / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).parents[2] / "shared/data/origres"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recipes", default="squash,equalize", help="preprocessing recipes")
    args = parser.parse_args()
    paths = sorted(args.data.rglob("*.jpeg"))
    if not paths:
        raise SystemExit(f"no JPEGs under {args.data}")
    recipes = [Preprocessing.parse(name) for name in args.recipes.split(",")]
    rates: dict[str, list[float]] = {recipe.name: [] for recipe in recipes}
    for _ in range(args.runs):
        for recipe in recipes:
            rates[recipe.name].append(decode_rate(paths, args.threads, 75, recipe))
    detail = f"{len(paths)} images, {args.threads} threads"
    for name, runs in rates.items():
        print(f"decode  {statistics.median(runs):7.1f} images/s  ({detail}, {name})")
    decode = rates[recipes[0].name]
    model = [model_rate(args.batch, 5, 75) for _ in range(args.runs)]
    detail = f"batch {args.batch}, InceptionResNetV2 75x75"
    print(f"model   {statistics.median(model):7.1f} images/s  ({detail})")
    bound = 1 / (1 / statistics.median(decode) + 1 / statistics.median(model))
    print(f"bound   {bound:7.1f} images/s  (decode then model, nothing else)")


if __name__ == "__main__":
    main()
