"""Verification under live traffic after the switch, and the switch back (issue 10), on the real
stack, in both switch modes.

The demo plays the bad releases: FAIL_RATE=0.3 answers 500 to 30% of requests but keeps its
health fine; HEALTH_FAIL_AFTER=3 starts failing health 3 s after its first healthy answer. Each
release's knobs reach its container through CONTAINER_ENV_FILE. Load: wrk through nginx with a
new connection per request, paced to at most 16 x 100 req/s (bounded by wrk's -d); the bound on
the switch-back is read from nginx's own log, with $msec added to the test's copy of the format
(timeline.log_msec). Verification windows are kept short (VERIFY_SECONDS=4), except where a test
shows the switch back does not wait for the window to end.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Dict

import pytest

from teststack import loadgen
from teststack import switchmodes
from teststack.realstack import Nginx, run_pipeline, start_pipeline, wait_for
from teststack.timeline import Timeline, bad_window, log_msec

pytestmark = pytest.mark.integration

V1 = "version=v1 color=blue"
# Tripwires, not figures (docs/benchmarks.md, "Timed assertions and their tripwires"); the figures,
# and the rate they hold at, are `python -m bench.verify_switchback`'s.
# From the first bad answer to traffic back on the old release: 10x the slowest of this test's
# own runs (reload, 1.44 s, 2026-12-01; 0.27-0.56 s on 2026-12-04).
BACK_TRIPWIRE = 14.4
# The whole deploy of a release whose health fails 3 s after the switch: 10x what it took
# (8.3 s reload, 8.5 s live, 2026-12-04); its verification window (120 s) is longer still.
HEALTH_FAIL_TRIPWIRE = 85.0


@pytest.fixture(params=["reload", "live"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def nginx(mode_nginx: Nginx) -> Nginx:
    """Overrides conftest's: the nginx for this module's `mode`."""
    return mode_nginx


@pytest.fixture
def env(world, nginx, stack, tmp_path) -> Dict[str, str]:
    """The demo starting at once, verification on for 4 s, nginx's access log where it is."""
    settings = switchmodes.deploy_env(world.app, world.network, nginx, stack, tmp_path, starts_at_once=True)
    settings.update(VERIFY_SECONDS="4", NGINX_ACCESS_LOG=str(nginx.access_log), DRAIN_SECONDS="0.5")
    return settings


@pytest.fixture
def ssh(stack) -> Dict[str, str]:
    return {"NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": stack["SSH_PORT"], "NGINX_SSH_USER": "root",
            "NGINX_SSH_KEY": stack["SSH_KEY"], "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"]}


def knobs(tmp_path: Path, name: str, **values: str) -> str:
    path = tmp_path / f"{name}.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return str(path)


def deploy(env: Dict[str, str], cwd: Path, version: str, **overrides: str):
    return run_pipeline(["deploy"], {**env, "APP_VERSION": version, **overrides}, cwd, timeout=120)


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def load(nginx: Nginx, seconds: int = 60) -> loadgen.Load:
    return loadgen.Load(f"http://127.0.0.1:{nginx.port}/", profile="close", connections=16, seconds=seconds,
                        pause_ms=10)


def history(env: Dict[str, str], cwd: Path) -> list:
    return json.loads(ok(run_pipeline(["history", "--json"], env, cwd)).stdout)


# -- a bad release is switched back, fast -------------------------------------------------------------

@pytest.mark.parametrize("mode,over_ssh", [("reload", False), ("reload", True), ("live", False)],
                         ids=["reload-local", "reload-over-ssh", "live-local"], indirect=["mode"])
def test_a_release_answering_500_to_30_percent_is_switched_back_within_seconds(
        request, world, nginx, env, tmp_path, mode, over_ssh):
    if over_ssh:
        env = {**env, **request.getfixturevalue("ssh")}
    log_msec(nginx)   # this test's nginx only: time-stamps every request to the millisecond
    ok(deploy(env, tmp_path, "v1"))
    with load(nginx) as wrk:
        time.sleep(1)
        failed = deploy(env, tmp_path, "v2", CONTAINER_ENV_FILE=knobs(tmp_path, "bad", FAIL_RATE="0.3"))
        time.sleep(1)
    result = wrk.result
    green = bad_window(nginx.access_log, f"{world.network.green_ip}:8080")
    print(f"\n{mode}{'-ssh' if over_ssh else ''}: green served its last request {green.back_after}s after its "
          f"first 500; {green.errors} 5xx of {green.requests}; {result.line()}")

    assert failed.returncode == 1, failed.stderr
    assert "pipeline: error: switched back to blue: green answered 5xx to" in failed.stderr
    assert "(limit 1.0%; commonest: 200 x" in failed.stderr and ", 500 x" in failed.stderr
    assert nginx.get().text == V1 + "\n"
    assert world.state("green") == "absent" and world.state("blue") == "running"
    last = history(env, tmp_path)[-1]
    assert (last["action"], last["version"], last["result"]) == ("deploy", "v2", "switched back")
    assert "5xx to" in last["message"] and "requests" in last["message"] and "commonest" in last["message"]
    assert green.errors > 0 and green.back_after is not None, green
    assert green.back_after <= BACK_TRIPWIRE, f"traffic back on v1 {green.back_after:.2f}s after the first bad answer"
    assert nginx.get().text == V1 + "\n"
    # Nothing of the bad release is a rollback target.
    assert run_pipeline(["rollback"], env, tmp_path).returncode == 5


