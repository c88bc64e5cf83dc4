"""`--report FILE`: one JSON document saying what a deploy, promote or rollback did (Jenkins
archives it; docs/report.schema.json is its schema; `python -m bench.report_phases` draws where a
set of them spent their time).

Written by cli.main however the run ends (every exit code: bad input when the arguments name the
file, a bug too), atomically: a reader sees the old file or the whole new one, never half.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from pipeline.core.errors import Interrupted

# The commands that take --report, and the action each one reports.
ACTIONS = ("deploy", "promote", "rollback")


def result_of(exc: BaseException) -> str:
    """How a run that raised `exc` ended, in the history's words."""
    return getattr(exc, "history_result", None) or ("interrupted" if isinstance(exc, Interrupted) else "failed")


def scan(argv: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    """(the action, the report file) as far as the words say, for arguments argparse refused:
    bad input gets its report too when the command and `--report FILE` can be told."""
    action = next((word for word in argv if word in ACTIONS), None)
    if action == "deploy" and "--no-promote" in argv:
        action = "stage"
    path = None
    for i, word in enumerate(argv):
        if word == "--report" and i + 1 < len(argv):
            path = argv[i + 1]
        elif word.startswith("--report="):
            path = word.partition("=")[2]
    return action, path or None


def write(path: Path, document: Mapping[str, Any], mask: Optional[Callable[[str], str]] = None) -> None:
    """`document` as JSON at `path`, atomically (a temporary file beside it, then a rename).
    `mask`: applied to the text first (the secrets the log masks). Raises OSError."""
    text = json.dumps(document, indent=2) + "\n"
    if mask is not None:
        text = mask(text)
    directory = path.parent
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
