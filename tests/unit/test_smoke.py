"""SMOKE_COMMAND: run through sh, SMOKE_URL set, output kept for the error, bounded in time."""
import os
from pathlib import Path

import pytest

from pipeline.flows.smoke import SmokeFailed, run_smoke

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
    # Stopped, not waited for: nothing it started runs once run_smoke returns. (No bound on how
    # long that took: the timeout is the command's own, and speed is for bench/.)
    marker = f"300.{os.getpid()}"     # a sleep of this length is this test's and no one else's
    with pytest.raises(SmokeFailed, match="did not finish within 0.5s"):
        run_smoke(f"sleep {marker} & wait", "http://172.20.0.3:8080", ENV, 0.5)
    assert not running(["sleep", marker]), "the smoke command's child still runs"


def running(argv: list) -> list:
    """Live processes (zombies excepted) whose command line is `argv`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")[:-1]
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError, PermissionError):
            continue
        if [part.decode(errors="replace") for part in cmdline] == argv and state != "Z":
            found.append(proc.name)
    return found
