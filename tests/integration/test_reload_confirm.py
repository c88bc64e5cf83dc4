"""Issue 15, "killed between the include and the reload", on the real stack under load.

In reload mode the include is what nginx serves only once a reload was seen to load it: a run
SIGKILLed after the include was renamed and before nginx reloaded must not make the next deploy
remove the color nginx still serves, and a reload that exits 0 without applying (a wrapper that
does nothing, a config that fails when the master loads it) is a failed switch: the old include
back, the old color serving and running, verification never started, 0 failed requests.
"""
from __future__ import annotations

import json
import shlex
import socket
import time

import pytest

from teststack.realstack import run_pipeline, start_pipeline, wait_for
from teststack.traffic import Traffic

pytestmark = pytest.mark.integration

V1 = "version=v1 color=blue"


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("pipeline: ")]
    assert len(lines) == 1 and lines[0].startswith("pipeline: error: "), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return lines[0]


@pytest.fixture
def live_v1(world, nginx, settings_env, tmp_path):
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    assert nginx.get().text == V1 + "\n"
    # What nginx was seen loading is written down beside the include.
    assert (nginx.directory / "service-url.inc.loaded").read_text() == nginx.include.read_text()
    return nginx.include.read_text()


def status(settings_env, tmp_path) -> dict:
    return json.loads(ok(run_pipeline(["status", "--json"], settings_env, tmp_path)).stdout)


@pytest.mark.parametrize("over_ssh", [False, True], ids=["local-nginx", "nginx-over-ssh"])
def test_sigkill_after_the_include_before_the_reload_then_a_plain_deploy(world, nginx, settings_env, ssh_env,
                                                                        live_v1, tmp_path, over_ssh):
    env = ssh_env if over_ssh else settings_env
    pid_file = tmp_path / "deploy.pid"
    # NGINX_TEST_COMMAND runs right after the include was renamed into place, before the reload:
    # there it SIGKILLs the deploy (whose pid the test wrote down), as a crash would.
    killer = shlex.join(["sh", "-c", 'kill -9 "$(cat "$0")"; sleep 5', str(pid_file)])
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        deploying = start_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "NGINX_TEST_COMMAND": killer}, tmp_path)
        pid_file.write_text(str(deploying.pid))
        _, stderr = deploying.communicate(timeout=120)
        assert deploying.returncode == -9, stderr
        # The instant the issue names: the include names green, nginx still serves blue, both run.
        assert nginx.include.read_text() == f"set $service_url http://{world.network.green_ip}:8080;\n", stderr
        assert world.state("green") == "running" and world.state("blue") == "running"
        assert nginx.get().text == V1 + "\n"
        # status does not take the include's word for it ...
        report = status(env, tmp_path)
        assert report["switch_problem"].startswith(f"nginx was not seen loading {nginx.include} (it names "
                                                   f"{world.network.green_ip}:8080; ")
        # ... and a plain deploy settles what nginx serves before it touches anything.
        result = ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v3"}, tmp_path))
        time.sleep(0.5)
        report = traffic.stop()
    assert "taking over a stale lock" in result.stderr
    assert "settling what nginx serves: nginx was not seen loading" in result.stderr
    assert report.failed == 0, f"{report.failed} failed requests: {report.failures[:5]}"
    assert report.ok > 20
    assert set(report.versions) <= {V1, "version=v2 color=green", "version=v3 color=blue"}
    # The next deploy succeeded, nginx serves it, status says so, one container of ours runs.
    assert nginx.get().text == "version=v3 color=blue\n"
    after = status(env, tmp_path)
    assert after["switch_problem"] is None
    assert (after["live_color"], after["live_version"]) == ("blue", "v3")
    assert after["releases"]["live"]["version"] == "v3"
    assert [c.name for c in world.running_containers()] == [f"{world.app}-blue"]


