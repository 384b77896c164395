"""A run's data: the reference folder and confirmed labels, split by patient into training,
validation and holdout, and decoded with the run's input size and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.config import Settings
from core.db import Database
from core.imaging import Preprocessing
from core.labels import count_labels, labelled_images, newest_label_time
from core.storage import Storage
from core.training_runs import TrainingParams
from training.data import (
    CLASSES,
    Arrays,
    Sample,
    class_counts,
    exclude_overlap,
    load_arrays,
    patient_of,
    read_labelled_folder,
    split_by_patient,
)
from training.stress import stressed_arrays

HOLDOUT_FRACTION = 0.15
VALIDATION_FRACTION = 0.15


@dataclass(frozen=True)
class Datasets:
    train: list[Sample]
    validation: list[Sample]
    holdout: list[Sample]
    holdout_source: str
    labels_used: int
    labels_until: datetime | None
    labels_set_aside: int = 0  # they contradict the reference label of the same bytes
    labels_left_out: int = 0  # over PNEUMOSCAN_MAX_TRAINING_LABELS: the oldest wait

    def summary(self) -> dict[str, Any]:
        return {
            "train": class_counts(self.train),
            "validation": class_counts(self.validation),
            "holdout": class_counts(self.holdout),
            "holdout_source": self.holdout_source,
            "confirmed_labels": self.labels_used,
            "confirmed_labels_set_aside": self.labels_set_aside,
            "confirmed_labels_left_out": self.labels_left_out,
            "patients": {
                "train": len({s.patient for s in self.train}),
                "validation": len({s.patient for s in self.validation}),
                "holdout": len({s.patient for s in self.holdout}),
            },
        }


def gather_datasets(db: Database, storage: Storage, settings: Settings, data_dir: Path) -> Datasets:
    """Reference folder plus confirmed labels, split by patient into train, validation, holdout."""
    reference = read_labelled_folder(data_dir)
    with db.session() as session:
        labelled = labelled_images(session, settings.max_training_labels)
        until, left_out = newest_label_time(session), count_labels(session) - len(labelled)
    confirmed = [
        Sample(
            storage.resolve(item.location),
            CLASSES.index(item.label),
            patient_of(Path(item.relative_path).name, f"file:{item.sha256}"),
            item.sha256,
            "label",
            item.format,
            item.span,
        )
        for item in labelled
        if storage.resolve(item.location).is_file()
    ]
    if settings.holdout_dir is not None:
        pool, holdout = reference, read_labelled_folder(settings.holdout_dir)
        source = str(settings.holdout_dir)
    else:
        pool, holdout = split_by_patient(reference, HOLDOUT_FRACTION, "holdout")
        source = f"{int(HOLDOUT_FRACTION * 100)} % of {data_dir} by patient"
    confirmed, set_aside = without_contradictions(confirmed, [*reference, *holdout])
    # A confirmed label that agrees with the reference stands in for the reference's copy.
    relabelled = {s.sha256 for s in confirmed}
    pool = exclude_overlap([s for s in pool if s.sha256 not in relabelled] + confirmed, holdout)
    train, validation = split_by_patient(pool, VALIDATION_FRACTION, "validation")
    datasets = Datasets(
        train, validation, holdout, source, len(confirmed), until, set_aside, left_out
    )
    for name in ("train", "validation", "holdout"):
        counts = class_counts(getattr(datasets, name))
        if min(counts.values()) == 0:
            raise ValueError(f"the {name} split lacks a class: {counts}; more data is needed")
    return datasets


def without_contradictions(
    confirmed: list[Sample], reference: list[Sample]
) -> tuple[list[Sample], int]:
    """The confirmed labels to train on, and how many were set aside: any label on bytes the
    reference labels otherwise, or that other confirmed labels call the other class. They stay
    recorded (a reviewer may be right), but one key cannot overturn the reference set, nor
    two reviewers' disagreement train the model either way."""
    classes: dict[str, set[int]] = {}
    for sample in [*reference, *confirmed]:
        classes.setdefault(sample.sha256, set()).add(sample.label)
    kept = [s for s in confirmed if len(classes[s.sha256]) == 1]
    return kept, len(confirmed) - len(kept)


def patients_of_split(reference: list[Sample], split: str) -> set[str] | None:
    """The patients of the reference folder a run puts in `split` (validation or holdout, as
    carved when no PNEUMOSCAN_HOLDOUT_DIR is set and before confirmed labels join), or None
    for all of them."""
    if split == "all":
        return None
    pool, holdout = split_by_patient(reference, HOLDOUT_FRACTION, "holdout")
    if split == "holdout":
        return {s.patient for s in holdout}
    if split == "validation":
        return {s.patient for s in split_by_patient(pool, VALIDATION_FRACTION, "validation")[1]}
    raise ValueError(f"unknown split {split!r}")


@dataclass(frozen=True)
class Splits:
    """The decoded splits of a run, each made with the run's input size and preprocessing."""

    train: Arrays
    validation: Arrays
    holdout: Arrays
    validation_stressed: dict[str, Arrays]
    holdout_stressed: dict[str, Arrays]


def load_splits(data: Datasets, params: TrainingParams, settings: Settings) -> Splits:
    recipe = Preprocessing.parse(params.preprocessing)
    decode = (params.input_size, settings.decode_threads, settings.max_image_pixels, recipe)
    train, validation, holdout = (
        load_arrays(part, *decode)[0] for part in (data.train, data.validation, data.holdout)
    )
    return Splits(
        train,
        validation,
        holdout,
        stressed_arrays(data.validation, *decode),
        stressed_arrays(data.holdout, *decode),
    )
