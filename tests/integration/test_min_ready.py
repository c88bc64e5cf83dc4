"""A release that answers health, then dies (issue 15), on the real stack under load through the
test's nginx, with VERIFY_SECONDS=0 (nothing else watches it after the switch).

The demo plays the release: EXIT_AFTER_HEALTHY=0.3 halts it with status 1 0.3 s after its first
healthy answer (to the tool's health gate); HEALTH_FAIL_AFTER=0.3 keeps it running but answering
503 to health from then on. Load: wrk through nginx, a new connection per request, 16 connections
paced 10 ms apart, bounded by wrk's -d.

- MIN_READY_SECONDS covers the death: the release is never switched to, not one request fails.
- Without it, the last look before the old color is stopped finds the new one not serving: traffic
  goes back to the old color, which was never stopped, and the run exits 1.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict

import pytest

from teststack import loadgen
from teststack.realstack import Nginx, run_pipeline

pytestmark = pytest.mark.integration

V1 = "version=v1 color=blue"


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def knobs(tmp_path: Path, **values: str) -> str:
    path = tmp_path / "release.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return str(path)


def load(nginx: Nginx) -> loadgen.Load:
    return loadgen.Load(f"http://127.0.0.1:{nginx.port}/", profile="close", connections=16, seconds=90,
                        pause_ms=10)


def last_entry(env: Dict[str, str], cwd: Path) -> dict:
    return json.loads(ok(run_pipeline(["history", "--json"], env, cwd)).stdout)[-1]


def started_at(world, color: str) -> str:
    """When the color's container last started: a stop and a start would change it."""
    container = world.container(color)
    container.reload()
    return container.attrs["State"]["StartedAt"]


@pytest.fixture
def live_v1(world, nginx, settings_env, tmp_path) -> str:
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    assert nginx.get().text == V1 + "\n"
    return nginx.include.read_text()


def test_min_ready_keeps_a_release_that_dies_after_its_gate_out_of_traffic(world, nginx, settings_env, live_v1,
                                                                             tmp_path):
    env = {**settings_env, "APP_VERSION": "v2", "VERIFY_SECONDS": "0", "MIN_READY_SECONDS": "3",
           "CONTAINER_ENV_FILE": knobs(tmp_path, EXIT_AFTER_HEALTHY="0.3")}
    with load(nginx) as wrk:
        time.sleep(1)
        failed = run_pipeline(["deploy"], env, tmp_path, timeout=120)
        time.sleep(0.5)
    result = wrk.result
    print(f"\nMIN_READY_SECONDS=3, a release dying 0.3 s after its first 200: {result.line()}")

    assert failed.returncode == 1, failed.stderr
    # "exited", or "restarting" (its restart policy): whichever the engine reports first.
    assert f"pipeline: error: {world.app}-green did not stay ready for MIN_READY_SECONDS=3: container " \
           f"{world.app}-green stopped (" in failed.stderr
    assert "EXIT_AFTER_HEALTHY=0.3, exiting with status 1" in failed.stderr   # its last words
    assert "switching nginx" not in failed.stderr
    assert nginx.include.read_text() == live_v1 and nginx.get().text == V1 + "\n"
    assert world.state("green") == "absent" and world.state("blue") == "running"
    assert last_entry(settings_env, tmp_path)["result"] == "failed"
    # Not one request failed: the dead release was never in traffic.
    assert result.failed == 0, result.line()
    assert set(result.versions()) == {V1} and result.requests > 100, result.line()
    # The next (good) release goes live with the same setting.
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v3", "MIN_READY_SECONDS": "1"}, tmp_path))
    assert nginx.get().text == "version=v3 color=green\n"


@pytest.mark.parametrize("knob,why", [
    ("EXIT_AFTER_HEALTHY", "container {app}-green stopped ("),
    ("HEALTH_FAIL_AFTER", "its health failed 2 times in a row (last: HTTP 503"),
], ids=["dies", "health-fails"])
def test_without_min_ready_the_last_look_switches_back_to_the_old_color_never_stopped(
        world, nginx, settings_env, live_v1, tmp_path, knob, why):
    blue_started = started_at(world, "blue")
    env = {**settings_env, "APP_VERSION": "v2", "VERIFY_SECONDS": "0", "DRAIN_SECONDS": "1",
           "CONTAINER_ENV_FILE": knobs(tmp_path, **{knob: "0.3"})}
    with load(nginx) as wrk:
        time.sleep(1)
        failed = run_pipeline(["deploy"], env, tmp_path, timeout=120)
        time.sleep(1)   # traffic after the run: all of it on v1
        after = loadgen.run(f"http://127.0.0.1:{nginx.port}/", seconds=2, profile="close", connections=4)
    print(f"\n{knob}=0.3 without MIN_READY_SECONDS: {wrk.result.line()}; after the run: {after.line()}")

    assert failed.returncode == 1, failed.stderr
    assert "switching nginx to green" in failed.stderr   # it did go live (nothing held it)
    assert f"pipeline: error: switched back to blue: {why.format(app=world.app)}" in failed.stderr
    assert f"in the last look before stopping {world.app}-blue" in failed.stderr
    assert f"stopping {world.app}-blue" not in failed.stderr.replace("before stopping", "")
    # The old color was never stopped (nor restarted), and serves again; nothing of v2 is left.
    assert world.state("blue") == "running" and started_at(world, "blue") == blue_started
    assert world.state("green") == "absent"
    assert nginx.get().text == V1 + "\n" and nginx.include.read_text() == live_v1
    assert after.failed == 0 and set(after.versions()) == {V1}, after.line()
    entry = last_entry(settings_env, tmp_path)
    assert (entry["version"], entry["result"]) == ("v2", "switched back")
    # v2 is no rollback target; the next deploy works.
    assert run_pipeline(["rollback"], settings_env, tmp_path).returncode == 5
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v3"}, tmp_path))
    assert nginx.get().text == "version=v3 color=green\n"
