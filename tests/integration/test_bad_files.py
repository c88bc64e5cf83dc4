"""Files on the nginx host the tool cannot use as they are, and an SSH connection that drops and
stays down, on the real stack over SSH (issue 15, "Clear failures"): each is one line with its
documented exit code, never 70, and what serves is untouched.

- NGINX_ACCESS_LOG that the SSH user may not read (Debian's 0640 root:adm, read as a user outside
  adm: the stack's SSH_OTHER_USER) or that is a directory: exit 3 in preflight.
- A lock, history or release record holding bytes that are not UTF-8: lock -> exit 4 "damaged"
  and `lock release` removes it; history -> the line skipped with a warning; record -> rebuilt.
- The SSH connection drops during the health wait and the nginx host refuses a new one: the
  health probe's channel says so in one line (exit 1); the new container is left running, as the
  include cannot be read to show it does not name it, and the next deploy replaces it.
"""
from __future__ import annotations

import grp
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from teststack.realstack import run_pipeline, start_pipeline, wait_for
from .test_faults import env_file, error_line, ok
from teststack.traffic import Traffic

pytestmark = pytest.mark.integration

THEN = "verification reads nginx's answers there (the `pipeline` log format), or set VERIFY_SECONDS=0"


@pytest.fixture
def other_user_dir(stack):
    """A directory the stack's non-root SSH user owns (the includes, lock and history go there),
    holding an access log as Debian ships it: 0640 root:adm, the user not in adm."""
    directory = Path(tempfile.mkdtemp(prefix="pipeline-other-"))
    user = stack["SSH_OTHER_USER"]
    shutil.chown(directory, user)
    directory.chmod(0o755)
    log = directory / "app.access.log"
    log.write_text("")
    os.chown(log, 0, grp.getgrnam("adm").gr_gid)
    log.chmod(0o640)
    yield directory
    shutil.rmtree(directory)


def test_an_access_log_the_ssh_user_cannot_read_is_exit_3_in_preflight(world, ssh_env, stack, other_user_dir,
                                                                       tmp_path):
    user, log = stack["SSH_OTHER_USER"], other_user_dir / "app.access.log"
    # The user may read nginx's pid (as on Debian: /run/nginx.pid is 0644), which the reload switch
    # checks first; the test nginx keeps its own under pytest's 0700 tmp_path, so a copy stands in.
    pid_file = other_user_dir / "nginx.pid"
    pid_file.write_text(Path(ssh_env["NGINX_PID_FILE"]).read_text())
    env = {**ssh_env, "NGINX_SSH_USER": user, "NGINX_INCLUDE": str(other_user_dir / "service-url.inc"),
           "VERIFY_SECONDS": "5", "NGINX_ACCESS_LOG": str(log), "NGINX_PID_FILE": str(pid_file)}
    result = run_pipeline(["deploy"], env, tmp_path)
    assert result.returncode == 3, result.stderr
    assert error_line(result.stderr) == (
        f"pipeline: error: NGINX_ACCESS_LOG={log}: cannot read it on the nginx host ({user}@127.0.0.1:"
        f"{stack['SSH_PORT']}): Permission denied (it is read as NGINX_SSH_USER={user}: on Debian, make that "
        f"user a member of `adm`); {THEN}")
    # Nothing changed: no container, no include; the lock is released again.
    assert world.running_containers() == [] and world.state("blue") == "absent"
    assert sorted(p.name for p in other_user_dir.iterdir()) == sorted(["app.access.log", "nginx.pid",
                                                                        f"{world.app}.history.jsonl"])
    # Once the user may read the log (what the message says to do) the same preflight passes:
    # `promote` then finds nothing staged (exit 5).
    log.chmod(0o644)
    result = run_pipeline(["promote"], env, tmp_path)
    assert result.returncode == 5 and "nothing is staged" in error_line(result.stderr), result.stderr


def test_an_access_log_that_is_a_directory_is_exit_3_in_preflight(world, nginx, ssh_env, stack, tmp_path):
    log = tmp_path / "access-log-dir"
    log.mkdir()
    result = run_pipeline(["deploy"], {**ssh_env, "VERIFY_SECONDS": "5", "NGINX_ACCESS_LOG": str(log)}, tmp_path)
    assert result.returncode == 3, result.stderr
    assert error_line(result.stderr) == (
        f"pipeline: error: NGINX_ACCESS_LOG={log}: cannot read it on the nginx host (root@127.0.0.1:"
        f"{stack['SSH_PORT']}): it is a directory, not a file; {THEN}")
    assert world.state("blue") == "absent" and not nginx.include.with_name(f"{world.app}.deploy.lock").exists()


