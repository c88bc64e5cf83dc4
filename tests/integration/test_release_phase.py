"""The release phase (RELEASE_COMMAND, issue 18) on the real engine and nginx, through the CLI.

The database is a real SQLite file on the releases' volume (DATABASE_URL's default,
/data/app.db, on a bind-mounted directory; teststack/sqlite.py): the demo's jar carries Debian's
SQLite JDBC driver and runs on pipeline/jre-sql:17, the shared JRE with java.sql and the driver's
JNI library added. A release needs the schema version its env file names (REQUIRE_SCHEMA; health
answers 503 while the database's schema_version is older), and `migrate`, the release phase's
command (the image's entry point kept), brings it up to that in one transaction. The tests read
the schema back from the file itself. Load: wrk through the test's nginx, a new connection per
request, 16 connections paced 10 ms apart, bounded by wrk's -d.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Dict

import pytest

from teststack import loadgen, sqlite
from teststack.realstack import Nginx, run_pipeline, start_pipeline, wait_for

pytestmark = pytest.mark.integration

V1 = "version=v1 color=blue"
SECRET = "hunter2-db-secret"


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def load(nginx: Nginx) -> loadgen.Load:
    return loadgen.Load(f"http://127.0.0.1:{nginx.port}/", profile="close", connections=16, seconds=120,
                        pause_ms=10)


def last_entry(env: Dict[str, str], cwd: Path) -> dict:
    return json.loads(ok(run_pipeline(["history", "--json"], env, cwd)).stdout)[-1]


@pytest.fixture
def database(tmp_path) -> Path:
    """The directory the releases (and their release phase) mount at /data: the SQLite file (and
    its journal) live there. World-writable: the image runs as uid 10001."""
    directory = tmp_path / "db"
    directory.mkdir()
    directory.chmod(0o777)
    return directory


@pytest.fixture
def sql_env(settings_env, sqlite_build_args, database) -> Dict[str, str]:
    """The demo built with the JDBC driver on the JRE with java.sql, the database's volume mounted."""
    return {**settings_env, "BUILD_ARGS": sqlite_build_args, "CONTAINER_VOLUMES": f"{database}:/data"}


def release_env(tmp_path: Path, schema: int) -> str:
    """CONTAINER_ENV_FILE: the schema the next release needs, and a secret its output may show."""
    path = tmp_path / "release.env"
    path.write_text(f"REQUIRE_SCHEMA={schema}\nDB_PASSWORD={SECRET}\n")
    return str(path)


def one_offs(world) -> list:
    """Containers of the app's release phase, running or not."""
    return [c for c in world.client.containers.list(all=True, filters={"label": f"pipeline.app={world.app}"})
            if c.labels.get("pipeline.role") == "release-phase"]


def test_the_release_phase_migrates_the_database_before_v2_starts_while_v1_serves_under_load(
        world, nginx, sql_env, tmp_path, database):
    env = {**sql_env, "RELEASE_COMMAND": "migrate"}
    first = ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1",
                                         "CONTAINER_ENV_FILE": release_env(tmp_path, 1)}, tmp_path))
    assert "migrate v1 (blue): schema 0, this release needs 1" in first.stderr
    assert sqlite.versions(database) == [(1, "v1")]
    assert sqlite.tables(database) == ["orders", "schema_version"]
    assert nginx.get().text == V1 + "\n"

    # v2 needs schema 2: without its release phase it never becomes healthy (nothing switched):
    # its health reads the version from the database.
    env["CONTAINER_ENV_FILE"] = release_env(tmp_path, 2)
    unmigrated = run_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "RELEASE_COMMAND": "",
                                           "HEALTH_TIMEOUT": "3"}, tmp_path)
    assert unmigrated.returncode == 1, unmigrated.stderr
    assert '"schema":1,"required":2' in unmigrated.stderr
    assert nginx.get().text == V1 + "\n"

    with load(nginx) as traffic:
        time.sleep(1)   # the load is on v1 before the release phase starts
        second = ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v2",
                                              "RELEASE_COMMAND": "migrate --sleep-ms 1500"}, tmp_path))
        time.sleep(1)
    result = traffic.result
    print(f"\nrelease phase under load: {result.line()}")
    assert result.failed == 0, result.summary()
    assert set(result.versions()) == {V1, "version=v2 color=green"}, result.summary()
    assert sqlite.versions(database) == [(1, "v1"), (2, "v2")]
    assert sqlite.columns(database, "orders") == ["id", "item", "note"]
    err = second.stderr
    # In the new image, with the color it is about to start on; streamed, before that color starts.
    assert "release phase: migrate --sleep-ms 1500 in a one-off container of " + f"{world.app}:v2" in err
    assert "| migrate v2 (green): schema 1, this release needs 2" in err
    assert err.index("| migrate: schema 1 -> 2: ALTER TABLE orders ADD COLUMN note TEXT") < err.index(
        "| migrate: schema at 2") < err.index("release phase done") < err.index("==> starting ")
    assert err.index("==> building image") < err.index("==> release phase")
    assert nginx.get().text == "version=v2 color=green\n"
    assert one_offs(world) == []


