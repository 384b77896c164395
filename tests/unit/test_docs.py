"""The README documents every setting, and .ci/run runs the README's test command."""

import re

from core.config import Settings
from tests.support import REPO


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [
        name for name in Settings.model_fields if f"`PNEUMOSCAN_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_ci_runs_exactly_the_readme_test_command_after_lint() -> None:
    readme = (REPO / "README.md").read_text()
    command = re.search(r"^(make test)\s+#", readme, re.MULTILINE)
    assert command is not None
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert lines.index(command.group(1)) > lines.index("make lint")