def test_good_releases_under_the_same_load_are_never_switched_back(world, nginx, env, tmp_path, mode):
    ok(deploy(env, tmp_path, "v1"))
    with load(nginx, seconds=90) as wrk:
        time.sleep(0.5)
        results = [deploy(env, tmp_path, version) for version in ("v2", "v3", "v4")]
    switched_back = [r for r in results if r.returncode != 0]
    print(f"\n{mode}: {len(results)} good deploys under load, {len(switched_back)} switched back; "
          f"{wrk.result.line()}")
    assert not switched_back, switched_back[0].stderr
    assert nginx.get().text == "version=v4 color=green\n"
    for entry in history(env, tmp_path)[1:]:
        assert entry["result"] == "ok" and "verified for 4s: 0 5xx of" in entry["message"], entry
    assert world.state("blue") == "exited"   # the old release is stopped as before


def test_a_release_whose_health_fails_3s_after_the_switch_is_switched_back(world, nginx, env, tmp_path, mode):
    ok(deploy(env, tmp_path, "v1"))
    with load(nginx):
        started = time.monotonic()
        # A window far longer than the tripwire: a switch back only at its end would trip it.
        failed = deploy(env, tmp_path, "v2", VERIFY_SECONDS="120",
                        CONTAINER_ENV_FILE=knobs(tmp_path, "sick", HEALTH_FAIL_AFTER="3"))
        took = time.monotonic() - started
    assert failed.returncode == 1, failed.stderr
    assert "switched back to blue: green's health failed 2 times in a row (last: HTTP 503" in failed.stderr
    assert nginx.get().text == V1 + "\n" and world.state("green") == "absent"
    print(f"\n{mode}: health failing 3 s after the switch: switched back, the deploy took {took:.1f}s")
    assert took < HEALTH_FAIL_TRIPWIRE, f"switched back {took:.0f}s into the deploy, not soon after health failed"
    assert history(env, tmp_path)[-1]["result"] == "switched back"


# -- smoke command, verification off ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["reload"], indirect=True)
def test_a_failing_smoke_command_switches_nothing_and_a_passing_one_deploys(world, nginx, env, tmp_path):
    ok(deploy(env, tmp_path, "v1"))
    include = nginx.include.read_text()
    failing = deploy(env, tmp_path, "v2", SMOKE_COMMAND='echo "smoke against $SMOKE_URL"; exit 3')
    assert failing.returncode == 1, failing.stderr
    assert f"| smoke against http://{world.network.green_ip}:8080" in failing.stderr   # output streamed
    assert "SMOKE_COMMAND exited with 3" in failing.stderr and "nothing was switched" in failing.stderr
    assert "switching nginx" not in failing.stderr
    assert nginx.include.read_text() == include and nginx.get().text == V1 + "\n"
    assert world.state("green") == "absent"

    # The smoke command really reaches the new release, before the switch.
    passing = ok(deploy(env, tmp_path, "v2", SMOKE_COMMAND='curl -fsS "$SMOKE_URL/" | grep -q "version=v2"'))
    assert passing.stderr.index("smoke command passed") < passing.stderr.index("switching nginx to green")
    assert nginx.get().text == "version=v2 color=green\n"


@pytest.mark.parametrize("mode", ["reload"], indirect=True)   # off is off in either mode; the suite runs live with it
def test_verify_seconds_0_behaves_as_before(world, nginx, env, tmp_path):
    env = {**env, "VERIFY_SECONDS": "0", "NGINX_ACCESS_LOG": "/nonexistent/app.access.log"}
    ok(deploy(env, tmp_path, "v1"))
    second = ok(deploy(env, tmp_path, "v2", CONTAINER_ENV_FILE=knobs(tmp_path, "bad", FAIL_RATE="0.3")))
    assert "verifying" not in second.stderr and "draining" in second.stderr
    assert world.state("blue") == "exited" and world.state("green") == "running"
    assert history(env, tmp_path)[-1]["message"] == "v2 live on green"


# -- promote, signals, KEEP_PREVIOUS_RUNNING ----------------------------------------------------------

@pytest.mark.parametrize("mode", ["live"], indirect=True)
def test_promote_verifies_like_deploy(world, nginx, env, tmp_path):
    env = {**env, "NGINX_PREVIEW_INCLUDE": str(nginx.preview_include)}
    ok(deploy(env, tmp_path, "v1"))
    ok(run_pipeline(["deploy", "--no-promote"], {**env, "APP_VERSION": "v2",
                                                 "CONTAINER_ENV_FILE": knobs(tmp_path, "bad", FAIL_RATE="0.3")},
                    tmp_path))
    with load(nginx, seconds=30):
        promoted = run_pipeline(["promote"], env, tmp_path)
    assert promoted.returncode == 1, promoted.stderr
    assert "switched back to blue: green answered 5xx" in promoted.stderr
    assert nginx.get().text == V1 + "\n" and world.state("green") == "absent"
    assert history(env, tmp_path)[-1]["action"] == "promote"


