"""The release phase on the real 3-node swarm (issue 18): a one-off task on one node (a service of
one replica, restart policy none), waited for and removed, through the real CLI.

The nodes' dockerds share this machine's file system (only their network and host name are
their own), so a directory bind-mounted into every task holds one real SQLite database
(teststack/sqlite.py): the release is the demo with the JDBC driver on pipeline/jre-sql:17,
copied into the swarm's registry.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import docker
import pytest

from pipeline.compose import make_target

from teststack import sqlite
from teststack.realstack import run_pipeline
from teststack.swarmstack import swarm_env, swarm_settings, swarm_sh, switch_env

pytestmark = pytest.mark.integration


@pytest.fixture
def database(tmp_path) -> Path:
    directory = tmp_path / "db"
    directory.mkdir()
    directory.chmod(0o777)   # the image runs as uid 10001
    return directory


@pytest.fixture(scope="module")
def sqlite_base(swarm, sqlite_build_args) -> str:
    """pipeline/jre-sql:17 in the swarm's registry, where the manager builds and the nodes pull."""
    swarm_sh("push", sqlite.JRE_IMAGE)
    return f"{swarm['SWARM_REGISTRY']}/{sqlite.JRE_IMAGE}"


@pytest.fixture
def env(swarm, app, swarm_nginx, sqlite_base, database, tmp_path) -> Dict[str, str]:
    env_file = tmp_path / "release.env"
    env_file.write_text("REQUIRE_SCHEMA=1\n")
    return swarm_env(swarm, app, BUILD_ARGS=f"BASE_IMAGE={sqlite_base} JAR={sqlite.JAR}", REPLICAS="2", HEALTH_INTERVAL="0.5", HEALTH_TIMEOUT="120", DRAIN_SECONDS="1",
                     NGINX_HOST="", NGINX_INCLUDE=str(swarm_nginx.include), CONTAINER_ENV_FILE=str(env_file),
                     CONTAINER_VOLUMES=f"{database}:/data", RELEASE_COMMAND="migrate", **switch_env(swarm_nginx, "reload"))


def release_phase_services(swarm: Dict[str, str], app: str) -> list:
    client = docker.DockerClient(base_url=swarm["SWARM_MANAGER"], timeout=60)
    try:
        return [s.name for s in client.services.list() if s.name == f"{app}-release-phase"]
    finally:
        client.close()


def test_the_release_phase_is_a_one_off_task_waited_for_and_removed(swarm, app, env, swarm_nginx, database, tmp_path):
    first = run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path)
    assert first.returncode == 0, first.stderr
    # The task ran the new image's entry point with `migrate` as its arguments, with the release's
    # environment and volume, once, before blue's tasks started.
    assert f"service {app}-release-phase: a one-off task of {swarm['SWARM_REGISTRY']}/{app}:v1" in first.stderr
    assert first.stderr.count("| migrate v1 (blue): schema 0, this release needs 1") == 1
    assert first.stderr.index("release phase done") < first.stderr.index("==> starting ")
    assert sqlite.versions(database) == [(1, "v1")]
    assert swarm_nginx.get().text == "version=v1 color=blue\n"
    assert release_phase_services(swarm, app) == []

    failed = run_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "RELEASE_COMMAND": "migrate --fail"}, tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert "pipeline: error: release phase `migrate --fail` of v2 exited with 3; nothing was started or " \
           "switched" in failed.stderr
    assert "    release phase: migrate: ALTER TABLE orders ADD COLUMN ref TEXT UNIQUE failed, rolled back" in failed.stderr
    assert sqlite.versions(database) == [(1, "v1")]   # v2 needs no more: --fail's statement alone, rolled back
    assert release_phase_services(swarm, app) == []
    engine = make_target(swarm_settings(swarm, app), {})
    assert engine.container("green") is None   # never created
    assert engine.container("blue").status == "running" and swarm_nginx.get().text == "version=v1 color=blue\n"
    history = json.loads(run_pipeline(["history", "--json"], env, tmp_path).stdout)
    assert (history[-1]["version"], history[-1]["result"]) == ("v2", "release phase failed")
