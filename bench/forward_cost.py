"""What a model's forward pass costs against today's: ensembles, test-time views, input size.

    .venv/bin/python bench/forward_cost.py [--rounds 3] [--images 512] [--training]

Every variant is a real InceptionResNetV2 (random weights: speed does not depend on them),
called at the scoring batch size (64) on the same padded batches as the workers call it.
The variants are timed in turn within each round, so the machine's drift touches them alike;
the figure to read is each variant's time per image over the single 75 px model's, the
median over the rounds. `--training` also times training steps (batch 100, SGD) of the
single model at 75 and at 128 px, likewise in turn. Results go to
bench/results/forward-cost-*.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
from common import cpu_model, write_results

BATCH = 64
TRAIN_BATCH = 100
VARIANTS = {
    "single 75 px (today)": {"size": 75, "members": 1, "views": 1},
    "ensemble of 2, 75 px": {"size": 75, "members": 2, "views": 1},
    "6 test-time views, 75 px": {"size": 75, "members": 1, "views": 6},
    "single 128 px": {"size": 128, "members": 1, "views": 1},
}


def build(size: int, members: int, views: int) -> Any:
    from training.model import averaged, make_model

    networks = [make_model("inception_resnet_v2", size) for _ in range(members)]
    if members == 1 and views == 1:
        return networks[0]
    return averaged(networks, views)


def seconds_per_image(network: Any, inputs: np.ndarray) -> float:
    from worker.model_cache import predict_padded

    started = time.perf_counter()
    predict_padded(network, inputs, BATCH)
    return (time.perf_counter() - started) / len(inputs)


def training_seconds_per_image(network: Any, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    started = time.perf_counter()
    for step in range(steps):
        network.train_on_batch(x[step * TRAIN_BATCH : (step + 1) * TRAIN_BATCH], y[:TRAIN_BATCH])
    return (time.perf_counter() - started) / (steps * TRAIN_BATCH)


def measure_training(rounds: int, steps: int = 4) -> dict[str, float]:
    """Seconds per training image at 75 and 128 px, the rounds interleaved; the median."""
    from training.model import compile_model, make_model

    rng = np.random.default_rng(1)
    networks, data = {}, {}
    for size in (75, 128):
        networks[size] = make_model("inception_resnet_v2", size)
        compile_model(networks[size])
        x = rng.integers(0, 256, (steps * TRAIN_BATCH, size, size, 3)).astype(np.float32)
        data[size] = (x, rng.integers(0, 2, TRAIN_BATCH).astype(np.float32))
        training_seconds_per_image(networks[size], *data[size], steps=1)  # compile
        print(f"compiled training at {size} px", flush=True)
    times: dict[int, list[float]] = {75: [], 128: []}
    for _ in range(rounds):
        for size in (75, 128):
            times[size].append(training_seconds_per_image(networks[size], *data[size], steps))
    return {f"{size} px": statistics.median(t) for size, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--training", action="store_true")
    args = parser.parse_args()
    from worker.model_cache import configure_tensorflow

    configure_tensorflow(0, 0)
    rng = np.random.default_rng(0)
    models, inputs = {}, {}
    for name, shape in VARIANTS.items():
        models[name] = build(**shape)
        size = shape["size"]
        inputs[name] = rng.integers(0, 256, (args.images, size, size, 3)).astype(np.float32)
        seconds_per_image(models[name], inputs[name][:BATCH])  # trace the batch shape
        print(f"built {name}", flush=True)
    timings: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_number in range(args.rounds):
        for name in VARIANTS:
            timings[name].append(seconds_per_image(models[name], inputs[name]))
        print(f"round {round_number + 1}/{args.rounds} done", flush=True)
    base = "single 75 px (today)"
    ratios = {
        name: statistics.median(t / b for t, b in zip(times, timings[base], strict=True))
        for name, times in timings.items()
    }
    figures = {
        "machine": f"{os.cpu_count()} CPUs, {cpu_model()}",
        "batch": BATCH,
        "images": args.images,
        "rounds": args.rounds,
        "images_per_second": {n: round(1 / statistics.median(t), 1) for n, t in timings.items()},
        "cost_vs_today": {name: round(ratio, 2) for name, ratio in ratios.items()},
        "seconds_per_image": timings,
    }
    for name in VARIANTS:
        print(
            f"{name:<28} {figures['images_per_second'][name]:>7.1f} images/s  "
            f"{figures['cost_vs_today'][name]:>5.2f}x today's forward pass"
        )
    if args.training:
        training = measure_training(args.rounds)
        figures["training_images_per_second"] = {k: round(1 / v, 1) for k, v in training.items()}
        ratio = training["128 px"] / training["75 px"]
        figures["training_cost_128_vs_75"] = round(ratio, 2)
        print(f"training: {figures['training_images_per_second']} images/s, 128 px {ratio:.2f}x")
    write_results("forward-cost", figures)


if __name__ == "__main__":
    main()
