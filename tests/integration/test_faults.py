"""Failed deploys under load (issue: zero downtime under faults).

Each fault ends with the old version still served to every request, the include unchanged, no
container of the failed release running, a clear message, a documented exit code, and the next
deploy working.
"""
from __future__ import annotations

import signal
import time

import pytest

from teststack.realstack import run_pipeline, start_pipeline, wait_for
from teststack.traffic import Traffic

pytestmark = pytest.mark.integration

# Tripwires, not figures (docs/benchmarks.md, "Timed assertions and their tripwires"): 10x what the
# whole failed deploy took on the 2-CPU CI machine, 2026-12-04, with other suites running.
CRASH_NOTICED_TRIPWIRE = 31.0       # measured 3.1 s (HEALTH_INTERVAL=10, HEALTH_TIMEOUT=120)
HANGING_REGISTRY_TRIPWIRE = 67.0    # measured 6.7 s (NETWORK_TIMEOUT=5)


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def env_file(tmp_path, text):
    path = tmp_path / "container.env"
    path.write_text(text + "\n")
    return str(path)


@pytest.fixture
def live_v1(world, nginx, settings_env, tmp_path):
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    assert nginx.get().text == "version=v1 color=blue\n"
    return nginx.include.read_text()


def assert_old_still_serves(world, nginx, include_before, traffic, settings_env, tmp_path):
    report = traffic.stop()
    assert report.failed == 0, f"{report.failed} failed requests: {report.failures[:5]}"
    assert report.ok > 20
    assert set(report.versions) == {"version=v1 color=blue"}
    assert nginx.include.read_text() == include_before
    assert world.state("green") == "absent", "no container of the failed release is left"
    # The next deploy works.
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v3"}, tmp_path))
    assert nginx.get().text == "version=v3 color=green\n"


def test_release_that_never_becomes_healthy(world, nginx, settings_env, live_v1, tmp_path):
    env = {**settings_env, "APP_VERSION": "v2", "HEALTH_TIMEOUT": "3",
           "CONTAINER_ENV_FILE": env_file(tmp_path, "HEALTH_FAIL=1")}
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        result = run_pipeline(["deploy"], env, tmp_path)
        assert result.returncode == 1
        assert "/actuator/health did not answer 200 after" in result.stderr
        assert "last: HTTP 503" in result.stderr
        assert "container log:" in result.stderr
        assert_old_still_serves(world, nginx, live_v1, traffic, settings_env, tmp_path)


def test_release_that_crashes_on_start_is_detected_at_once(world, nginx, settings_env, live_v1, tmp_path):
    env = {**settings_env, "APP_VERSION": "v2", "HEALTH_TIMEOUT": "120", "HEALTH_INTERVAL": "10",
           "CONTAINER_ENV_FILE": env_file(tmp_path, "CRASH_ON_START=1")}
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        started = time.monotonic()
        result = run_pipeline(["deploy"], env, tmp_path)
        elapsed = time.monotonic() - started
        print(f"crash on start: deploy failed after {elapsed:.1f}s")
        assert result.returncode == 1
        assert "stopped while starting" in result.stderr
        assert "CRASH_ON_START" in result.stderr          # the container's own last words
        # Found by watching the container, not by waiting out HEALTH_TIMEOUT (120 s): a tripwire
        # at 10x the measured figure (docs/benchmarks.md, "Timed assertions and their tripwires").
        assert elapsed < CRASH_NOTICED_TRIPWIRE, f"crash noticed after {elapsed:.1f}s"
        assert_old_still_serves(world, nginx, live_v1, traffic, settings_env, tmp_path)


# Commands that really run nginx, and fail: against a config that does not exist.
@pytest.mark.parametrize("setting,argv,expected", [
    ("NGINX_TEST_COMMAND", "nginx -t", ("nginx rejected the new live include; put the old one back", "missing.conf")),
    ("NGINX_RELOAD_COMMAND", "nginx -s reload", ("nginx reload failed; put the old live include back",)),
], ids=["test-fails", "reload-fails"])
def test_nginx_command_failure_restores_the_include(world, nginx, settings_env, live_v1, tmp_path,
                                                    setting, argv, expected):
    env = {**settings_env, "APP_VERSION": "v2",
           setting: f"{argv} -p {nginx.directory} -c {nginx.directory}/missing.conf"}
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        result = run_pipeline(["deploy"], env, tmp_path)
        assert result.returncode == 1
        for words in expected:
            assert words in result.stderr
        assert_old_still_serves(world, nginx, live_v1, traffic, settings_env, tmp_path)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_deploy_cleans_up_then_exits(world, nginx, settings_env, live_v1, tmp_path, signum, code):
    env = {**settings_env, "APP_VERSION": "v2", "HEALTH_TIMEOUT": "60",
           "CONTAINER_ENV_FILE": env_file(tmp_path, "STARTUP_DELAY_MS=30000")}
    lock_file = nginx.include.parent / f"{world.app}.deploy.lock"
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        deploying = start_pipeline(["deploy"], env, tmp_path)
        wait_for(lambda: world.state("green") == "running", 60, 0.05, "the new container")
        time.sleep(0.5)   # inside the health wait
        deploying.send_signal(signum)
        _, stderr = deploying.communicate(timeout=30)
        assert deploying.returncode == code, stderr
        assert f"interrupted by {signal.Signals(signum).name}" in stderr
        assert "removing" in stderr
        assert not lock_file.exists(), "the lock is released on a signal"
        assert_old_still_serves(world, nginx, live_v1, traffic, settings_env, tmp_path)


