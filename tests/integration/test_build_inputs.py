"""What a build must not do, on the real stack (issue 15): build over a version the release
record relies on, or take a secret as a build arg without saying that the image keeps it."""
from __future__ import annotations

import json
import uuid

import pytest

from teststack.realstack import REPO, run_pipeline

pytestmark = pytest.mark.integration


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("pipeline: ")]


def dockerfile(tmp_path, name: str, extra: str):
    """The shipped Dockerfile with `extra` lines after it: another build of the same release."""
    path = tmp_path / name
    path.write_text((REPO / "docker" / "Dockerfile").read_text() + extra)
    return str(path)


def test_redeploying_a_version_on_record_is_refused_and_changes_nothing(world, nginx, settings_env, tmp_path):
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v2"}, tmp_path))
    app = world.app
    files = {p.name: p.read_text() for p in nginx.include.parent.iterdir()
             if p.name.startswith(app) or p.name == nginx.include.name}
    assert f"{app}.releases.json" in files and f"{app}.history.jsonl" in files
    images = {ref: world.client.images.get(ref).id for ref in (f"{app}:v1", f"{app}:v2")}
    containers = {c.name: (c.id, c.status) for c in world.client.containers.list(
        all=True, filters={"label": f"pipeline.app={app}"})}

    # Jenkins re-runs the job on the commit that is live, with a Dockerfile changed since: the
    # build would have put another image under the tag the record says is live.
    changed = dockerfile(tmp_path, "Dockerfile.changed", '\nLABEL rebuilt="yes"\n')
    for version, words in (("v2", "already live on green; its image"),
                           ("v1", "was live before and is kept for rollback; its image")):
        result = run_pipeline(["deploy"], {**settings_env, "APP_VERSION": version, "DOCKERFILE": changed},
                              tmp_path)
        assert result.returncode == 2, result.stderr
        assert error_lines(result.stderr) == [f"pipeline: error: APP_VERSION={version}: {words} "
                                              f"{app}:{version} is not built over: "
                                              + ("" if version == "v2" else f"`rollback --to {version}` makes it "
                                                                            f"live again, or ")
                                              + "set a new APP_VERSION (the default is HEAD's short git sha)"]
        assert "building" not in result.stderr and "Traceback" not in result.stderr

    # Nothing changed: images, containers, the include, the record, the history (bad input leaves
    # no line), the lock released.
    assert {ref: world.client.images.get(ref).id for ref in images} == images
    assert {c.name: (c.id, c.status) for c in world.client.containers.list(
        all=True, filters={"label": f"pipeline.app={app}"})} == containers
    assert {p.name: p.read_text() for p in nginx.include.parent.iterdir()
            if p.name.startswith(app) or p.name == nginx.include.name} == files
    assert nginx.get().text == "version=v2 color=green\n"

    # What the message says to do works; a new version deploys as ever.
    ok(run_pipeline(["rollback", "--to", "v1"], settings_env, tmp_path))
    assert nginx.get().text == "version=v1 color=blue\n"
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v3", "DOCKERFILE": changed}, tmp_path))
    assert nginx.get().text == "version=v3 color=green\n"


def test_a_version_that_never_went_live_is_built_again(world, nginx, settings_env, tmp_path):
    """Re-running a job on the same commit after a failed deploy: the usual retry works."""
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    crash = tmp_path / "crash.env"
    crash.write_text("CRASH_ON_START=1\n")
    failed = run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v2", "CONTAINER_ENV_FILE": str(crash)},
                          tmp_path)
    assert failed.returncode == 1, failed.stderr
    again = ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v2"}, tmp_path))
    assert f"image {world.app}:v2 is left from a run that never went live: it is built again" in again.stderr
    assert nginx.get().text == "version=v2 color=green\n"


def test_a_secret_build_arg_is_kept_in_the_image_history_and_the_run_says_so(world, nginx, settings_env,
                                                                            tmp_path):
    """The fact the README states: a build arg a RUN step sees is written into the image's
    history (and so goes to the registry with it), whatever the log masks."""
    token = f"npm-{uuid.uuid4().hex}"
    # A RUN step after the ARG, as a real `npm ci` would be (the JRE base has no shell: exec form).
    uses_it = dockerfile(tmp_path, "Dockerfile.npm", '\nARG NPM_TOKEN\nRUN ["java", "-version"]\n')
    env = {**settings_env, "APP_VERSION": "v1", "DOCKERFILE": uses_it,
           "BUILD_ARGS": settings_env["BUILD_ARGS"] + f" NPM_TOKEN={token}"}
    result = ok(run_pipeline(["deploy"], env, tmp_path))
    warnings = [line for line in result.stderr.splitlines() if "BUILD_ARGS" in line]
    assert len(warnings) == 1, result.stderr
    assert "BUILD_ARGS NPM_TOKEN looks like a secret: build args are stored in the image (`docker history`)" \
        in warnings[0]
    assert token not in result.stderr + result.stdout

    history = world.client.api.history(f"{world.app}:v1")
    assert any(f"NPM_TOKEN={token}" in step["CreatedBy"] for step in history), json.dumps(history, indent=1)
    assert nginx.get().text == "version=v1 color=blue\n"