@pytest.mark.parametrize("command, timeout, says", [
    ("migrate --fail", "600", "exited with 3"),
    ("migrate --hang", "5", "did not end within RELEASE_TIMEOUT=5s (stopped)"),
], ids=["failing", "hanging"])
def test_a_failing_or_hanging_release_phase_fails_the_deploy_with_nothing_started(
        world, nginx, sql_env, tmp_path, database, command, timeout, says):
    env = {**sql_env, "CONTAINER_ENV_FILE": release_env(tmp_path, 0)}
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    assert not (database / sqlite.DATABASE_FILE).exists()   # v1 needs no schema
    env["CONTAINER_ENV_FILE"] = release_env(tmp_path, 1)   # v2 does: its migration creates a table
    blue_started = world.container("blue").attrs["State"]["StartedAt"]
    include = nginx.include.read_text()

    with load(nginx) as traffic:
        began = time.monotonic()
        failed = run_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "RELEASE_COMMAND": command,
                                           "RELEASE_TIMEOUT": timeout}, tmp_path)
        took = time.monotonic() - began
    assert failed.returncode == 1, failed.stderr
    assert took < 120   # a coarse tripwire: the timeout ends it, not the command
    error = [line for line in failed.stderr.splitlines() if line.startswith("pipeline: error:")]
    assert error == [f"pipeline: error: release phase `{command}` of v2 {says}; nothing was started or switched"]
    # Its last lines under the error; the secret it printed masked in the log and the message.
    if command == "migrate --fail":
        assert "    release phase: migrate: ALTER TABLE orders ADD COLUMN ref TEXT UNIQUE failed, rolled back: " \
               "[SQLITE_ERROR] SQL error or missing database (Cannot add a UNIQUE column) (connected with " \
               "DB_PASSWORD=***)" in failed.stderr
    else:
        assert "    release phase: migrate: holding the write lock, never committing (--hang)" in failed.stderr
    assert SECRET not in failed.stderr + failed.stdout
    # Nothing started or switched: green never ran, blue (v1) was never touched and served throughout.
    assert world.container("green") is None
    assert world.container("blue").attrs["State"]["StartedAt"] == blue_started
    assert nginx.include.read_text() == include
    result = traffic.result
    assert result.failed == 0 and set(result.versions()) == {V1}, result.summary()
    assert one_offs(world) == []
    # Both had created orders in their transaction: rolled back (--fail), or never committed and
    # its journal rolled back by the next connection (--hang, stopped): the database has no table.
    assert "| migrate: schema 0 -> 1: CREATE TABLE orders" in failed.stderr
    assert (database / sqlite.DATABASE_FILE).exists() and sqlite.tables(database) == []
    entry = last_entry(env, tmp_path)
    assert (entry["action"], entry["version"], entry["result"]) == ("deploy", "v2", "release phase failed")


