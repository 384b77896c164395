"""Datasets: labelled folders and confirmed labels, patient-grouped splits, arrays, augmentation.

Patients are read from Kermany file names (`person123_bacteria_456.jpeg` -> `person123`,
`IM-0115-0001.jpeg` -> `IM-0115`, `NORMAL2-IM-1345-0001.jpeg` -> `NORMAL2-IM-1345`); any
other image is its own group. Splits are decided by hashing patient ids, so the same patient
lands on the same side in every run, and byte-identical images never straddle a split.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.imaging import (
    DEFAULT_PREPROCESSING,
    JPEG,
    ImageSource,
    Preprocessing,
    decode_batch,
    sniff_file,
)
from core.storage import Span, sha256_of

CLASSES = ("NORMAL", "PNEUMONIA")  # index = label: 0 normal, 1 pneumonia
PIXEL_FLOOR = 25  # the write-up's augmentation: a copy with darker pixels set to 0
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-"),
)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    patient: str
    sha256: str
    source: str = "reference"
    format: str = JPEG
    span: Span | None = None  # the image is these bytes of `path` (a kept upload)


@dataclass(frozen=True)
class Arrays:
    x: np.ndarray  # uint8, (n, size, size, 3)
    y: np.ndarray  # float32, (n,)
    groups: np.ndarray | None = None  # patient of each row, for resampling by patient


def patient_of(file_name: str, fallback: str) -> str:
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(file_name)
        if match:
            return match.group(1)
    return fallback


def read_labelled_folder(folder: Path) -> list[Sample]:
    """Images under `folder/NORMAL` and `folder/PNEUMONIA` (or `folder/train/...`)."""
    root = folder / "train" if (folder / "train" / CLASSES[0]).is_dir() else folder
    missing = [name for name in CLASSES if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder} has no {' or '.join(missing)} folder")
    samples = []
    for label, name in enumerate(CLASSES):
        for path in sorted((root / name).rglob("*")):
            fmt = sniff_file(path) if path.is_file() and not path.name.startswith(".") else None
            if fmt is not None:
                digest = sha256_of(path)
                patient = patient_of(path.name, f"file:{digest}")
                samples.append(Sample(path, label, patient, digest, format=fmt))
    return samples


def _rank(patient: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{patient}".encode()).hexdigest()


def split_by_patient(
    samples: Sequence[Sample], fraction: float, salt: str
) -> tuple[list[Sample], list[Sample]]:
    """(kept, split off): about `fraction` of each class's images, whole patients only.

    Byte-identical images are tied to one group, so a duplicate cannot cross the split.
    """
    groups = _groups(samples)
    held: set[str] = set()
    for label in (0, 1):
        members = [g for g, items in groups.items() if _majority(items) == label]
        wanted = fraction * sum(len(groups[g]) for g in members)
        taken = 0
        for group in sorted(members, key=lambda g: _rank(g, salt)):
            if taken >= wanted:
                break
            held.add(group)
            taken += len(groups[group])
    kept = [s for g, items in groups.items() if g not in held for s in items]
    split = [s for g, items in groups.items() if g in held for s in items]
    return kept, split


def _groups(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Patients, merged when two of them share a byte-identical image."""
    by_hash: dict[str, str] = {}
    parent: dict[str, str] = {}

    def find(group: str) -> str:
        while parent.setdefault(group, group) != group:
            group = parent[group]
        return group

    items = list(samples)
    for sample in items:
        first = by_hash.setdefault(sample.sha256, sample.patient)
        parent[find(sample.patient)] = find(first)
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in items:
        groups[find(sample.patient)].append(sample)
    return groups


def _majority(items: Sequence[Sample]) -> int:
    return int(sum(s.label for s in items) * 2 >= len(items))


def exclude_overlap(samples: Sequence[Sample], holdout: Sequence[Sample]) -> list[Sample]:
    """Drop samples that share a patient or the exact bytes with the holdout."""
    patients = {s.patient for s in holdout}
    hashes = {s.sha256 for s in holdout}
    return [s for s in samples if s.patient not in patients and s.sha256 not in hashes]


def load_arrays(
    samples: Sequence[Sample],
    size: int,
    threads: int,
    max_pixels: int,
    recipe: Preprocessing = DEFAULT_PREPROCESSING,
) -> tuple[Arrays, int]:
    """Decode with the scoring pipeline's own function; returns the arrays and how many failed."""
    sources = [ImageSource(s.path, s.format, s.span) for s in samples]
    with ThreadPoolExecutor(threads) as pool:
        decoded = decode_batch(sources, size, max_pixels, recipe, pool)
    kept = [
        (pixels, s)
        for pixels, s in zip(decoded, samples, strict=True)
        if isinstance(pixels, np.ndarray)
    ]
    if not kept:
        empty = Arrays(
            np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.float32), np.array([])
        )
        return empty, len(samples)
    x = np.stack([pixels for pixels, _ in kept])
    y = np.array([s.label for _, s in kept], dtype=np.float32)
    return Arrays(x, y, np.array([s.patient for _, s in kept])), len(samples) - len(kept)


def with_threshold_copies(arrays: Arrays) -> Arrays:
    """The write-up's augmentation: the set plus a copy with pixels below 25 set to 0."""
    floored = np.where(arrays.x < PIXEL_FLOOR, 0, arrays.x).astype(np.uint8)
    groups = None if arrays.groups is None else np.concatenate([arrays.groups, arrays.groups])
    return Arrays(np.concatenate([arrays.x, floored]), np.concatenate([arrays.y, arrays.y]), groups)


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights, so each class weighs as much as the other in the loss."""
    counts = np.bincount(y.astype(int), minlength=2)
    total = counts.sum()
    return {c: float(total / (2 * counts[c])) if counts[c] else 1.0 for c in (0, 1)}


def class_counts(samples: Sequence[Sample]) -> dict[str, int]:
    counts = np.bincount([s.label for s in samples], minlength=2)
    return {CLASSES[0]: int(counts[0]), CLASSES[1]: int(counts[1])}
