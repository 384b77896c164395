"""Recognising images by their bytes and turning them into model input."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.imaging import DICOM, JPEG, PNG, ImageDecodeError, load_model_input, sniff_format
from tests.images import gradient, jpeg_bytes, png_bytes, truncated_jpeg

MAX_PIXELS = 50_000_000


def write(tmp_path: Path, data: bytes, name: str = "image.jpeg") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (jpeg_bytes()[:132], JPEG),
        (png_bytes()[:132], PNG),
        (bytes(128) + b"DICM" + bytes(10), DICOM),
        (b"this is text named scan.jpeg", None),
        (b"", None),
    ],
)
def test_format_is_recognised_by_bytes_not_name(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


def test_model_input_is_square_uint8_with_three_equal_channels(tmp_path: Path) -> None:
    pixels = load_model_input(write(tmp_path, jpeg_bytes(gradient((640, 480)))), 75, MAX_PIXELS)
    assert pixels.shape == (75, 75, 3)
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    assert pixels.min() < 40
    assert pixels.max() > 200


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "CMYK", "LA"])
def test_colour_modes_become_the_same_grayscale(tmp_path: Path, mode: str) -> None:
    reference = load_model_input(write(tmp_path, png_bytes(gradient()), "g.png"), 75, MAX_PIXELS)
    converted = gradient().convert(mode)
    buffer = io.BytesIO()
    converted.save(buffer, format="JPEG" if mode == "CMYK" else "PNG")
    pixels = load_model_input(write(tmp_path, buffer.getvalue(), f"c-{mode}"), 75, MAX_PIXELS)
    assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 4


def test_sixteen_bit_png_uses_its_full_range(tmp_path: Path) -> None:
    wide = (np.linspace(0, 65535, 100 * 100).reshape(100, 100)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    pixels = load_model_input(write(tmp_path, buffer.getvalue(), "w.png"), 75, MAX_PIXELS)
    assert pixels.min() <= 5
    assert pixels.max() >= 250


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (truncated_jpeg(), "could not decode"),
        (b"\xff\xd8\xff" + b"garbage" * 10, "not a readable image"),
        (b"", "not a readable image"),
    ],
)
def test_unreadable_images_raise_a_decode_error(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        load_model_input(write(tmp_path, data), 75, MAX_PIXELS)


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path: Path) -> None:
    path = write(tmp_path, png_bytes(gradient((300, 300))), "big.png")
    with pytest.raises(ImageDecodeError, match="over the limit"):
        load_model_input(path, 75, max_pixels=300 * 299)