def test_a_reload_that_exits_0_without_reloading_is_a_failed_switch(world, nginx, settings_env, live_v1, tmp_path):
    # `true` as the reload command: nginx never loads the new include. NETWORK_TIMEOUT=6 makes
    # the switch wait 3 s for new workers (half of it).
    env = {**settings_env, "APP_VERSION": "v2", "NGINX_RELOAD_COMMAND": "true", "NETWORK_TIMEOUT": "6",
           "VERIFY_SECONDS": "5", "NGINX_ACCESS_LOG": str(nginx.access_log)}
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        result = run_pipeline(["deploy"], env, tmp_path)
        assert result.returncode == 1, result.stderr
        line = error_line(result.stderr)
        assert line == ("pipeline: error: `true` exited 0, but nginx was not seen loading the new live include "
                        "within 3s (its worker processes were not replaced, see nginx's error log); put the old "
                        "live include back"), line
        assert_switch_undone(world, nginx, live_v1, result, traffic, settings_env, tmp_path)


def test_a_reload_that_fails_when_nginx_loads_it_is_a_failed_switch(world, nginx, settings_env, live_v1, tmp_path):
    # A config `nginx -t` accepts and the master cannot load: a second `listen` on a port another
    # process holds. The master logs the bind error and keeps its old workers (and blue).
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    conf = nginx.directory / "app.conf"
    shipped = conf.read_text()
    port = taken.getsockname()[1]
    conf.write_text(shipped.replace(f"listen 127.0.0.1:{nginx.port};",
                                    f"listen 127.0.0.1:{nginx.port}; listen 127.0.0.1:{port};", 1))
    assert conf.read_text() != shipped
    env = {**settings_env, "APP_VERSION": "v2", "NETWORK_TIMEOUT": "6", "VERIFY_SECONDS": "5",
           "NGINX_ACCESS_LOG": str(nginx.access_log)}
    try:
        with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
            result = run_pipeline(["deploy"], env, tmp_path)
            assert result.returncode == 1, result.stderr
            line = error_line(result.stderr)
            assert line == (f"pipeline: error: `{nginx.reload_command}` exited 0, but nginx was not seen loading "
                            f"the new live include within 3s (its worker processes were not replaced, see "
                            f"nginx's error log); put the old live include back"), line
            assert "Address already in use" in nginx.error_log.read_text()
            conf.write_text(shipped)
            assert_switch_undone(world, nginx, live_v1, result, traffic, settings_env, tmp_path)
    finally:
        taken.close()


def assert_switch_undone(world, nginx, include_before, result, traffic, settings_env, tmp_path):
    """The switch is not done: the old include back, nginx still on blue (as written down beside
    the include), verification never started, blue not stopped; the next deploy works."""
    assert nginx.include.read_text() == include_before
    assert (nginx.directory / "service-url.inc.loaded").read_text() == include_before
    assert "verifying" not in result.stderr and "draining" not in result.stderr, result.stderr
    assert world.state("blue") == "running"
    assert world.state("green") == "absent", "the new container is removed: nginx never loaded its include"
    time.sleep(0.5)
    report = traffic.stop()
    assert report.failed == 0, f"{report.failed} failed requests: {report.failures[:5]}"
    assert report.ok > 20 and set(report.versions) == {V1}
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v3"}, tmp_path))
    assert nginx.get().text == "version=v3 color=green\n"
    assert [c.name for c in world.running_containers()] == [f"{world.app}-green"]


def test_a_pid_file_that_is_not_there_is_a_preflight_error(world, nginx, settings_env, live_v1, tmp_path):
    missing = nginx.directory / "elsewhere.pid"
    result = run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v2", "NGINX_PID_FILE": str(missing)}, tmp_path)
    assert result.returncode == 3, result.stderr
    assert error_line(result.stderr) == (
        f"pipeline: error: NGINX_PID_FILE={missing}: no such file on the nginx host (this machine); set it to the "
        f"path in nginx's `pid` directive (the switch reads it to see a reload replace nginx's workers), and is "
        f"nginx running?")
    assert nginx.include.read_text() == live_v1 and world.state("green") == "absent"
    wait_for(lambda: nginx.get().text == V1 + "\n", 1, what="blue still served")