def test_sigkill_mid_deploy_is_recovered_by_the_next_deploy(world, nginx, settings_env, live_v1, tmp_path):
    env = {**settings_env, "APP_VERSION": "v2", "HEALTH_TIMEOUT": "60",
           "CONTAINER_ENV_FILE": env_file(tmp_path, "STARTUP_DELAY_MS=30000")}
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        deploying = start_pipeline(["deploy"], env, tmp_path)
        wait_for(lambda: world.state("green") == "running", 60, 0.05, "the new container")
        time.sleep(0.5)
        deploying.send_signal(signal.SIGKILL)
        deploying.communicate(timeout=10)
        # Nothing could clean up: the half-started release and the lock are left behind ...
        assert world.state("green") == "running"
        assert nginx.include.read_text() == live_v1
        # ... and the next deploy recovers by itself: takes the stale lock, replaces the leftover.
        result = ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v3"}, tmp_path))
        assert "taking over a stale lock" in result.stderr
        report = traffic.stop()
    assert report.failed == 0, report.failures[:5]
    assert set(report.versions) <= {"version=v1 color=blue", "version=v3 color=green"}
    assert nginx.get().text == "version=v3 color=green\n"
    assert world.container("green").labels["pipeline.version"] == "v3"


def test_docker_daemon_restart_while_live_keeps_serving(world, nginx, settings_env, live_v1, tmp_path):
    import subprocess

    from teststack.realstack import REPO

    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        time.sleep(0.5)
        restart = subprocess.run(["bash", str(REPO / "scripts" / "stack.sh"), "restart-dockerd"],
                                 capture_output=True, text=True, timeout=120)
        assert restart.returncode == 0, restart.stderr
        time.sleep(0.5)
        report = traffic.stop()
    assert report.failed == 0, report.failures[:5]
    assert set(report.versions) == {"version=v1 color=blue"} and report.ok > 20
    assert world.state("blue") == "running"
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v2"}, tmp_path))
    assert nginx.get().text == "version=v2 color=green\n"


def test_include_written_but_never_reloaded_does_not_mislead_the_next_deploy(world, nginx, settings_env,
                                                                              live_v1, tmp_path):
    # What a SIGKILL between "include written" and "nginx reloaded" leaves: the include names green,
    # nothing runs there, and nginx still serves blue from its loaded config.
    nginx.include.write_text(f"set $service_url http://{world.network.green_ip}:8080;\n")
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        result = ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v2"}, tmp_path))
        report = traffic.stop()
    assert "which is not running; blue is, so it is treated as live" in result.stderr
    assert report.failed == 0, report.failures[:5]
    assert nginx.get().text == "version=v2 color=green\n"
    assert world.state("blue") == "exited"


# -- the fault matrix of outside parts (issue 8, section 2) ---------------------------------------
# Each fault: one error line naming the part, a documented exit code, the old release served all
# along, the include naming a running container of ours (here: unchanged), the next deploy working.

def error_line(stderr: str) -> str:
    """The run's one error line; no traceback, no 'internal error'."""
    lines = [line for line in stderr.splitlines() if line.startswith("pipeline: ")]
    assert len(lines) == 1 and lines[0].startswith("pipeline: error: "), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return lines[0]


def assert_served_and_recovers(world, nginx, include_before, traffic, settings_env, tmp_path,
                               version="v3"):
    report = traffic.stop()
    assert report.failed == 0, f"{report.failed} failed requests: {report.failures[:5]}"
    assert report.ok > 20
    assert set(report.versions) == {"version=v1 color=blue"}
    assert nginx.include.read_text() == include_before
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": version}, tmp_path))
    assert nginx.get().text == f"version={version} color=green\n"


