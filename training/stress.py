"""A stressed validation: the same labelled images under changes an acquisition can bring.

The official Kermany test split differs from the training split in time and mix, and every
model trained on the one calls healthy children of the other pneumonia. That split is kept
aside, so the shift is approximated here: each validation (or holdout) image is decoded as
scoring decodes it, changed in one way (exposure, contrast, field of view, sharpness, noise,
compression, resolution), then preprocessed by the version's own recipe. A model that holds
up under these changes has learned the lungs rather than the look of one hospital's films.

Every change is deterministic (the noise is seeded by the image itself), so two models, or two
runs, see exactly the same stressed images. `seen_kinds` names the changes whose kind a
training augmentation also applies (at other magnitudes), so a report can tell a change
training has seen the like of from one it never has.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageFilter

from core.imaging import (
    DEFAULT_PREPROCESSING,
    ImageDecodeError,
    Preprocessing,
    decode_image,
    prepare,
)
from training.data import Arrays, Sample

Change = Callable[[Image.Image], Image.Image]


def _gamma(value: float) -> Change:
    table = [round(255 * (level / 255) ** value) for level in range(256)]
    return lambda image: image.point(table)


def _contrast(factor: float) -> Change:
    def change(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32)
        mean = pixels.mean()
        return _from_float(mean + (pixels - mean) * factor)

    return change


def _zoom_out(scale: float) -> Change:
    """The content shrunk to `scale` of each side, centred on black: a wider field of view."""

    def change(image: Image.Image) -> Image.Image:
        width, height = image.size
        small = image.resize(
            (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR
        )
        canvas = Image.new("L", image.size, 0)
        canvas.paste(small, ((width - small.width) // 2, (height - small.height) // 2))
        return canvas

    return change


def _crop(fraction: float, left: float, top: float) -> Change:
    """A window of `fraction` of each side, its top-left corner at (`left`, `top`) of the
    margin that leaves, resized back: `left = top = 0.5` is a centred zoom."""

    def change(image: Image.Image) -> Image.Image:
        width, height = image.size
        w, h = round(width * fraction), round(height * fraction)
        x, y = round((width - w) * left), round((height - h) * top)
        return image.crop((x, y, x + w, y + h)).resize(image.size, Image.Resampling.BILINEAR)

    return change


def _blur(fraction: float) -> Change:
    return lambda image: image.filter(ImageFilter.GaussianBlur(fraction * image.width))


def _noise(sigma: float) -> Change:
    def change(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32)
        rng = np.random.default_rng(zlib.crc32(pixels.tobytes()))
        return _from_float(pixels + rng.normal(0.0, sigma, pixels.shape))

    return change


def _jpeg(quality: int) -> Change:
    def change(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        with Image.open(io.BytesIO(buffer.getvalue())) as again:
            return again.convert("L")

    return change


def _down_up(scale: float) -> Change:
    def change(image: Image.Image) -> Image.Image:
        width, height = image.size
        small = image.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))),
            Image.Resampling.BILINEAR,
        )
        return small.resize(image.size, Image.Resampling.BILINEAR)

    return change


def _from_float(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")


CHANGES: dict[str, Change] = {
    "gamma 0.6": _gamma(0.6),
    "gamma 1.6": _gamma(1.6),
    "contrast -40%": _contrast(0.6),
    "contrast +40%": _contrast(1.4),
    "zoom 0.8": _zoom_out(0.8),
    "zoom 1.2": _crop(1 / 1.2, 0.5, 0.5),
    "shifted crop": _crop(0.85, 1.0, 1.0),
    "blur": _blur(0.02),
    "noise": _noise(15.0),
    "jpeg q10": _jpeg(10),
    "down-up 1/4": _down_up(0.25),
}
# The changes of a kind a training augmentation applies, at other magnitudes: `robust` crops
# and changes exposure, `robust-resolution` also softens, `acquisition` also zooms out,
# `standard` zooms both ways, shifts and changes contrast.
RANDOM_CROP_LIKE = frozenset({"zoom 1.2", "shifted crop"})
INTENSITY_LIKE = frozenset({"gamma 0.6", "gamma 1.6", "contrast -40%", "contrast +40%"})
RESOLUTION_LIKE = frozenset({"blur", "down-up 1/4"})
_SEEN_KINDS = {
    "robust": RANDOM_CROP_LIKE | INTENSITY_LIKE,
    "robust-resolution": RANDOM_CROP_LIKE | INTENSITY_LIKE | RESOLUTION_LIKE,
    "standard": RANDOM_CROP_LIKE | {"zoom 0.8", "contrast -40%", "contrast +40%"},
}
_SEEN_KINDS["acquisition"] = _SEEN_KINDS["robust-resolution"] | {"zoom 0.8"}
_SEEN_KINDS["both"] = _SEEN_KINDS["standard"]


def seen_kinds(augment: str) -> frozenset[str]:
    """The changes whose kind the training augmentation `augment` applies, at other
    magnitudes: a report marks them, since training has seen their like."""
    return frozenset(_SEEN_KINDS.get(augment, ()))


def stressed_arrays(
    samples: Sequence[Sample],
    size: int,
    threads: int,
    max_pixels: int,
    recipe: Preprocessing = DEFAULT_PREPROCESSING,
    changes: Mapping[str, Change] = CHANGES,
) -> dict[str, Arrays]:
    """The samples under each change, decoded once each; images that do not decode are left
    out of every change alike, so all arrays hold the same images in the same order."""

    def one(sample: Sample) -> list[np.ndarray] | None:
        try:
            image = decode_image(sample.path, sample.format, size, max_pixels, sample.span)
        except ImageDecodeError:
            return None
        return [prepare(change(image), size, recipe) for change in changes.values()]

    with ThreadPoolExecutor(threads) as pool:
        decoded = list(pool.map(one, samples))
    kept = [(views, s) for views, s in zip(decoded, samples, strict=True) if views is not None]
    y = np.array([s.label for _, s in kept], dtype=np.float32)
    groups = np.array([s.patient for _, s in kept])
    shape = (0, size, size, 3)
    return {
        name: Arrays(
            np.stack([views[index] for views, _ in kept]) if kept else np.zeros(shape, np.uint8),
            y,
            groups,
        )
        for index, name in enumerate(changes)
    }


def mixed(stressed: Mapping[str, Arrays]) -> Arrays:
    """One array of the same images, image i under change i modulo the number of changes: a
    stressed set as large as the clean one, cheap enough to score after every epoch."""
    names = list(stressed)
    first = stressed[names[0]]
    picks = np.arange(len(first.y)) % len(names)
    x = (
        np.stack([stressed[names[pick]].x[i] for i, pick in enumerate(picks)])
        if len(picks)
        else first.x
    )
    return Arrays(x, first.y, first.groups)
