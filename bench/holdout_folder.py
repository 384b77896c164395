"""Gather the images of held-out patients from another folder, for `pneumoscan evaluate`.

    .venv/bin/python bench/holdout_folder.py --reference ../shared/data/kermany224 \\
        --source ../shared/data/origres --out var/holdout-origres

A training run without PNEUMOSCAN_HOLDOUT_DIR holds out a fixed 15 % of the reference
patients (training/data.py). This links the `--source` images of exactly those patients into
`--out/NORMAL` and `--out/PNEUMONIA`, e.g. the original-resolution copies of held-out images,
to measure the whole scoring path (full-size JPEG -> draft decode -> model) on unseen patients.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.data import CLASSES, read_labelled_folder, split_by_patient
from training.datasets import HOLDOUT_FRACTION


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    _, holdout = split_by_patient(read_labelled_folder(args.reference), HOLDOUT_FRACTION, "holdout")
    patients = {sample.patient for sample in holdout}
    linked = 0
    for sample in read_labelled_folder(args.source):
        if sample.patient in patients:
            target = args.out / CLASSES[sample.label] / sample.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(sample.path.resolve())
            linked += 1
    print(f"{linked} images of {len(patients)} held-out patients linked under {args.out}")


if __name__ == "__main__":
    main()