def test_no_sftp_subsystem_is_a_preflight_error(world, nginx, settings_env, ssh_env, stack, live_v1, tmp_path):
    from .outside import OwnSshd

    sshd = OwnSshd(stack, tmp_path / "sshd", sftp=False)
    try:
        with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
            result = run_pipeline(["deploy"], {**sshd.env(ssh_env), "APP_VERSION": "v2"}, tmp_path)
            assert result.returncode == 3, result.stderr
            line = error_line(result.stderr)
            assert line.startswith(f"pipeline: error: nginx host root@127.0.0.1:{sshd.port} over SFTP: "
                                   "starting the SFTP subsystem: "), line
            assert "Subsystem sftp" in line
            assert world.state("green") == "absent"
            assert_served_and_recovers(world, nginx, live_v1, traffic, settings_env, tmp_path)
    finally:
        sshd.stop()


# Run as NGINX_TEST_COMMAND over SSH: the first time, kill -9 the sshd process serving this
# session (the connection drops mid-switch); afterwards, the real test.
KILL_OWN_SESSION = (
    'if [ ! -e {mark} ]; then touch {mark}; p=$$; '
    'while ! grep -q "^sshd" /proc/$p/comm; do p=$(cut -d" " -f4 /proc/$p/stat); done; '
    'kill -9 $p; sleep 10; fi; exec {test}'
)


def test_ssh_session_killed_during_the_switch(world, nginx, settings_env, ssh_env, live_v1, tmp_path):
    import shlex

    mark = tmp_path / "killed-once"
    killer = KILL_OWN_SESSION.format(mark=mark, test=nginx.test_command)
    env = {**ssh_env, "APP_VERSION": "v2", "NGINX_TEST_COMMAND": shlex.join(["sh", "-c", killer])}
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        result = run_pipeline(["deploy"], env, tmp_path)
        assert mark.exists(), result.stderr
        assert result.returncode == 1, result.stderr
        line = error_line(result.stderr)
        assert line.startswith("pipeline: error: nginx host root@127.0.0.1:"), line
        assert " over SSH: running `sh -c " in line
        assert line.endswith("; put the old live include back and reloaded nginx"), line
        assert "connecting again" in result.stderr
        assert world.state("green") == "absent", "the include is back on blue: green is removed"
        assert_served_and_recovers(world, nginx, live_v1, traffic, settings_env, tmp_path)


def test_docker_engine_gone_during_the_health_wait(world, nginx, settings_env, live_v1, tmp_path):
    from .outside import DockerRelay

    relay = DockerRelay(tmp_path / "docker.sock")
    env = {**settings_env, "APP_VERSION": "v2", "DOCKER_HOST": relay.docker_host, "HEALTH_TIMEOUT": "60",
           "CONTAINER_ENV_FILE": env_file(tmp_path, "STARTUP_DELAY_MS=30000")}
    try:
        with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
            deploying = start_pipeline(["deploy"], env, tmp_path)
            wait_for(lambda: world.state("green") == "running", 60, 0.05, "the new container")
            time.sleep(1.0)   # inside the health wait
            relay.kill()
            _, stderr = deploying.communicate(timeout=30)
            assert deploying.returncode == 1, stderr
            line = error_line(stderr)
            # Each health probe first asks the engine that green still holds its address (the container,
            # then its network): the engine can vanish during either question.
            part = f"pipeline: error: docker engine at {relay.docker_host}: "
            assert line.startswith((f"{part}inspecting container {world.app}-green: ",
                                    f"{part}listing networks named {world.network.name}: ")), line
            # It cannot be removed through an engine that is gone: said, and left to the next deploy.
            assert f"could not remove {world.app}-green" in stderr and "the next deploy replaces it" in stderr
            assert_served_and_recovers(world, nginx, live_v1, traffic, settings_env, tmp_path)
    finally:
        relay.kill()


def test_hanging_registry_fails_the_deploy_within_network_timeout(world, nginx, settings_env, live_v1, tmp_path):
    from .outside import SilentListener

    registry = SilentListener()
    env = {**settings_env, "APP_VERSION": "v2", "REGISTRY": f"127.0.0.1:{registry.port}", "NETWORK_TIMEOUT": "5"}
    try:
        with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
            started = time.monotonic()
            result = run_pipeline(["deploy"], env, tmp_path, timeout=HANGING_REGISTRY_TRIPWIRE + 60)
            elapsed = time.monotonic() - started
            print(f"hanging registry: deploy failed after {elapsed:.1f}s (NETWORK_TIMEOUT=5)")
            assert result.returncode == 1, result.stderr
            line = error_line(result.stderr)
            assert line.startswith(f"pipeline: error: registry 127.0.0.1:{registry.port}: docker push "), line
            assert line.endswith("no answer within 5s (NETWORK_TIMEOUT)"), line
            assert registry.accepted, "the engine did reach the silent registry"
            # Ended by NETWORK_TIMEOUT, not hung: a tripwire at 10x the measured figure.
            assert elapsed < HANGING_REGISTRY_TRIPWIRE, f"the hanging registry held the deploy for {elapsed:.0f}s"
            assert world.state("green") == "absent", "no container of the failed release"
            assert_served_and_recovers(world, nginx, live_v1, traffic, settings_env, tmp_path)
    finally:
        registry.stop()


