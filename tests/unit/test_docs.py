"""The README documents every setting, and .ci/run runs the README's test command."""

import re

from core.config import Settings
from tests.support import REPO


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [
        name
        for name, field in Settings.model_fields.items()
        if not field.exclude and f"`PNEUMOSCAN_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_ci_runs_exactly_the_readme_test_command_after_lint() -> None:
    readme = (REPO / "README.md").read_text()
    command = re.search(r"^(make test)\s+#", readme, re.MULTILINE)
    assert command is not None
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert lines.index(command.group(1)) > lines.index("make lint")


def test_the_readme_states_each_plain_default_as_the_code_has_it() -> None:
    readme = (REPO / "README.md").read_text()
    stated = dict(re.findall(r"^\| `PNEUMOSCAN_(\w+)` \| `([^`]*)` \|", readme, re.MULTILINE))
    checked = 0
    for name, field in Settings.model_fields.items():
        default, text = field.default, stated.get(name.upper())
        derived = default == ""  # filled in from other settings at validation
        if (
            text is None
            or derived
            or isinstance(default, bool)
            or not isinstance(default, int | float | str)
        ):
            if isinstance(default, bool) and text is not None:
                assert text == str(default).lower(), name
            continue
        if isinstance(default, int | float):
            assert float(text) == default, (name, text, default)
        else:
            assert text == default, (name, text, default)
        checked += 1
    assert checked >= 20  # the table's format still matches what this test reads
