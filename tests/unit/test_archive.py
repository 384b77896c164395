"""Archive expansion: paths and sizes are checked, nothing lands outside the job folder."""

import hashlib
import os
import random
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from core.intake.entries import ArchiveError, ArchiveLimits, UnsafePathError, clean_relative_path
from core.storage import sha256_of
from tests.expansion import collect_folder, expand_archive
from tests.images import jpeg_bytes, png_bytes
from tests.support import zip_bytes

LIMITS = ArchiveLimits(max_members=100, max_total_bytes=50 * 1024 * 1024, max_ratio=100)


def write_zip(
    path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as bundle:
        for name, data in members:
            bundle.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.jpeg", "'..'"),
        ("a/../../evil.jpeg", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:/Windows/evil.jpeg", "absolute"),
        ("dir\\evil.jpeg", "backslash"),
    ],
)
def test_unsafe_member_names_are_refused(name: str, reason: str) -> None:
    with pytest.raises(UnsafePathError, match=reason):
        clean_relative_path(name)


def test_member_names_are_normalised() -> None:
    assert clean_relative_path("./study//img.jpeg") == "study/img.jpeg"


def test_zip_slip_member_is_rejected_and_nothing_is_written_outside(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "a.zip", [("../../escaped.jpeg", jpeg_bytes()), ("ok.jpeg", jpeg_bytes())]
    )
    dest = tmp_path / "job" / "files"
    expansion = expand_archive(archive, dest, LIMITS)
    assert [c.relative_path for c in expansion.candidates] == ["ok.jpeg"]
    assert expansion.rejected[0].reason.startswith("unsafe path")
    assert not list(tmp_path.rglob("escaped.jpeg"))
    assert all(dest in path.parents for path in dest.rglob("*"))


def test_files_get_generated_names_inside_the_job_folder(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "a.zip", [("études/é.jpeg", jpeg_bytes()), ("x/é.jpeg", jpeg_bytes())]
    )
    expansion = expand_archive(archive, tmp_path / "files", LIMITS)
    assert [c.relative_path for c in expansion.candidates] == ["études/é.jpeg", "x/é.jpeg"]
    assert [c.path.name for c in expansion.candidates] == ["000001", "000002"]


def test_each_written_member_carries_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    members = [("a.jpeg", jpeg_bytes()), ("b/c.jpeg", png_bytes())]
    archive = write_zip(tmp_path / "a.zip", members, zipfile.ZIP_DEFLATED)
    expansion = expand_archive(archive, tmp_path / "files", LIMITS)
    assert [c.sha256 for c in expansion.candidates] == [
        hashlib.sha256(data).hexdigest() for _, data in members
    ]
    assert all(c.sha256 == sha256_of(c.path) for c in expansion.candidates)


