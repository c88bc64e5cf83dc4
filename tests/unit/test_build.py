import sys

import pytest

from pipeline.flows.build import default_version, run_build
from pipeline.core.errors import BuildFailed


def test_build_output_is_streamed_and_failure_keeps_the_tail(tmp_path, caplog):
    script = "import sys\nfor i in range(30): print('line', i)\nsys.exit(3)\n"
    with pytest.raises(BuildFailed) as caught:
        run_build([sys.executable, "-c", script], tmp_path, {"PATH": "/usr/bin:/bin"})
    assert "exited with 3" in str(caught.value)
    assert list(caught.value.detail())[-1] == "line 29" and len(caught.value.detail()) == 20


def test_build_does_not_see_the_registry_password(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="pipeline")
    script = "import os; print('password=' + os.environ.get('REGISTRY_PASSWORD', 'absent'))"
    run_build([sys.executable, "-c", script], tmp_path, {"REGISTRY_PASSWORD": "hunter2", "PATH": "/usr/bin"})
    assert "password=absent" in caplog.text and "hunter2" not in caplog.text


def test_missing_build_tool_is_a_build_failure(tmp_path):
    with pytest.raises(BuildFailed, match="exited with 127"):
        run_build(["./gradlew", "bootJar"], tmp_path, {})


def test_version_is_a_timestamp_outside_git(tmp_path):
    version = default_version(tmp_path)
    assert version.isdigit() and len(version) == 14