@pytest.mark.parametrize("mode", ["reload"], indirect=True)
def test_sigterm_during_verification_switches_back_to_the_running_old_release(world, nginx, env, tmp_path):
    ok(deploy(env, tmp_path, "v1"))
    with load(nginx, seconds=60) as wrk:
        deploying = start_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "VERIFY_SECONDS": "30"}, tmp_path)
        wait_for(lambda: nginx.get().text == "version=v2 color=green\n", 60, 0.1, "v2 live")
        time.sleep(1)
        deploying.send_signal(signal.SIGTERM)
        _, stderr = deploying.communicate(timeout=30)
        time.sleep(0.5)
    assert deploying.returncode == 143, stderr
    assert "interrupted by SIGTERM during verification; switched back to blue" in stderr
    assert nginx.get().text == V1 + "\n"
    assert world.state("green") == "absent" and world.state("blue") == "running"
    assert history(env, tmp_path)[-1]["result"] == "switched back"
    assert wrk.result.connect_errors == 0 and wrk.result.non_2xx == 0, wrk.result.line()


def test_keep_previous_running_makes_rollback_a_switch_only(world, nginx, env, tmp_path, mode):
    env = {**env, "KEEP_PREVIOUS_RUNNING": "true", "DRAIN_SECONDS": "0"}
    ok(deploy(env, tmp_path, "v1"))
    second = ok(deploy(env, tmp_path, "v2"))
    assert "kept running out of traffic" in second.stderr
    assert world.state("blue") == "running" and nginx.get().text == "version=v2 color=green\n"

    url = f"http://127.0.0.1:{nginx.port}/"
    with Timeline(url, every=0.005) as timeline:
        time.sleep(0.3)
        started = time.monotonic()
        rolled = ok(run_pipeline(["rollback"], env, tmp_path))
        time.sleep(0.2)
    served = timeline.first(lambda a: a.body == V1 and a.at > started)
    print(f"\n{mode}: rollback to a running release: v1 served {served.at - started:.2f}s after the command started")
    assert "starting kept container" not in rolled.stderr
    assert nginx.get().text == V1 + "\n"
    assert all(a.status == 200 for a in timeline.answers), [a for a in timeline.answers if a.status != 200][:3]
    assert world.state("green") == "running", "the release rolled back from stays running too"
    # The next deploy replaces the kept one.
    ok(deploy(env, tmp_path, "v3"))
    assert nginx.get().text == "version=v3 color=green\n" and world.state("blue") == "running"


# -- the engine failing inside the window (issue 15) --------------------------------------------------

def test_the_engine_gone_during_verification_switches_back_and_no_request_fails(world, nginx, env, tmp_path, mode):
    """A docker call that fails inside the window (here every one: the tool's engine socket is cut
    after the switch) is a failed verification: traffic goes back to blue, the run exits 1 and
    says which call failed; the green container, which the engine can no longer remove, is
    replaced by the next deploy."""
    from .outside import DockerRelay

    ok(deploy(env, tmp_path, "v1"))
    relay = DockerRelay(tmp_path / "docker.sock")
    try:
        with load(nginx) as wrk:
            time.sleep(0.5)
            deploying = start_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "VERIFY_SECONDS": "30",
                                                    "DOCKER_HOST": relay.docker_host}, tmp_path)
            wait_for(lambda: nginx.get().text == "version=v2 color=green\n", 60, 0.1, "v2 live")
            time.sleep(1)   # inside the window
            relay.kill()
            _, stderr = deploying.communicate(timeout=60)
            time.sleep(0.5)
    finally:
        relay.kill()
    result = wrk.result
    print(f"\n{mode}: engine cut during verification: {result.line()}")
    assert deploying.returncode == 1, stderr
    # The window's watch asks the engine that green still holds its address (the container, then its
    # network): the engine can vanish during either question.
    said = (f"pipeline: error: switched back to blue: verification could not go on: docker engine at "
            f"{relay.docker_host}: ")
    assert (f"{said}inspecting container {world.app}-green: " in stderr
            or f"{said}listing networks named {world.network.name}: " in stderr), stderr
    assert f"could not remove {world.app}-green" in stderr and "Traceback" not in stderr
    assert nginx.get().text == V1 + "\n"
    assert result.failed == 0, result.line()
    assert result.versions().get("version=v2 color=green", 0) > 0, "the load crossed the switch to v2 and back"
    assert world.state("blue") == "running" and world.state("green") == "running"
    last = history(env, tmp_path)[-1]
    assert (last["version"], last["result"]) == ("v2", "switched back")
    assert run_pipeline(["rollback"], env, tmp_path).returncode == 5, "v2 is no rollback target"
    ok(deploy(env, tmp_path, "v3"))
    assert nginx.get().text == "version=v3 color=green\n"
