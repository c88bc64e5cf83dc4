"""What a build must not do (issue 15): build over a version the release record relies on, or
take a secret as a build arg without a word. The flows run on the strict fakes (fakes.World)."""
from __future__ import annotations

import logging

import pytest

from pipeline.flows import build
from pipeline.core.decide import ContainerFact
from pipeline.core.errors import SettingsError
from pipeline.core.releases import Release, ReleaseRecord, ReleaseStore

from .fakes import World, no_network  # noqa: F401  (autouse: no flow reaches the network)




# -- a version on record is never built over -----------------------------------------------------

V1, V2, V3 = (Release(v, c, f"app:{v}") for v, c in (("v1", "blue"), ("v2", "green"), ("v3", "blue")))


def box(color: str, version: str, status: str = "running") -> ContainerFact:
    return ContainerFact(color=color, name=f"app-{color}", status=status, version=version, image=f"app:{version}",
                         ip=None, restart_count=0)


@pytest.mark.parametrize("version,record,live,containers,images,words", [
    ("v2", ReleaseRecord(live=V2, previous=V1, kept=(V2, V1)), "green",
     {"green": box("green", "v2"), "blue": box("blue", "v1", "exited")}, ["app:v1", "app:v2"],
     "already live on green; its image app:v2 is not built over: set a new APP_VERSION"),
    ("v1", ReleaseRecord(live=V2, previous=V1, kept=(V2, V1)), "green",
     {"green": box("green", "v2"), "blue": box("blue", "v1", "exited")}, ["app:v1", "app:v2"],
     "was live before and is kept for rollback; its image app:v1 is not built over: `rollback --to v1`"),
    # The previous release's container was replaced; its image is what a rollback recreates it from.
    ("v1", ReleaseRecord(live=V2, previous=V1, kept=(V2, V1)), "green",
     {"green": box("green", "v2")}, ["app:v1", "app:v2"], "kept for rollback"),
    # Its image is gone too: nothing on record could be overwritten, nothing refers to the tag.
    ("v1", ReleaseRecord(live=V2, previous=V1, kept=(V2, V1)), "green", {"green": box("green", "v2")},
     ["app:v2"], None),
    ("v3", ReleaseRecord(live=V2, previous=V1, staged=V3, kept=(V2, V1)), "green",
     {"green": box("green", "v2"), "blue": box("blue", "v3")}, ["app:v1", "app:v2", "app:v3"],
     "staged on blue; its image app:v3 is not built over: `promote` makes it live"),
    # A version that never went live (a failed deploy left its image, a killed run its container):
    # built again, as Jenkins re-running the job on the same commit expects.
    ("v3", ReleaseRecord(live=V2, previous=V1, kept=(V2, V1)), "green",
     {"green": box("green", "v2"), "blue": box("blue", "v3")}, ["app:v1", "app:v2", "app:v3"], None),
    ("v1", ReleaseRecord(), None, {"blue": box("blue", "v1")}, ["app:v1"], None),
    ("v4", ReleaseRecord(live=V2, previous=V1, kept=(V2, V1)), "green", {}, ["app:v1", "app:v2"], None),
])
def test_a_version_on_record_is_refused(version, record, live, containers, images, words):
    problem = build.reused_version(version, record, live, containers, images)
    if words is None:
        assert problem is None
        build.check_new_version(version, record, live, containers, images)
        return
    assert problem is not None and words in problem
    with pytest.raises(SettingsError) as caught:
        build.check_new_version(version, record, live, containers, images)
    assert str(caught.value) == f"APP_VERSION={version}: {problem}" and caught.value.exit_code == 2


REDEPLOYS = [
    # Jenkins re-runs the job on the commit that is live: nothing is built, nothing changes.
    (["deploy v1", "deploy v1"], [0, 2], ("v1", "blue")),
    (["deploy v1", "deploy v2", "deploy v2"], [0, 0, 2], ("v2", "green")),
    # The previous release: `rollback --to v1`, not a build over its image.
    (["deploy v1", "deploy v2", "deploy v1"], [0, 0, 2], ("v2", "green")),
    (["deploy v1", "deploy v2", "deploy v3", "stage v1"], [0, 0, 0, 2], ("v3", "blue")),
    # Staged: `promote` it.
    (["deploy v1", "stage v2", "deploy v2"], [0, 0, 2], ("v1", "blue")),
    (["deploy v1", "stage v2", "stage v2"], [0, 0, 2], ("v1", "blue")),
    # Re-running after a failed deploy builds the same version again.
    (["deploy v1", "deploy v2 !unhealthy", "deploy v2"], [0, 1, 0], ("v2", "green")),
    (["deploy v1", "stage v2 !unhealthy", "stage v2", "promote"], [0, 1, 0, 0], ("v2", "green")),
]


