"""Issue 19's goal, on every CI run: a code-only release of the Spring Boot-layout test service
moves at most 1% of what the fat-jar image moves, to the registry and to a node holding the
previous release. bench/layered_vs_fat.py measures it (bytes from the registry's API and the
engine's pull, not timed figures); this runs one round of it and keeps its figures."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .realstack import REPO, pipeline_env

pytestmark = pytest.mark.integration

REPORT_DIR = Path(tempfile.gettempdir()) / "pipeline-load"


def test_a_code_only_layered_release_moves_at_most_one_percent_of_the_fat_jars_bytes(stack, tmp_path):
    out = tmp_path / "layered_vs_fat.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "layered_vs_fat.py"), "--rounds", "1",
                           "--json", str(out)], cwd=REPO, env=pipeline_env({}), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    REPORT_DIR.mkdir(exist_ok=True)
    (REPORT_DIR / "layered_vs_fat.json").write_text(out.read_text())
    figures = json.loads(out.read_text())
    fat, layered = figures["fat"], figures["layered"]
    assert fat["code_only_release_bytes"] > 20_000_000, fat   # the fat jar's layer really moved
    assert layered["code_only_release_bytes"] <= 0.01 * fat["code_only_release_bytes"], figures
    assert 0 < layered["pulled_bytes_median"] <= 0.01 * fat["pulled_bytes_median"], figures
