"""Release state on record (issue 8): rollback goes to the release that was live before, promote
only to what was staged, rollback --to to any kept release; on the real stack, through the CLI.
The same sequences run against strict fakes in tests/unit/test_flows.py."""
from __future__ import annotations

import json

import pytest

from teststack.realstack import run_pipeline

pytestmark = pytest.mark.integration


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


@pytest.fixture
def env(settings_env, nginx):
    return {**settings_env, "NGINX_PREVIEW_INCLUDE": str(nginx.preview_include)}


def record(nginx, world) -> dict:
    return json.loads((nginx.include.parent / f"{world.app}.releases.json").read_text())


def test_rollback_after_a_staged_release_goes_back_to_the_previous_one(world, nginx, env, tmp_path):
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v2"}, tmp_path))
    ok(run_pipeline(["deploy", "--no-promote"], {**env, "APP_VERSION": "v3"}, tmp_path))
    assert nginx.get(preview=True).text == "version=v3 color=blue\n"
    assert record(nginx, world)["staged"]["version"] == "v3"

    result = ok(run_pipeline(["rollback"], env, tmp_path))
    # v3 (never approved) had replaced v1's kept container: v1 comes back from its kept image.
    assert f"recreating {world.app}-blue from its kept image {world.app}:v1, replacing v3" in result.stderr
    assert nginx.get().text == "version=v1 color=blue\n"
    assert world.container("blue").labels["pipeline.version"] == "v1"
    assert world.state("green") == "exited"
    kept = record(nginx, world)
    assert (kept["live"]["version"], kept["previous"]["version"], kept["staged"]) == ("v1", "v2", None)
    entries = json.loads(ok(run_pipeline(["history", "--json"], env, tmp_path)).stdout)
    assert (entries[-1]["action"], entries[-1]["version"], entries[-1]["result"]) == ("rollback", "v1", "ok")


def test_rollback_after_a_deploy_that_never_got_healthy(world, nginx, env, tmp_path):
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v2"}, tmp_path))
    failing = tmp_path / "unhealthy.env"
    failing.write_text("HEALTH_FAIL=1\n")
    failed = run_pipeline(["deploy"], {**env, "APP_VERSION": "v3", "CONTAINER_ENV_FILE": str(failing),
                                       "HEALTH_TIMEOUT": "3"}, tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert world.container("blue") is None          # v1's kept container went with the failed v3
    assert nginx.get().text == "version=v2 color=green\n"

    ok(run_pipeline(["rollback"], env, tmp_path))
    assert nginx.get().text == "version=v1 color=blue\n"
    assert world.state("green") == "exited"


def test_rollback_to_any_kept_release_and_history_marks_them(world, nginx, env, tmp_path):
    for version in ("v1", "v2", "v3"):
        ok(run_pipeline(["deploy"], {**env, "APP_VERSION": version}, tmp_path))
    entries = json.loads(ok(run_pipeline(["history", "--json"], env, tmp_path)).stdout)
    assert [(e["version"], e["live"], e["rollback_target"]) for e in entries] == [
        ("v1", False, True), ("v2", False, True), ("v3", True, False)]
    table = ok(run_pipeline(["history"], env, tmp_path)).stdout.splitlines()
    assert table[0].split()[:8] == ["TIME", "WHO", "ACTION", "VERSION", "COLOR", "RESULT", "SECONDS", "ROLLBACK"]
    assert [row.split()[7] for row in table[1:]] == ["yes", "yes", "live"]

    unknown = run_pipeline(["rollback", "--to", "v9"], env, tmp_path)
    assert unknown.returncode == 5
    assert "cannot roll back to v9: not a kept release (can go to: v2, v1)" in unknown.stderr
    assert nginx.get().text == "version=v3 color=blue\n"

    # A damaged record is rebuilt from the history and the containers' labels, with a warning.
    (nginx.include.parent / f"{world.app}.releases.json").write_text("{ not json")
    result = ok(run_pipeline(["rollback", "--to", "v1"], env, tmp_path))
    assert "rebuilding it from the history and the containers' labels" in result.stderr
    assert nginx.get().text == "version=v1 color=green\n"     # on the idle color, from its kept image
    live = record(nginx, world)["live"]
    assert {k: live[k] for k in ("version", "color", "image", "digest_of")} == {
        "version": "v1", "color": "green", "image": f"{world.app}:v1", "digest_of": "image id"}
    assert live["digest"] == entries[0]["digest"]   # rebuilt: the digest its deploy recorded
    assert ok(run_pipeline(["rollback", "--to", "v3"], env, tmp_path))
    assert nginx.get().text == "version=v3 color=blue\n"      # v3's kept container, started again


def test_a_first_release_staged_is_promoted(world, nginx, env, tmp_path):
    # Nothing is live yet, and blue answers its health check: the seed's probe would call it live.
    # The record says it is staged, so promote makes it live.
    ok(run_pipeline(["deploy", "--no-promote"], {**env, "APP_VERSION": "v1"}, tmp_path))
    assert nginx.get(preview=True).text == "version=v1 color=blue\n"
    ok(run_pipeline(["promote"], env, tmp_path))
    assert nginx.get().text == "version=v1 color=blue\n"
    assert record(nginx, world)["live"]["version"] == "v1"