@pytest.mark.parametrize("steps,codes,serving", REDEPLOYS, ids=[", ".join(row[0]) for row in REDEPLOYS])
def test_redeploying_a_version_on_record_is_refused_before_anything_changes(steps, codes, serving):
    world = World()
    got = []
    for step in steps:
        if step == steps[-1] and codes[-1] == 2:
            files, images = dict(world.host.files), dict(world.engine.images)
            world.engine.mutations.clear()
            world.switch.moves.clear()
        if "!unhealthy" not in step:
            world.engine.unhealthy.discard(step.split()[1] if len(step.split()) > 1 else "")
        got.append(world.step(step)[0])
    assert got == codes
    assert world.serving() == serving
    if codes[-1] == 2:
        # Nothing built, started or switched; no file changed on the nginx host (no history line:
        # bad input changes nothing); the lock released.
        assert world.engine.mutations == [] and world.switch.moves == []
        assert world.host.files == files and world.engine.images == images


def test_the_refusal_names_the_version_and_what_to_run():
    world = World()
    world.step("deploy v1")
    world.step("deploy v2")
    code, message = world.step("deploy v1")
    assert code == 2
    assert message == ("APP_VERSION=v1: was live before and is kept for rollback; its image app:v1 is not built "
                       "over: `rollback --to v1` makes it live again, or set a new APP_VERSION (the default is "
                       "HEAD's short git sha)")
    assert world.step("rollback --to v1")[0] == 0


def test_a_version_built_again_says_so(caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    world = World()
    world.step("deploy v1")
    assert world.step("deploy v2 !unhealthy")[0] == 1
    world.engine.unhealthy.clear()
    caplog.clear()
    assert world.step("deploy v2")[0] == 0
    assert "image app:v2 is left from a run that never went live: it is built again" in caplog.text
    record, _ = ReleaseStore(world.host, world.record_path).read()
    assert (record.live.version, record.previous.version) == ("v2", "v1")


# -- a secret-looking build arg is named, once, never its value -----------------------------------

@pytest.mark.parametrize("args,named", [
    ({"NPM_TOKEN": "npm-abcdef123", "JAR": "build/libs/app.jar"}, "BUILD_ARGS NPM_TOKEN looks like a secret"),
    ({"DB_PASSWORD": "pw-abcdef123", "GIT_CREDENTIALS": "cred-abcdef123", "BASE_IMAGE": "jre"},
     "BUILD_ARGS DB_PASSWORD, GIT_CREDENTIALS look like secrets"),
    ({"api_key": "key-abcdef123"}, "BUILD_ARGS api_key looks like a secret"),
])
def test_a_secret_looking_build_arg_is_warned_about_by_key(caplog, args, named):
    caplog.set_level(logging.INFO, logger="pipeline")
    build.warn_secret_build_args(args)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and named in warnings[0]
    assert "`docker history`" in warnings[0] and "CONTAINER_ENV_FILE" in warnings[0]
    for value in args.values():
        assert value not in warnings[0]


def test_plain_build_args_are_not_warned_about(caplog):
    build.warn_secret_build_args({"BASE_IMAGE": "pipeline/jre:17", "JAR": "build/libs/app.jar"})
    assert caplog.records == []


def test_a_deploy_warns_once_about_a_secret_build_arg(caplog):
    from dataclasses import replace

    caplog.set_level(logging.INFO, logger="pipeline")
    world = World()
    world.settings = replace(world.settings, build_args={"NPM_TOKEN": "npm-abcdef123"})
    assert world.step("deploy v1") == (0, "")
    warnings = [r.getMessage() for r in caplog.records if "BUILD_ARGS" in r.getMessage()]
    assert len(warnings) == 1 and "NPM_TOKEN" in warnings[0] and "npm-abcdef123" not in caplog.text
