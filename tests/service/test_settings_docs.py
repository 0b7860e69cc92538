"""README.md's "## Configuration" table documents every setting of service/settings.py, and nothing else:
a field added to `Settings` without a row, or a row left behind by a removed field, fails here."""

from __future__ import annotations

import re

from service.settings import Settings
from tests.conftest import ROOT

PREFIX = Settings.model_config["env_prefix"]


def table_rows() -> list[str]:
    """The lines of the Configuration table: those starting with `|` between the heading and the next one."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("## Configuration")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rows = [line for line in lines[start + 1:end] if line.startswith("|")]
    assert len(rows) > 2, "no table found under README.md's '## Configuration'"
    return rows


def documented() -> set[str]:
    """Every `FRESCO_...` name inside a backtick span of a table row."""
    names = set()
    for row in table_rows():
        for span in re.findall(r"`([^`]*)`", row):
            names.update(re.findall(rf"\b{PREFIX}[A-Z0-9_]+\b", span))
    return names


def settings_variables() -> set[str]:
    return {f"{PREFIX}{field.upper()}" for field in Settings.model_fields}


def test_every_setting_has_a_row():
    missing = sorted(settings_variables() - documented())
    assert not missing, f"settings missing from README.md's Configuration table: {missing}"


def test_every_row_is_a_setting():
    stale = sorted(documented() - settings_variables())
    assert not stale, f"README.md's Configuration table names variables that are not settings: {stale}"
