"""A folder on the import volume, read where it lies: regular files only, no link followed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from core.intake.entries import (
    ArchiveBudget,
    ArchiveError,
    ArchiveLimits,
    Candidate,
    Entry,
    NameSource,
    Rejection,
    is_ignored,
)
from core.intake.safe_archive import is_zip_file, zip_entries


def iter_folder(
    root: Path, folder: Path, archives_dest: Path, limits: ArchiveLimits
) -> Iterator[Entry]:
    """Regular files under `folder`, read in place; zips among them expanded into
    `archives_dest`. No link is followed: a folder that is (or lies behind) a link now, or is
    no longer under `root`, is refused whole, and a link or anything else that is not a
    regular file (a FIFO, a socket, a device) is a rejected entry."""
    check_folder_still_inside(root, folder)
    budget = ArchiveBudget(limits)
    names = NameSource(archives_dest)
    for path, relative, mode in _walk(folder):
        budget.count_member()
        if is_ignored(relative):
            continue
        if not mode:
            yield Rejection(relative, "removed while the folder was being read")
        elif stat.S_ISLNK(mode):
            yield Rejection(relative, "symbolic link (only regular files are read)")
        elif not stat.S_ISREG(mode):
            yield Rejection(relative, "not a regular file (a FIFO, socket or device)")
        elif _readable_zip(path):
            archives_dest.mkdir(parents=True, exist_ok=True)
            budget.count_input(path)
            yield from zip_entries(path, relative, names, budget, "archive", depth=1)
        else:
            yield Candidate(relative, path)


def check_folder_still_inside(root: Path, folder: Path) -> None:
    """Refuse a folder that was replaced (by a link, or moved) since it was submitted."""
    real_root = Path(os.path.realpath(root))
    if Path(os.path.realpath(folder)) != folder or not _inside(folder, real_root):
        raise ArchiveError(
            f"{folder} is no longer a folder under the import root {root} (it was replaced "
            "by a link or moved since the job was submitted): nothing was read"
        )
    if not folder.is_dir():
        raise ArchiveError(f"{folder} is no longer a folder: nothing was read")


def _readable_zip(path: Path) -> bool:
    try:
        return is_zip_file(path)
    except OSError:
        return False  # classified, with the reason it cannot be read, as a candidate


def _walk(folder: Path) -> Iterator[tuple[Path, str, int]]:
    """(path, path under `folder`, mode of the entry itself: 0 when it vanished) of every entry
    but directories, in name order; a directory is entered only when it is not a link."""
    for directory, subdirs, files, directory_fd in os.fwalk(folder, follow_symlinks=False):
        subdirs.sort()
        modes = {name: _mode(name, directory_fd) for name in [*files, *subdirs]}
        for name in sorted(n for n in modes if n in files or stat.S_ISLNK(modes[n])):
            path = Path(directory) / name
            yield path, path.relative_to(folder).as_posix(), modes[name]


def _mode(name: str, directory_fd: int) -> int:
    try:
        return os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return 0


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
