"""Preview, manual promotion, rollback, the deploy lock, history and retention (issue: operations)."""
from __future__ import annotations

import json
import re
import time

import pytest

from teststack.realstack import run_pipeline, start_pipeline, wait_for
from teststack.traffic import Traffic

pytestmark = pytest.mark.integration


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


@pytest.fixture
def env(settings_env, nginx):
    return {**settings_env, "NGINX_PREVIEW_INCLUDE": str(nginx.preview_include)}


def test_no_promote_stages_behind_the_preview_and_promote_switches(world, nginx, env, tmp_path):
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    staged = ok(run_pipeline(["deploy", "--no-promote"], {**env, "APP_VERSION": "v2"}, tmp_path))
    assert "Run `promote` to switch" in staged.stderr
    # Live traffic untouched; the preview serves the staged release.
    assert nginx.get().text == "version=v1 color=blue\n"
    assert nginx.get(preview=True).text == "version=v2 color=green\n"
    assert world.state("blue") == "running" and world.state("green") == "running"

    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        promoted = ok(run_pipeline(["promote"], env, tmp_path))
        report = traffic.stop()
    assert "healthy after" in promoted.stderr          # health checked again before switching
    assert nginx.get().text == "version=v2 color=green\n"
    assert world.state("blue") == "exited"
    assert report.failed == 0, report.failures[:5]
    assert set(report.versions) == {"version=v1 color=blue", "version=v2 color=green"}


def test_promote_with_nothing_staged_is_a_clear_error(world, nginx, env, tmp_path):
    ok(run_pipeline(["deploy"], env, tmp_path))
    include = nginx.include.read_text()
    result = run_pipeline(["promote"], env, tmp_path)
    assert result.returncode == 5
    assert "nothing is staged" in result.stderr
    assert nginx.include.read_text() == include


def test_rollback_restarts_the_kept_release_under_load(world, nginx, env, tmp_path):
    # How fast is measured by `python -m bench.rollback_speed` (docs/benchmarks.md, "Rollback").
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v2"}, tmp_path))
    assert world.state("blue") == "exited"

    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        started = time.monotonic()
        ok(run_pipeline(["rollback"], {**env, "DRAIN_SECONDS": "0.5"}, tmp_path))
        elapsed = time.monotonic() - started
        report = traffic.stop()
    assert report.failed == 0, report.failures[:5]
    assert set(report.versions) == {"version=v1 color=blue", "version=v2 color=green"}
    assert nginx.get().text == "version=v1 color=blue\n"
    assert world.state("green") == "exited"     # the release rolled back from is kept, stopped
    switched = report.first_seen["version=v1 color=blue"] - started
    print(f"rollback from a stopped container: v1 served after {switched:.2f}s, "
          f"command done after {elapsed:.2f}s (drain 0.5s)")

    # And back again: rollback of the rollback.
    ok(run_pipeline(["rollback"], {**env, "DRAIN_SECONDS": "0"}, tmp_path))
    assert nginx.get().text == "version=v2 color=green\n"


def test_rollback_within_the_drain_window_skips_the_start(world, nginx, env, tmp_path):
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    # A deploy interrupted while draining leaves the old color running: the new one is live.
    deploying = start_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "DRAIN_SECONDS": "60"}, tmp_path)
    wait_for(lambda: nginx.get().text == "version=v2 color=green\n", 60, 0.1, "v2 live")
    time.sleep(0.3)
    deploying.send_signal(__import__("signal").SIGTERM)
    _, stderr = deploying.communicate(timeout=30)
    assert deploying.returncode == 143, stderr
    assert "left running, so `rollback` is instant" in stderr
    assert world.state("blue") == "running"

    # Issue 8: the old release left running by the drain is not "staged": promote changes nothing.
    include, preview = nginx.include.read_text(), nginx.preview_include.read_text()
    promote = run_pipeline(["promote"], env, tmp_path)
    assert promote.returncode == 5 and "nothing is staged" in promote.stderr, promote.stderr
    assert (nginx.include.read_text(), nginx.preview_include.read_text()) == (include, preview)
    assert nginx.get().text == "version=v2 color=green\n" and world.state("blue") == "running"

    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        started = time.monotonic()
        result = ok(run_pipeline(["rollback"], {**env, "DRAIN_SECONDS": "0"}, tmp_path))
        elapsed = time.monotonic() - started
        report = traffic.stop()
    assert report.failed == 0, report.failures[:5]
    assert "starting kept container" not in result.stderr
    assert nginx.get().text == "version=v1 color=blue\n"
    switched = report.first_seen["version=v1 color=blue"] - started
    print(f"rollback within the drain window: v1 served after {switched:.2f}s, command done after {elapsed:.2f}s")


def test_rollback_with_no_previous_release_changes_nothing(world, nginx, env, tmp_path):
    ok(run_pipeline(["deploy"], env, tmp_path))
    include = nginx.include.read_text()
    result = run_pipeline(["rollback"], env, tmp_path)
    assert result.returncode == 5
    assert "no previous release" in result.stderr
    assert nginx.include.read_text() == include and world.state("blue") == "running"


