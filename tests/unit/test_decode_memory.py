"""Decoding a wide image needs a few bytes a pixel, not the whole image in float64 several times
over: the default pixel limit times the decode threads is what docs/performance.md promises a
worker survives (bench/decode_memory.py measures it at the limit, with this same probe)."""

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import REPO

SIDE = 2000  # 4 M pixels: large enough that the interpreter's own noise is a few per cent
BYTES_PER_PIXEL = 12  # measured 7-8; before decoding in row blocks, 27 (PNG) and 35 (DICOM)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module("decode_memory")
    finally:
        sys.path.remove(str(REPO / "bench"))


@pytest.mark.parametrize("kind", ["PNG 16-bit", "DICOM 16-bit"])
def test_a_sixteen_bit_image_decodes_in_a_few_bytes_a_pixel(
    bench: ModuleType, tmp_path: Path, kind: str
) -> None:
    path, fmt = bench.write_samples(tmp_path, SIDE)[kind]
    assert bench.peak_decode_mb(path, fmt) * 2**20 / SIDE**2 < BYTES_PER_PIXEL