def test_a_signal_during_the_release_phase_removes_the_one_off_container_and_starts_nothing(
        world, nginx, sql_env, tmp_path, database):
    env = {**sql_env, "CONTAINER_ENV_FILE": release_env(tmp_path, 0)}
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    deploying = start_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "RELEASE_COMMAND": "migrate --hang"},
                               tmp_path)
    running = wait_for(lambda: [c for c in one_offs(world) if c.status == "running"], 60, 0.1,
                       "the one-off container")
    # From the new image, its entry point kept and the words its command, on the deploy network.
    config = running[0].attrs["Config"]
    assert (config["Image"], config["Cmd"]) == (f"{world.app}:v2", ["migrate", "--hang"])
    assert config["Entrypoint"][0] == "java" and running[0].name == f"{world.app}-release-phase"
    assert {"APP_VERSION=v2", "APP_COLOR=green", "REQUIRE_SCHEMA=0"} <= set(config["Env"])
    assert list(running[0].attrs["NetworkSettings"]["Networks"]) == [world.network.name]
    assert running[0].attrs["HostConfig"]["Binds"] == [f"{database}:/data"]
    time.sleep(0.5)
    deploying.send_signal(signal.SIGTERM)
    _, stderr = deploying.communicate(timeout=60)
    assert deploying.returncode == 143, stderr
    assert one_offs(world) == []
    assert world.container("green") is None and nginx.get().text == V1 + "\n"
    assert last_entry(env, tmp_path)["result"] == "interrupted"


def test_a_one_off_container_left_by_a_killed_run_is_replaced_by_the_next_release_phase(
        world, nginx, sql_env, tmp_path, database):
    env = {**sql_env, "CONTAINER_ENV_FILE": release_env(tmp_path, 1)}
    killed = start_pipeline(["deploy"], {**env, "APP_VERSION": "v1", "RELEASE_COMMAND": "migrate --hang"}, tmp_path)
    wait_for(lambda: [c for c in one_offs(world) if c.status == "running"], 60, 0.1, "the one-off container")
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=10)
    assert [c.status for c in one_offs(world)] == ["running"]   # nothing could clean up: it holds the write lock
    again = ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1", "RELEASE_COMMAND": "migrate"}, tmp_path))
    assert "| migrate: schema 0 -> 1: CREATE TABLE orders" in again.stderr
    assert sqlite.versions(database) == [(1, "v1")]
    assert one_offs(world) == [] and nginx.get().text == V1 + "\n"


def test_release_phase_by_hand_runs_again_for_the_live_release(world, nginx, sql_env, tmp_path, database):
    env = {**sql_env, "RELEASE_COMMAND": "migrate", "CONTAINER_ENV_FILE": release_env(tmp_path, 1)}
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    assert sqlite.versions(database) == [(1, "v1")]
    (database / sqlite.DATABASE_FILE).unlink()   # the database lost and started anew, say
    again = ok(run_pipeline(["release-phase"], env, tmp_path))
    assert "| migrate v1 (blue): schema 0, this release needs 1" in again.stderr
    assert sqlite.versions(database) == [(1, "v1")] and "orders" in sqlite.tables(database)
    assert one_offs(world) == []
    assert world.container("green") is None and nginx.get().text == V1 + "\n"   # nothing started
    entry = last_entry(env, tmp_path)
    assert (entry["action"], entry["version"], entry["result"]) == ("release-phase", "v1", "ok")

    unknown = run_pipeline(["release-phase", "--version", "v9"], env, tmp_path)
    assert unknown.returncode == 5, unknown.stderr
    assert "no release v9 on record (live, staged or previous: v1 (blue))" in unknown.stderr


@pytest.mark.parametrize("args, setting, value", [
    (["deploy"], "RELEASE_TIMEOUT", "0"),
    (["deploy"], "RELEASE_TIMEOUT", "10m"),
    (["deploy"], "RELEASE_TIMEOUT", "3601"),
    (["release-phase"], "RELEASE_COMMAND", ""),
])
def test_a_bad_release_setting_is_exit_2_with_nothing_changed(world, nginx, settings_env, tmp_path, args, setting,
                                                                value):
    before = nginx.include.read_text()
    result = run_pipeline(args, {**settings_env, "RELEASE_COMMAND": "migrate", setting: value}, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pipeline: error: {setting}={value}: "), result.stderr
    assert nginx.include.read_text() == before
    assert world.running_containers() == [] and one_offs(world) == []
    assert not world.client.networks.list(names=[world.network.name])
