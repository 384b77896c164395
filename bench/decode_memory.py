"""Peak memory of decoding one image at the pixel limit, per format, each in a fresh process.

    .venv/bin/python bench/decode_memory.py [--pixels N]

A worker decodes up to PNEUMOSCAN_DECODE_THREADS images at once, so the largest image of the
worst format, times the threads, is what decoding can add to a worker's resident memory on
top of its model. The figures (MB and bytes per pixel of the process's peak resident-set
growth) go to stdout and bench/results/decode_memory.json; docs/performance.md quotes them.

`--probe PATH FORMAT` decodes one file and prints {"peak_mb": ...}: the measurement itself,
used by the runs above and by tests/unit/test_decode_memory.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import REPO, write_results
from PIL import Image

from core.config import Settings
from core.imaging import DICOM, JPEG, PNG


def probe(path: Path, fmt: str) -> dict[str, float]:
    """Decode `path` here, as a worker does, and report how far the peak RSS grew."""
    from core.imaging import configure_pillow, decode_image

    configure_pillow(10**10)
    before = _high_water_kib()
    decode_image(path, fmt, 75, 10**10)
    return {"peak_mb": (_high_water_kib() - before) / 1024}


def _high_water_kib() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: that survives exec, so a
    child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_decode_mb(path: Path, fmt: str) -> float:
    """`probe` in a fresh interpreter, so nothing decoded before inflates the peak."""
    out = subprocess.run(
        [sys.executable, __file__, "--probe", str(path), fmt],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    return float(json.loads(out.splitlines()[-1])["peak_mb"])


def write_samples(folder: Path, side: int) -> dict[str, tuple[Path, str]]:
    """Noise images `side` x `side` (noise: no format can shrink it to nothing)."""
    from tests.dicoms import dataset, encode

    wide = np.random.default_rng(0).integers(0, 65535, (side, side), dtype=np.uint16)
    narrow = (wide >> 8).astype(np.uint8)
    samples = {
        "JPEG 8-bit": (folder / "gray.jpeg", JPEG),
        "PNG 8-bit": (folder / "gray.png", PNG),
        "PNG RGB": (folder / "rgb.png", PNG),
        "PNG 16-bit": (folder / "wide.png", PNG),
        "DICOM 16-bit": (folder / "wide.dcm", DICOM),
    }
    Image.fromarray(narrow).save(samples["JPEG 8-bit"][0], quality=90)
    Image.fromarray(narrow).save(samples["PNG 8-bit"][0], compress_level=1)
    Image.fromarray(narrow).convert("RGB").save(samples["PNG RGB"][0], compress_level=1)
    Image.fromarray(wide).save(samples["PNG 16-bit"][0], compress_level=1)
    samples["DICOM 16-bit"][0].write_bytes(encode(dataset(wide / 65535.0, bits=16)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe", nargs=2, metavar=("PATH", "FORMAT"))
    parser.add_argument(
        "--pixels", type=int, default=Settings.model_fields["max_image_pixels"].default
    )
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(Path(args.probe[0]), args.probe[1])))
        return
    side = int(args.pixels**0.5)
    threads = Settings.model_fields["decode_threads"].default
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, fmt) in write_samples(Path(tmp), side).items():
            peak = peak_decode_mb(path, fmt)
            per_pixel = round(peak * 2**20 / side**2, 1)
            figures[name] = {"peak_mb": round(peak), "bytes_per_pixel": per_pixel}
            print(f"{name:14} {side}x{side}: peak +{peak:7.0f} MB ({per_pixel} B/pixel)")
    worst = max(f["peak_mb"] for f in figures.values())
    print(f"worst case with {threads} decode threads at once: +{worst * threads:.0f} MB per worker")
    write_results(
        "decode_memory",
        {"pixels": side * side, "decode_threads": threads, "formats": figures},
    )


if __name__ == "__main__":
    main()