def test_concurrent_deploys_one_waits_or_fails_naming_the_holder(world, nginx, env, tmp_path):
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    slow = {**env, "APP_VERSION": "v2", "DRAIN_SECONDS": "3", "BUILD_TAG": "jenkins-shop-42"}
    first = start_pipeline(["deploy"], slow, tmp_path)
    lock_file = nginx.include.parent / f"{world.app}.deploy.lock"
    wait_for(lock_file.exists, 30, 0.02, "the first deploy's lock")
    second = run_pipeline(["deploy"], {**env, "APP_VERSION": "v3"}, tmp_path)
    assert second.returncode == 4, second.stderr
    assert "jenkins-shop-42" in second.stderr and "deploy of v2" in second.stderr
    status = ok(run_pipeline(["lock", "status"], env, tmp_path))
    assert "locked: jenkins-shop-42" in status.stdout
    # A third one waits its turn instead.
    third = ok(run_pipeline(["deploy", "--lock-wait", "60"], {**env, "APP_VERSION": "v3"}, tmp_path))
    assert "waiting up to 60s for the deploy lock" in third.stderr
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert nginx.get().text == "version=v3 color=blue\n"
    assert not lock_file.exists()
    assert ok(run_pipeline(["lock", "status"], env, tmp_path)).stdout == "unlocked\n"


def test_a_stale_lock_from_a_killed_deploy_is_taken_over(world, nginx, env, tmp_path):
    import signal

    lock_file = nginx.include.parent / f"{world.app}.deploy.lock"
    victim = start_pipeline(["deploy"], {**env, "HEALTH_TIMEOUT": "60",
                                         "CONTAINER_ENV_FILE": _env_file(tmp_path, "STARTUP_DELAY_MS=30000")}, tmp_path)
    wait_for(lock_file.exists, 30, 0.02, "the lock")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    assert "stale: its process is gone" in ok(run_pipeline(["lock", "status"], env, tmp_path)).stdout
    result = ok(run_pipeline(["deploy"], env, tmp_path))
    assert "taking over a stale lock" in result.stderr
    assert nginx.get().text == "version=v1 color=blue\n"


def test_lock_release_frees_a_lock_held_elsewhere(world, nginx, env, tmp_path):
    lock_file = nginx.include.parent / f"{world.app}.deploy.lock"
    lock_file.write_text(json.dumps({"who": "alice", "machine": "build-7", "pid": 1, "action": "deploy",
                                     "version": "v9", "since": "2026-01-01T00:00:00Z"}))
    blocked = run_pipeline(["deploy"], env, tmp_path)
    assert blocked.returncode == 4 and "alice on build-7" in blocked.stderr
    released = ok(run_pipeline(["lock", "release"], env, tmp_path))
    assert "released the lock held by: alice on build-7" in released.stdout
    ok(run_pipeline(["deploy"], env, tmp_path))


def test_history_records_every_action(world, nginx, env, tmp_path):
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1", "BUILD_TAG": "jenkins-shop-1"}, tmp_path))
    ok(run_pipeline(["deploy", "--no-promote"], {**env, "APP_VERSION": "v2"}, tmp_path))
    ok(run_pipeline(["promote"], env, tmp_path))
    ok(run_pipeline(["rollback"], env, tmp_path))
    # No APP_VERSION: the default (a UTC timestamp outside git) names the failed release too.
    unversioned = {k: v for k, v in env.items() if k != "APP_VERSION"}
    failed = run_pipeline(["deploy"], {**unversioned, "CONTAINER_ENV_FILE": _env_file(tmp_path, "CRASH_ON_START=1")},
                          tmp_path)
    assert failed.returncode == 1
    default_version = re.search(r"image \S+:(\d{14})\b", failed.stderr).group(1)

    entries = json.loads(ok(run_pipeline(["history", "--json"], env, tmp_path)).stdout)
    assert [(e["action"], e["version"], e["color"], e["result"]) for e in entries] == [
        ("deploy", "v1", "blue", "ok"),
        ("stage", "v2", "green", "ok"),
        ("promote", "v2", "green", "ok"),
        ("rollback", "v1", "blue", "ok"),
        ("deploy", default_version, "", "failed"),
    ]
    assert entries[0]["who"] == "jenkins-shop-1"
    assert all(e["duration"] > 0 and e["time"].endswith("Z") for e in entries)
    assert "stopped while starting" in entries[-1]["message"]

    table = ok(run_pipeline(["history"], env, tmp_path)).stdout.splitlines()
    assert table[0].split()[:6] == ["TIME", "WHO", "ACTION", "VERSION", "COLOR", "RESULT"]
    assert len(table) == 6 and "rollback" in table[4]


def test_retention_keeps_the_newest_images_and_the_rollback_target(world, nginx, env, tmp_path):
    for version in ("v1", "v2", "v3", "v4"):
        ok(run_pipeline(["deploy"], {**env, "APP_VERSION": version, "KEEP_RELEASES": "1"}, tmp_path))
    tags = sorted(t.split(":")[1] for image in world.client.images.list(filters={"label": f"pipeline.app={world.app}"})
                  for t in image.tags)
    # KEEP_RELEASES=1 keeps v4 alone, but v3 is the stopped rollback target: kept too.
    assert tags == ["v3", "v4"]
    ok(run_pipeline(["rollback"], env, tmp_path))
    assert nginx.get().text == "version=v3 color=blue\n"


def _env_file(tmp_path, *lines):
    path = tmp_path / f"container-{abs(hash(lines))}.env"
    path.write_text("\n".join(lines) + "\n")
    return str(path)