@pytest.mark.parametrize("over_ssh", [False, True], ids=["local-nginx", "nginx-over-ssh"])
def test_history_not_writable_is_a_preflight_error(world, nginx, settings_env, ssh_env, live_v1, tmp_path,
                                                   over_ssh):
    # A directory where the history file should be: no open for append succeeds, not even root's.
    history = nginx.include.parent / f"{world.app}.history.jsonl"
    kept = history.read_text()
    history.unlink()
    history.mkdir()
    env = {**(ssh_env if over_ssh else settings_env), "APP_VERSION": "v2"}
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        result = run_pipeline(["deploy"], env, tmp_path)
        assert result.returncode == 3, result.stderr
        line = error_line(result.stderr)
        assert line.startswith(f"pipeline: error: history {history}: cannot append on the nginx host ("), line
        assert world.state("green") == "absent"
        assert not (nginx.include.parent / f"{world.app}.deploy.lock").exists()
        history.rmdir()
        history.write_text(kept)
        assert_served_and_recovers(world, nginx, live_v1, traffic, settings_env, tmp_path)
    assert [e["version"] for e in map(__import__("json").loads, history.read_text().splitlines())] == ["v1", "v3"]


def test_damaged_lock_file_is_refused_and_released_by_hand(world, nginx, settings_env, live_v1, tmp_path):
    lock = nginx.include.parent / f"{world.app}.deploy.lock"
    lock.write_bytes(b"\x00\x13garbage{not json\n")
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        result = run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v2"}, tmp_path)
        assert result.returncode == 4, result.stderr
        line = error_line(result.stderr)
        assert line.startswith(f"pipeline: error: deploy lock {lock} is damaged: not a lock pipeline wrote ("), line
        assert line.endswith("if no deploy is running, remove it with `python -m pipeline lock release`"), line
        assert world.state("green") == "absent"
        assert lock.exists(), "a lock the tool cannot read is never taken over silently"
        ok(run_pipeline(["lock", "release"], settings_env, tmp_path))
        assert not lock.exists()
        assert_served_and_recovers(world, nginx, live_v1, traffic, settings_env, tmp_path)


def test_include_that_cannot_be_put_back_leaves_the_new_release_running(world, nginx, settings_env, ssh_env,
                                                                         stack, live_v1, tmp_path):
    """The SSH session dies mid-switch and the nginx host stays unreachable: the include names
    the new release, so its container stays, and the message says what to run."""
    import shlex
    import subprocess

    from .outside import OwnSshd

    sshd = OwnSshd(stack, tmp_path / "sshd")
    mark = tmp_path / "killed-once"
    # Stop the sshd listener first (no reconnect), then cut this session.
    killer = f"kill {sshd.process.pid}; " + KILL_OWN_SESSION.format(mark=mark, test=nginx.test_command)
    env = {**sshd.env(ssh_env), "APP_VERSION": "v2", "NGINX_TEST_COMMAND": shlex.join(["sh", "-c", killer]),
           "NETWORK_TIMEOUT": "5"}
    try:
        with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
            result = run_pipeline(["deploy"], env, tmp_path)
            assert result.returncode == 1, result.stderr
            line = error_line(result.stderr)
            assert "then putting the old live include back failed (" in line, line
            assert line.endswith(f"On the nginx host, run `{env['NGINX_TEST_COMMAND']}` and "
                                 f"`{nginx.reload_command}`: "
                                 "nginx then serves what the include names, and the next deploy goes to the "
                                 "other color"), line
            # Neither the history nor the lock (both on the unreachable host) replaced the error.
            assert "could not append to history" in result.stderr
            assert "could not release the deploy lock" in result.stderr
            # Consistent: the include names green, and green runs; nginx was not reloaded.
            assert nginx.include.read_text() == f"set $service_url http://{world.network.green_ip}:8080;\n"
            assert world.state("green") == "running" and world.state("blue") == "running"
            assert nginx.get().text == "version=v1 color=blue\n"
            # What the message says to do (the plain test: the session killer is spent), then the next deploy.
            for command in (nginx.test_command, nginx.reload_command):
                subprocess.run(shlex.split(command), check=True)
            wait_for(lambda: nginx.get().text == "version=v2 color=green\n", 5, what="nginx to serve green")
            ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v3"}, tmp_path))
            assert nginx.get().text == "version=v3 color=blue\n"
            report = traffic.stop()
        assert report.failed == 0, report.failures[:5]
        assert set(report.versions) <= {"version=v1 color=blue", "version=v2 color=green", "version=v3 color=blue"}
    finally:
        sshd.stop()
