"""The house rules, checked on the source: which package may import which (deferred imports
inside functions count too), where TensorFlow may be imported, which module may change a
job's status, and how long a module may grow. Each checker is also shown to catch the
violations it exists for, on small made-up trees."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO

PACKAGES = ("core", "api", "worker", "training", "cli")
# What each package may not import (a prefix matches the module and everything under it).
FORBIDDEN = {
    "core": ("api", "worker", "training", "cli"),
    "api": ("worker", "training", "cli"),
    "worker": ("api", "cli"),
    "training": ("api", "cli"),
    "cli": (),
}
ALLOWED_EXCEPTIONS = {"api": ("worker.tasks",)}  # the task signatures, nothing else of worker
MACHINE_LEARNING = ("tensorflow", "keras")
MAY_IMPORT_MACHINE_LEARNING = ("worker", "training")
JOB_LIFECYCLE = Path("core/job_state.py")
MAX_MODULE_LINES = 340


def modules(root: Path) -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            yield path.relative_to(root), ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def import_violations(root: Path) -> list[str]:
    found = []
    for path, tree in modules(root):
        package = path.parts[0]
        for line, module in imported(tree):
            allowed = ALLOWED_EXCEPTIONS.get(package, ())
            if any(under(module, p) for p in FORBIDDEN[package]) and module not in allowed:
                found.append(f"{path}:{line} {package} imports {module}")
            if package not in MAY_IMPORT_MACHINE_LEARNING and any(
                under(module, p) for p in MACHINE_LEARNING
            ):
                found.append(f"{path}:{line} imports {module} outside worker/ and training/")
    return found


def mentions_job_status(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "JobStatus" for n in ast.walk(node))


def status_writes(root: Path) -> list[str]:
    """Places outside the job lifecycle that set a job's status: `x.status = JobStatus...`
    (alone or in a tuple assignment) or `status=JobStatus...` given to a call (an insert,
    an update's `.values`, a `Job(...)`)."""
    found = []
    for path, tree in modules(root):
        if path == JOB_LIFECYCLE:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and mentions_job_status(node.value):
                targets = [t for target in node.targets for t in ast.walk(target)]
                if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
                    found.append(f"{path}:{node.lineno} assigns a job status")
            elif (
                isinstance(node, ast.keyword)
                and node.arg == "status"
                and mentions_job_status(node.value)
            ):
                found.append(f"{path}:{node.value.lineno} passes status=JobStatus...")
    return found


def long_modules(root: Path) -> list[str]:
    return [
        f"{path} has {length} lines"
        for path, _ in modules(root)
        if (length := len((root / path).read_text().splitlines())) > MAX_MODULE_LINES
    ]


def test_packages_import_only_what_they_may() -> None:
    assert import_violations(REPO) == []


def test_only_the_job_lifecycle_changes_a_jobs_status() -> None:
    assert status_writes(REPO) == []


def test_no_module_outgrows_the_limit() -> None:
    assert long_modules(REPO) == []


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


DEFERRED = "def f():\n    {}\n"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("core/cli_inside.py", DEFERRED.format("from worker.celery_app import create_celery")),
        ("core/uses_api.py", "import api.jobs\n"),
        ("core/uses_training.py", DEFERRED.format("from training.train import run_training")),
        ("core/uses_cli.py", "from cli.context import CliContext\n"),
        ("api/context.py", "from worker.celery_app import PneumoscanCelery\n"),
        ("api/__init__.py", "from worker.celery_app import create_celery\n"),
        ("api/models.py", "import training.model\n"),
        ("core/inference.py", DEFERRED.format("import tensorflow as tf")),
        ("api/anything.py", "from keras import layers\n"),
        ("worker/tasks.py", "from cli import main\n"),
    ],
)
def test_the_import_contract_catches_each_kind_of_violation(
    tmp_path: Path, name: str, text: str
) -> None:
    assert len(import_violations(tree(tmp_path, {name: text}))) == 1


def test_the_import_contract_lets_through_what_is_allowed(tmp_path: Path) -> None:
    allowed = {
        "api/jobs.py": "from worker.tasks import ingest_job\nfrom core.jobs import get_job\n",
        "cli/service.py": DEFERRED.format("from worker.celery_app import create_celery"),
        "worker/model_cache.py": DEFERRED.format("import keras"),
        "training/model.py": "import keras\nfrom worker.model_cache import load_network\n",
    }
    assert import_violations(tree(tmp_path, allowed)) == []


@pytest.mark.parametrize(
    "statement",
    [
        "job.status = JobStatus.CANCELLED",
        "job.status, job.finished_at = JobStatus.FAILED, utcnow()",
        "session.execute(update(Job).values(status=JobStatus.QUEUED))",
        "session.add(Job(id=job_id, status=JobStatus.QUEUED))",
    ],
)
def test_the_lifecycle_check_catches_each_way_of_setting_a_status(
    tmp_path: Path, statement: str
) -> None:
    assert len(status_writes(tree(tmp_path, {"core/jobs.py": DEFERRED.format(statement)}))) == 1


def test_the_lifecycle_check_lets_reads_and_the_lifecycle_itself_through(tmp_path: Path) -> None:
    files = {
        "core/results.py": DEFERRED.format("return job.status == JobStatus.RUNNING"),
        "core/metrics.py": "UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)\n",
        "core/registry.py": DEFERRED.format("row.status = ModelStatus.ACTIVE"),
        "core/job_state.py": DEFERRED.format("job.status = JobStatus.CANCELLED"),
    }
    assert status_writes(tree(tmp_path, files)) == []


def test_the_size_check_catches_a_long_module(tmp_path: Path) -> None:
    long_text = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert len(long_modules(tree(tmp_path, {"core/long.py": long_text}))) == 1
