"""Whole expansions at once, for tests: ingest reads entries one at a time, as they come."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.intake.entries import ArchiveBudget, ArchiveLimits, Candidate, Rejection
from core.intake.folders import iter_folder
from core.intake.safe_archive import iter_archive


@dataclass
class Expansion:
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @classmethod
    def collect(cls, entries: Iterable[Candidate | Rejection]) -> Expansion:
        expansion = cls()
        for entry in entries:
            if isinstance(entry, Candidate):
                expansion.candidates.append(entry)
            else:
                expansion.rejected.append(entry)
        return expansion


def expand_archive(
    archive: Path, dest: Path, limits: ArchiveLimits, budget: ArchiveBudget | None = None
) -> Expansion:
    """`iter_archive`, all at once."""
    return Expansion.collect(iter_archive(archive, dest, limits, budget))


def collect_folder(
    root: Path, folder: Path, archives_dest: Path, limits: ArchiveLimits
) -> Expansion:
    """`iter_folder`, all at once."""
    return Expansion.collect(iter_folder(root, folder, archives_dest, limits))
