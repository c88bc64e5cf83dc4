"""SMOKE_COMMAND: run through sh, SMOKE_URL set, output kept for the error, bounded in time."""
import os
import time

import pytest

from pipeline.smoke import SmokeFailed, run_smoke

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REGISTRY_PASSWORD": "hunter2"}


def test_a_passing_command_sees_smoke_url_and_not_the_registry_password(tmp_path):
    out = tmp_path / "seen"
    run_smoke(f'echo "$SMOKE_URL ${{REGISTRY_PASSWORD:-unset}}" > {out}', "http://172.20.0.3:8080", ENV, 10)
    assert out.read_text() == "http://172.20.0.3:8080 unset\n"


def test_a_failing_command_names_its_exit_code_and_keeps_its_last_lines():
    with pytest.raises(SmokeFailed) as caught:
        run_smoke("echo checking; echo 'GET / -> 500' >&2; exit 4", "http://172.20.0.3:8080", ENV, 10)
    assert str(caught.value) == "SMOKE_COMMAND exited with 4 against http://172.20.0.3:8080; nothing was switched"
    assert list(caught.value.detail()) == ["checking", "GET / -> 500"]
    assert caught.value.exit_code == 1


def test_a_command_that_hangs_silently_is_stopped_at_the_timeout():
    started = time.monotonic()
    with pytest.raises(SmokeFailed, match="did not finish within 0.5s"):
        run_smoke("sleep 30", "http://172.20.0.3:8080", ENV, 0.5)
    assert time.monotonic() - started < 5