def test_symlink_member_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        link = zipfile.ZipInfo("link.jpeg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    expansion = expand_archive(path, tmp_path / "files", LIMITS)
    assert expansion.candidates == []
    assert expansion.rejected[0].reason == "symbolic link"


def test_macos_litter_and_dotfiles_are_skipped(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "a.zip",
        [
            ("__MACOSX/._a.jpeg", b"x"),
            ("._a.jpeg", b"x"),
            (".DS_Store", b"x"),
            ("a.jpeg", jpeg_bytes()),
        ],
    )
    expansion = expand_archive(archive, tmp_path / "files", LIMITS)
    assert [c.relative_path for c in expansion.candidates] == ["a.jpeg"]
    assert expansion.rejected == []


def test_nested_zip_is_followed_one_level_and_deeper_is_refused(tmp_path: Path) -> None:
    deepest = zip_bytes([("deep.jpeg", jpeg_bytes())])
    inner = zip_bytes([("inner.jpeg", jpeg_bytes()), ("deeper.zip", deepest)])
    archive = write_zip(tmp_path / "a.zip", [("outer.jpeg", jpeg_bytes()), ("inner.zip", inner)])
    expansion = expand_archive(archive, tmp_path / "files", LIMITS)
    assert sorted(c.relative_path for c in expansion.candidates) == [
        "inner.zip/inner.jpeg",
        "outer.jpeg",
    ]
    assert [(r.path, r.reason) for r in expansion.rejected] == [
        ("inner.zip/deeper.zip", "nested archive more than one level deep")
    ]


def test_too_many_members_refuses_the_archive(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [(f"{i}.jpeg", b"x") for i in range(5)])
    with pytest.raises(ArchiveError, match="more than 4 members"):
        expand_archive(archive, tmp_path / "files", ArchiveLimits(4, 10**9, 100))


def test_total_size_is_counted_on_bytes_actually_read(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [(f"{i}.bin", bytes(600_000)) for i in range(4)])
    with pytest.raises(ArchiveError, match="MB once uncompressed"):
        expand_archive(archive, tmp_path / "files", ArchiveLimits(100, 2 * 1024 * 1024, 10_000))


def test_highly_compressed_member_is_rejected_as_a_bomb_and_the_rest_kept(tmp_path: Path) -> None:
    incompressible = random.Random(1).randbytes(3 * 1024 * 1024)
    archive = write_zip(
        tmp_path / "a.zip",
        [("bomb.jpeg", bytes(8 * 1024 * 1024)), ("scan.jpeg", incompressible)],
        zipfile.ZIP_DEFLATED,
    )
    expansion = expand_archive(archive, tmp_path / "files", LIMITS)
    assert [c.relative_path for c in expansion.candidates] == ["scan.jpeg"]
    assert "compression ratio" in expansion.rejected[0].reason
    assert [p.name for p in (tmp_path / "files").iterdir()] == ["000002"]


def test_a_small_archive_expanding_hugely_is_refused_whole(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "a.zip", [("bomb.jpeg", bytes(8 * 1024 * 1024))], zipfile.ZIP_DEFLATED
    )
    with pytest.raises(ArchiveError, match="expands to more than 100 times its size"):
        expand_archive(archive, tmp_path / "files", LIMITS)


@pytest.mark.parametrize(
    ("content", "message"), [(b"not a zip at all", "not a readable zip"), (zip_bytes([]), "empty")]
)
def test_unreadable_or_empty_archive_is_refused(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "a.zip"
    path.write_bytes(content)
    with pytest.raises(ArchiveError, match=message):
        expand_archive(path, tmp_path / "files", LIMITS)


def test_a_folder_is_read_without_following_any_link_and_only_its_regular_files(
    tmp_path: Path,
) -> None:
    root = tmp_path / "import"
    study = root / "study"
    (study / "inner").mkdir(parents=True)
    (study / "a.jpeg").write_bytes(jpeg_bytes())
    (study / "inner" / "b.jpeg").write_bytes(jpeg_bytes())
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "c.jpeg").write_bytes(jpeg_bytes())
    (study / "leaving.jpeg").symlink_to(secret / "c.jpeg")
    (study / "inside.jpeg").symlink_to(study / "a.jpeg")
    (study / "linked-folder").symlink_to(secret)
    os.mkfifo(study / "pipe.jpeg")  # opening it to read would wait for a writer for ever
    expansion = collect_folder(root, study, tmp_path / "files", LIMITS)
    assert [c.relative_path for c in expansion.candidates] == ["a.jpeg", "inner/b.jpeg"]
    link = "symbolic link (only regular files are read)"
    assert [(r.path, r.reason) for r in expansion.rejected] == [
        ("inside.jpeg", link),
        ("leaving.jpeg", link),
        ("linked-folder", link),
        ("pipe.jpeg", "not a regular file (a FIFO, socket or device)"),
    ]


@pytest.mark.parametrize("swap", ["folder", "parent"])
def test_a_folder_replaced_by_a_link_after_submission_is_not_read(
    tmp_path: Path, swap: str
) -> None:
    root = tmp_path / "import"
    study = root / "site" / "study"
    study.mkdir(parents=True)
    elsewhere = tmp_path / "storage" / "other-job"
    (elsewhere / "study").mkdir(parents=True)
    (elsewhere / "study" / "a.jpeg").write_bytes(jpeg_bytes())
    replaced = study if swap == "folder" else study.parent
    shutil.rmtree(replaced)
    replaced.symlink_to(elsewhere / "study" if swap == "folder" else elsewhere)
    with pytest.raises(ArchiveError, match="replaced by a link or moved"):
        collect_folder(root, study, tmp_path / "files", LIMITS)
    assert (elsewhere / "study" / "a.jpeg").exists()