def test_lock_history_and_record_that_are_not_utf8(world, nginx, ssh_env, tmp_path):
    here = nginx.include.parent
    lock, history, record = (here / f"{world.app}.deploy.lock", here / f"{world.app}.history.jsonl",
                             here / f"{world.app}.releases.json")
    ok(run_pipeline(["deploy"], {**ssh_env, "APP_VERSION": "v1"}, tmp_path))
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        # A line cut short inside a character (a full disk), then the next run's line after it.
        with history.open("ab") as handle:
            handle.write('{"time": "2026-12-01T00:00:00Z", "message": "5 \u20ac'.encode()[:-2] + b"\n")
        record.write_bytes(record.read_bytes()[:30] + b"\xff\xfe")
        lock.write_bytes(b'{"who": "ci\xff", "pid": 7}\n')

        result = run_pipeline(["history"], ssh_env, tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"history {history}, line 2: not UTF-8 text; skipped" in result.stderr
        assert [line.split()[3] for line in result.stdout.splitlines()[1:]] == ["v1"]

        result = run_pipeline(["status", "--json"], ssh_env, tmp_path)
        assert result.returncode == 0, result.stderr
        assert (f"the release record {record} is damaged (not UTF-8 text (byte 0xff at offset 30)); rebuilding "
                f"it from the history and the containers' labels") in result.stderr
        report = json.loads(result.stdout)
        assert report["live_version"] == "v1" and report["releases"]["live"]["version"] == "v1"

        result = run_pipeline(["deploy"], {**ssh_env, "APP_VERSION": "v2"}, tmp_path)
        assert result.returncode == 4, result.stderr
        line = error_line(result.stderr)
        assert line.startswith(f"pipeline: error: deploy lock {lock} is damaged: not a lock pipeline wrote ("), line
        assert line.endswith("if no deploy is running, remove it with `python -m pipeline lock release`"), line
        assert world.state("green") == "absent" and lock.exists()

        result = run_pipeline(["lock", "status"], ssh_env, tmp_path)
        assert result.returncode == 0 and result.stdout.startswith(
            "locked: a damaged lock file that pipeline did not write ("), result.stderr
        result = run_pipeline(["lock", "release"], ssh_env, tmp_path)
        assert result.returncode == 0 and result.stdout.startswith("released the lock held by: "), result.stderr
        assert not lock.exists()

        result = ok(run_pipeline(["deploy"], {**ssh_env, "APP_VERSION": "v2"}, tmp_path))
        assert nginx.get().text == "version=v2 color=green\n"
        report = traffic.stop()
    assert report.failed == 0, report.failures[:5]
    assert json.loads(record.read_text())["live"]["version"] == "v2"   # written whole again
    entries = json.loads(ok(run_pipeline(["history", "--json"], ssh_env, tmp_path)).stdout)
    # The bad line stays skipped; the refused deploy (the lock is taken before the history counts) is not there.
    assert [(e["version"], e["result"]) for e in entries] == [("v1", "ok"), ("v2", "ok")]


def test_ssh_connection_lost_for_good_during_the_health_wait_is_one_line(world, nginx, settings_env, ssh_env,
                                                                          stack, tmp_path):
    from .outside import OwnSshd

    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    sshd = OwnSshd(stack, tmp_path / "sshd")
    env = {**sshd.env(ssh_env), "APP_VERSION": "v2", "HEALTH_TIMEOUT": "60", "NETWORK_TIMEOUT": "5",
           "CONTAINER_ENV_FILE": env_file(tmp_path, "STARTUP_DELAY_MS=30000")}
    deploying = None
    try:
        with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
            deploying = start_pipeline(["deploy"], env, tmp_path)
            wait_for(lambda: world.state("green") == "running", 60, 0.05, "the new container")
            time.sleep(1.0)   # inside the health wait: its probes go through SSH channels
            sshd.stop(drop_connections=True)   # no new connection from now on, and the one open drops
            # Said at the next probe, not after HEALTH_TIMEOUT of probes that cannot be sent.
            _, stderr = deploying.communicate(timeout=30)
            assert deploying.returncode == 1, stderr
            assert error_line(stderr) == (
                f"pipeline: error: nginx host root@127.0.0.1:{sshd.port} over SSH: connecting again after the "
                f"connection was lost: Unable to connect to port {sshd.port} on 127.0.0.1")
            # nginx cannot be asked what it serves (the include cannot be read) to prove it is not
            # green: green is left running, and said so.
            assert f"leaving {world.app}-green running: cannot tell whether nginx serves it" in stderr
            assert nginx.get().text == "version=v1 color=blue\n"
            # The next deploy (the nginx host reachable again) takes over the lock left behind and
            # replaces green.
            ok(run_pipeline(["deploy"], {**ssh_env, "APP_VERSION": "v3"}, tmp_path))
            assert nginx.get().text == "version=v3 color=green\n"
            report = traffic.stop()
        assert report.failed == 0, report.failures[:5]
    finally:
        if deploying is not None and deploying.poll() is None:
            deploying.kill()
            deploying.wait()
        sshd.stop()
