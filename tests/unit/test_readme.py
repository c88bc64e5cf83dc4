"""The README stays true: its settings table and exit codes match the code."""
import re
from pathlib import Path

from pipeline.core import errors
from pipeline.core.settings import SETTING_FIELDS, SETTING_NAMES, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_settings_table_lists_exactly_the_settings_read():
    documented = re.findall(r"^\| `([A-Z_]+)` \|", README, re.M)
    assert sorted(documented) == sorted(SETTING_NAMES)


def test_every_documented_default_is_the_readers_default(tmp_path):
    """Every row: a default in backticks is the one the settings reader uses; a default in
    parentheses (none, required, computed at run time) stands for an empty one."""
    settings = Settings.from_env({}, tmp_path)
    defaults = settings.public()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]*?) \|", README, re.M))
    assert sorted(rows) == sorted(SETTING_FIELDS)
    wrong = []
    for name, field in SETTING_FIELDS.items():
        cell, default = rows[name], defaults[field]
        literal = re.fullmatch(r"`([^`]*)`", cell)
        if literal:
            if not _same(literal.group(1), default):
                wrong.append(f"{name}: README says {literal.group(1)!r}, the reader uses {default!r}")
        elif re.fullmatch(r"\([^)]*\)", cell):
            if getattr(settings, field):
                wrong.append(f"{name}: README says {cell}, the reader uses {default!r}")
        else:
            wrong.append(f"{name}: default cell {cell!r} is neither `value` nor (description)")
    assert wrong == []


def _same(documented: str, default: str) -> bool:
    try:
        return float(documented) == float(default)
    except ValueError:
        # A flag is documented as the value a user writes (`false`), the reader holds a bool.
        return documented == default or documented == str(default).lower() and default in ("True", "False")


def test_exit_codes_table_matches():
    table = set(re.findall(r"^\| (\d+) \| ", README, re.M))
    for code in (errors.EXIT_OK, errors.EXIT_DEPLOY_FAILED, errors.EXIT_BAD_INPUT, errors.EXIT_PREFLIGHT,
                 errors.EXIT_LOCKED, errors.EXIT_NOTHING_TO_DO, errors.EXIT_LIVE_UNVERIFIED, errors.EXIT_BUG):
        assert str(code) in table
    assert "| 130 / 143 |" in README
