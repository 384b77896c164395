"""Recognising images by their bytes and turning them into model input."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.imaging import (
    DICOM,
    JPEG,
    PNG,
    ImageDecodeError,
    Preprocessing,
    decode_for_model,
    decode_image,
    load_model_input,
    prepare,
    sniff_format,
)
from tests.images import chest_like, gradient, jpeg_bytes, png_bytes, truncated_jpeg

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
        (b"\xff\xd8\xff\xe0".ljust(128, b"\0") + b"DICM", DICOM),
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


@pytest.mark.parametrize(
    ("name", "recipe"),
    [
        ("squash", Preprocessing()),
        ("equalize", Preprocessing(equalize=True)),
        ("trim8", Preprocessing(trim=0.08)),
        ("trim8+equalize", Preprocessing(trim=0.08, equalize=True)),
    ],
)
def test_a_preprocessing_recipe_is_named_and_parsed_back(name: str, recipe: Preprocessing) -> None:
    assert recipe.name == name
    assert Preprocessing.parse(name) == recipe


@pytest.mark.parametrize("name", ["clahe", "trim", "trimx", "trim30", "equalize+sharpen"])
def test_an_unknown_preprocessing_name_is_refused_with_the_choices(name: str) -> None:
    with pytest.raises(ValueError, match="trim"):
        Preprocessing.parse(name)


def test_equalisation_makes_the_input_the_same_under_a_gamma_or_contrast_change() -> None:
    image = chest_like()
    darker = image.point([round(255 * (v / 255) ** 1.6) for v in range(256)])
    flatter = image.point([round(128 + (v - 128) * 0.6) for v in range(256)])
    equalize = Preprocessing(equalize=True)
    for changed in (darker, flatter):
        squashed = np.abs(prepare(changed, 75).astype(int) - prepare(image, 75)).mean()
        equalised = np.abs(
            prepare(changed, 75, equalize).astype(int) - prepare(image, 75, equalize)
        )
        assert squashed > 10
        assert equalised.mean() < 0.3 * squashed


def test_trimming_cuts_the_border_before_resizing() -> None:
    framed = np.full((200, 200), 255, np.uint8)  # a white film border 10 px wide
    framed[10:190, 10:190] = 60
    image = Image.fromarray(framed, mode="L")
    assert prepare(image, 75)[0, 0, 0] == 255
    assert prepare(image, 75, Preprocessing(trim=0.08)).max() == 60


def test_decoding_and_preprocessing_apart_give_the_scoring_input(tmp_path: Path) -> None:
    path = write(tmp_path, jpeg_bytes(chest_like(640)))
    recipe = Preprocessing(trim=0.05, equalize=True)
    decoded = decode_image(path, JPEG, 75, MAX_PIXELS)
    assert decoded.mode == "L"
    assert decoded.width < 640  # drafted: decoded at a reduced scale
    together = decode_for_model(path, JPEG, 75, MAX_PIXELS, recipe=recipe)
    np.testing.assert_array_equal(prepare(decoded, 75, recipe), together)


def test_equalisation_is_not_decided_by_a_black_frame_around_the_film(shared_data: Path) -> None:
    """A zoomed-out film (content shrunk, black around it) keeps the mapping of its lungs."""
    from PIL import ImageOps

    from training.stress import CHANGES

    def film_part(pixels: np.ndarray) -> np.ndarray:
        return pixels[11:101, 11:101].astype(int)  # where the shrunk film lies in 112 px

    ours, whole_histogram = [], []
    for path in sorted((shared_data / "kermany224" / "NORMAL").iterdir())[:20]:
        with Image.open(path) as opened:
            film = opened.convert("L").resize((112, 112))
        framed = CHANGES["zoom 0.8"](film)
        shrunk = film.resize((90, 90))
        expected = np.asarray(prepare(shrunk, 90, Preprocessing(equalize=True))[:, :, 0], int)
        got = film_part(prepare(framed, 112, Preprocessing(equalize=True))[:, :, 0])
        plain = film_part(np.asarray(ImageOps.equalize(framed)))
        ours.append(np.abs(got - expected).mean())
        whole_histogram.append(np.abs(plain - expected).mean())
    assert np.mean(ours) < 0.35 * np.mean(whole_histogram)
