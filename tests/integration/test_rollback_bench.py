"""Issue 8: rollback to a kept, stopped container of a service that starts in under 1 s puts
traffic back on it within 3 s of the command's start, under load. bench/rollback_speed.py asserts
it (it exits 1 otherwise); this runs it on every CI run and keeps its figures."""
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


def test_rollback_to_a_stopped_container_serves_within_3s_under_load(stack, demo_jar, tmp_path):
    out = tmp_path / "rollback_speed.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "rollback_speed.py"), "--rounds", "3",
                           "--limit", "3.0", "--json", str(out)],
                          cwd=REPO, env=pipeline_env({}), capture_output=True, text=True, timeout=600)
    print(done.stderr)
    REPORT_DIR.mkdir(exist_ok=True)
    if out.exists():
        (REPORT_DIR / "rollback_speed.json").write_text(out.read_text())
    assert done.returncode == 0, f"the benchmark failed its own assertions:\n{done.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["ok"] and len(report["rounds"]) == 3
    assert all(r["kept_container_was"] == "exited" and r["served_after"] <= 3.0 for r in report["rounds"])
