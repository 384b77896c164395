"""Two versions side by side, from their `pneumoscan evaluate --stress` reports.

    pneumoscan evaluate --data ../shared/data/kermany224 --split validation --stress \\
        --model OLD > old.json
    pneumoscan evaluate --data ../shared/data/kermany224 --split validation --stress \\
        --model NEW > new.json
    .venv/bin/python bench/compare.py old.json new.json

Prints a Markdown table of the clean and stressed figures with their 95 % intervals, and
whether the intervals overlap (the issue's bar for "better": they must not).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROWS = (
    ("clean AUROC", None, "auroc"),
    ("clean accuracy", None, "accuracy"),
    ("clean sensitivity", None, "sensitivity"),
    ("clean specificity", None, "specificity"),
    ("stressed mean AUROC", "stressed", "mean_auroc"),
    ("stressed worst AUROC", "stressed", "worst_auroc"),
    ("stressed specificity at the threshold", "stressed", "specificity"),
    ("stressed worst specificity", "stressed", "worst_specificity"),
    ("stressed sensitivity at the threshold", "stressed", "sensitivity"),
)


def cell(report: dict[str, Any], part: str | None, key: str) -> tuple[str, list[float] | None]:
    figures = report[part] if part else report
    value = figures.get(key)
    low_high = (figures.get("intervals") or {}).get(key)
    if value is None:
        return "n/a", None
    spread = f" ({low_high[0]:.3f}-{low_high[1]:.3f})" if low_high else ""
    return f"{value:.3f}{spread}", low_high


def table(old: dict[str, Any], new: dict[str, Any]) -> str:
    lines = [
        f"| figure | {old['model_version']} | {new['model_version']} | intervals apart |",
        "|---|---:|---:|---|",
    ]
    for name, part, key in ROWS:
        (a, a_range), (b, b_range) = cell(old, part, key), cell(new, part, key)
        apart = ""
        if a_range and b_range:
            apart = "yes" if a_range[1] < b_range[0] or b_range[1] < a_range[0] else "no"
        lines.append(f"| {name} | {a} | {b} | {apart} |")
    ece = (old["calibration"]["ece"], new["calibration"]["ece"])
    lines.append(f"| calibration error (ECE) | {ece[0]:.3f} | {ece[1]:.3f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    print(table(json.loads(args.old.read_text()), json.loads(args.new.read_text())))


if __name__ == "__main__":
    main()
