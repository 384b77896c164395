"""Patient-grouped splits, the write-up's augmentation, class weights."""

from pathlib import Path

import numpy as np
import pytest

from core.imaging import JPEG, PNG
from core.storage import Span
from tests.images import gradient, jpeg_bytes, png_bytes
from training.data import (
    Arrays,
    Sample,
    class_weights,
    exclude_overlap,
    load_arrays,
    patient_of,
    read_labelled_folder,
    split_by_patient,
    with_threshold_copies,
)


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1004_bacteria_2935.jpeg", "person1004"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0629-0001-0002.jpeg", "IM-0629"),
        ("NORMAL2-IM-1345-0001.jpeg", "NORMAL2-IM-1345"),
        ("scan.png", "fallback"),
    ],
)
def test_patient_is_read_from_kermany_file_names(name: str, patient: str) -> None:
    assert patient_of(name, "fallback") == patient


def samples(n_patients: int, per_patient: int, label: int, prefix: str) -> list[Sample]:
    return [
        Sample(Path(f"{prefix}{p}_{i}.jpeg"), label, f"{prefix}{p}", f"{prefix}{p}-{i}")
        for p in range(n_patients)
        for i in range(per_patient)
    ]


def test_split_keeps_every_patient_on_one_side_and_each_class_on_both() -> None:
    data = samples(40, 3, 0, "n") + samples(60, 2, 1, "p")
    kept, held = split_by_patient(data, 0.2, "validation")
    assert not {s.patient for s in kept} & {s.patient for s in held}
    assert len(kept) + len(held) == len(data)
    for label, total in ((0, 120), (1, 120)):
        share = sum(s.label == label for s in held) / total
        assert 0.18 <= share <= 0.3


def test_split_is_the_same_every_run_and_differs_by_salt() -> None:
    data = samples(50, 1, 0, "n") + samples(50, 1, 1, "p")
    first = split_by_patient(data, 0.2, "holdout")[1]
    again = split_by_patient(list(reversed(data)), 0.2, "holdout")[1]
    other = split_by_patient(data, 0.2, "validation")[1]
    assert {s.patient for s in first} == {s.patient for s in again}
    assert {s.patient for s in first} != {s.patient for s in other}


def test_byte_identical_images_of_two_patients_stay_together() -> None:
    data = samples(30, 1, 1, "p")
    twin = Sample(Path("twin.jpeg"), 1, "someone-else", data[0].sha256)
    for salt in map(str, range(20)):
        _, held = split_by_patient([*data, twin], 0.3, salt)
        assert (twin in held) == (data[0] in held)


def test_training_samples_overlapping_the_holdout_are_dropped() -> None:
    holdout = [Sample(Path("h.jpeg"), 1, "person1", "aaa")]
    pool = [
        Sample(Path("a.jpeg"), 1, "person1", "bbb"),  # same patient
        Sample(Path("b.jpeg"), 0, "person2", "aaa"),  # same bytes
        Sample(Path("c.jpeg"), 0, "person3", "ccc"),
    ]
    assert [s.path.name for s in exclude_overlap(pool, holdout)] == ["c.jpeg"]


def test_threshold_augmentation_adds_a_copy_with_dark_pixels_zeroed() -> None:
    x = np.array([[[[10, 10, 10], [30, 30, 30]]]], dtype=np.uint8)
    out = with_threshold_copies(Arrays(x, np.array([1.0], np.float32)))
    assert out.x.shape[0] == 2
    assert out.y.tolist() == [1.0, 1.0]
    assert out.x[0].tolist() == x[0].tolist()
    assert out.x[1].tolist() == [[[0, 0, 0], [30, 30, 30]]]


def test_class_weights_balance_the_classes() -> None:
    weights = class_weights(np.array([0] * 25 + [1] * 75, dtype=np.float32))
    assert weights[0] * 25 == pytest.approx(weights[1] * 75)


def test_kermany_train_split_has_no_patient_across_holdout_validation_and_train(
    shared_data: Path,
) -> None:
    reference = read_labelled_folder(shared_data / "kermany224")
    assert len(reference) == 5216
    pool, holdout = split_by_patient(reference, 0.15, "holdout")
    train, validation = split_by_patient(pool, 0.15, "validation")
    sides = [train, validation, holdout]
    patients = [{s.patient for s in side} for side in sides]
    hashes = [{s.sha256 for s in side} for side in sides]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not patients[i] & patients[j]
            assert not hashes[i] & hashes[j]
    assert 0.12 < len(holdout) / len(reference) < 0.18


def test_a_sample_inside_a_kept_upload_loads_as_its_own_file_would(tmp_path: Path) -> None:
    """Training reads an image scored in place from its span of the kept upload."""
    images = [jpeg_bytes(gradient((320, 240))), png_bytes(gradient((200, 260)))]
    kept, spans, files = tmp_path / "upload.zip", [], []
    with kept.open("wb") as sink:
        for index, data in enumerate(images):
            sink.write(b"header" * 7)
            spans.append(Span(sink.tell(), len(data)))
            sink.write(data)
            files.append(tmp_path / f"{index}.img")
            files[-1].write_bytes(data)
    in_place = [
        Sample(kept, 1, f"p{i}", f"h{i}", format=fmt, span=span)
        for i, (fmt, span) in enumerate(zip([JPEG, PNG], spans, strict=True))
    ]
    copied = [
        Sample(path, 1, f"p{i}", f"h{i}", format=fmt)
        for i, (fmt, path) in enumerate(zip([JPEG, PNG], files, strict=True))
    ]
    (a, failed_a), (b, failed_b) = (load_arrays(s, 75, 2, 10**8) for s in (in_place, copied))
    assert failed_a == failed_b == 0
    assert np.array_equal(a.x, b.x)
    assert a.x.std() > 0  # real pixels, not a blank
