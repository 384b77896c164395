"""The stressed validation: every change is deterministic, really changes the image, and all
changes keep the same images in the same order."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.imaging import JPEG, Preprocessing
from tests.images import chest_like, jpeg_bytes, truncated_jpeg
from training.data import Sample
from training.stress import CHANGES, mixed, stressed_arrays


@pytest.mark.parametrize("name", list(CHANGES))
def test_each_change_is_deterministic_keeps_the_size_and_changes_the_pixels(name: str) -> None:
    image = chest_like(112)
    once, twice = CHANGES[name](image), CHANGES[name](image.copy())
    assert once.size == image.size
    assert once.mode == "L"
    np.testing.assert_array_equal(np.asarray(once), np.asarray(twice))
    difference = np.abs(np.asarray(once, dtype=int) - np.asarray(image, dtype=int)).mean()
    assert difference > 1.0, f"{name} barely changes the image"


def test_the_changes_go_the_way_their_names_say() -> None:
    image = chest_like(112)
    pixels = np.asarray(image, dtype=float)

    def after(name: str) -> np.ndarray:
        return np.asarray(CHANGES[name](image), dtype=float)

    assert after("gamma 0.6").mean() > pixels.mean() > after("gamma 1.6").mean()
    assert after("contrast -40%").std() < pixels.std() < after("contrast +40%").std()
    zoomed_out = after("zoom 0.8")
    assert zoomed_out[:5].max() == 0  # a black band where the wider field of view shows
    assert np.abs(np.diff(after("blur"), axis=1)).mean() < np.abs(np.diff(pixels, axis=1)).mean()


def write_samples(tmp_path: Path, count: int) -> list[Sample]:
    samples = []
    for index in range(count):
        path = tmp_path / f"person{index}_virus_{index}.jpeg"
        path.write_bytes(jpeg_bytes(chest_like(224, seed=index)))
        samples.append(Sample(path, index % 2, f"person{index}", f"{index:064d}", format=JPEG))
    return samples


def test_stressed_arrays_hold_the_same_images_in_the_same_order_under_every_change(
    tmp_path: Path,
) -> None:
    samples = write_samples(tmp_path, 5)
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(truncated_jpeg())
    samples.insert(2, Sample(broken, 1, "broken", "f" * 64, format=JPEG))
    stressed = stressed_arrays(samples, 75, 2, 10**8, Preprocessing())
    assert list(stressed) == list(CHANGES)
    kept = [s for s in samples if s.patient != "broken"]
    for arrays in stressed.values():
        assert arrays.x.shape == (5, 75, 75, 3)
        assert arrays.x.dtype == np.uint8
        np.testing.assert_array_equal(arrays.y, [s.label for s in kept])
        assert list(arrays.groups) == [s.patient for s in kept]
    again = stressed_arrays(samples, 75, 2, 10**8, Preprocessing())
    for name in CHANGES:
        np.testing.assert_array_equal(stressed[name].x, again[name].x)


def test_stressed_images_are_preprocessed_with_the_versions_recipe(tmp_path: Path) -> None:
    samples = write_samples(tmp_path, 2)
    equalised = stressed_arrays(samples, 75, 1, 10**8, Preprocessing(equalize=True))
    squashed = stressed_arrays(samples, 75, 1, 10**8, Preprocessing())
    # Equalisation undoes most of a gamma change; squashing keeps it.
    dark = np.abs(squashed["gamma 1.6"].x.astype(int) - squashed["gamma 0.6"].x).mean()
    flat = np.abs(equalised["gamma 1.6"].x.astype(int) - equalised["gamma 0.6"].x).mean()
    assert flat < 0.3 * dark


def test_the_mixed_set_takes_image_i_from_change_i_modulo_the_changes(tmp_path: Path) -> None:
    samples = write_samples(tmp_path, len(CHANGES) + 2)
    stressed = stressed_arrays(samples, 75, 2, 10**8)
    one_each = mixed(stressed)
    names = list(CHANGES)
    assert one_each.x.shape == stressed[names[0]].x.shape
    for index in range(len(samples)):
        expected = stressed[names[index % len(names)]].x[index]
        np.testing.assert_array_equal(one_each.x[index], expected)


def test_noise_is_seeded_by_the_image_so_two_images_get_different_noise() -> None:
    flat = Image.new("L", (64, 64), 128)
    other = Image.new("L", (64, 64), 129)
    noisy, other_noisy = CHANGES["noise"](flat), CHANGES["noise"](other)
    residual = np.asarray(noisy, dtype=int) - 128
    other_residual = np.asarray(other_noisy, dtype=int) - 129
    assert residual.std() > 5
    assert not np.array_equal(residual, other_residual)


def test_the_changes_training_has_seen_the_kind_of_are_named_changes() -> None:
    from core.choices import Augmentation
    from training.stress import seen_kinds

    for augment in Augmentation:
        assert seen_kinds(augment) <= set(CHANGES), augment
    assert seen_kinds("none") == frozenset()
    # The resolution jitter adds exactly the softening changes to what `robust` has seen.
    assert seen_kinds("robust-resolution") - seen_kinds("robust") == {"blur", "down-up 1/4"}
