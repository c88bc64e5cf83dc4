"""IMAGE_BUILD=layered on the real stack: the release image built from a Spring Boot-layout jar
(demo/layered/build.py: demo.Demo with 35 MB of Debian's dependency jars), deployed through an
nginx of the test's own, pushed to the stack's registry, which is asked (its HTTP API and its
storage, never our log) what it holds and what it received."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import requests

from pipeline.adapters import layered
from pipeline.core.settings import Settings

from teststack import loadgen
from teststack.realstack import REPO, run_pipeline

pytestmark = pytest.mark.integration

BUILD = REPO / "demo" / "layered" / "build.py"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def build_jar(out: Path, change: str, when: float, layers: str = "standard", *more: str) -> Path:
    subprocess.run([sys.executable, str(BUILD), "--out", str(out), "--change", change, "--layers", layers,
                    "--time", str(when), *more], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def jars(tmp_path_factory) -> Dict[str, Path]:
    """v1; v2 an hour later (one class changed, every entry's time too), v3 and v4 later still;
    custom layers; without a launcher (Start-Class only); each built once for the module."""
    where, now = tmp_path_factory.mktemp("jars"), time.time()
    return {"v1": build_jar(where / "v1" / "app.jar", "v1", now - 3600),
            "v2": build_jar(where / "v2" / "app.jar", "v2", now),
            "v3": build_jar(where / "v3" / "app.jar", "v3", now + 600),
            "v4": build_jar(where / "v4" / "app.jar", "v4", now + 1200),
            "custom": build_jar(where / "custom" / "app.jar", "custom", now, "custom"),
            "start-class": build_jar(where / "start-class" / "app.jar", "start-class", now, "standard", "--no-launcher")}


@pytest.fixture
def env(settings_env, stack) -> Dict[str, str]:
    """The suite's settings with the Dockerfile ones left out (refused with IMAGE_BUILD=layered)."""
    env = {k: v for k, v in settings_env.items() if k not in ("DOCKERFILE", "BUILD_CONTEXT", "BUILD_ARGS")}
    return {**env, "IMAGE_BUILD": "layered", "BASE_IMAGE": stack["JRE_IMAGE"], "HEALTH_TIMEOUT": "60"}


def deploy(env: Dict[str, str], cwd: Path, **overrides: str) -> subprocess.CompletedProcess:
    return run_pipeline(["deploy"], {**env, **overrides}, cwd, timeout=180)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"


def layers(client, ref: str) -> List[str]:
    return client.api.inspect_image(ref)["RootFS"]["Layers"]


def history(client, ref: str) -> Dict[str, int]:
    """Our layers by name (from the image's history) -> size."""
    prefix = "pipeline IMAGE_BUILD=layered: "
    return {h["CreatedBy"][len(prefix):]: h["Size"] for h in client.api.history(ref)
            if h["CreatedBy"].startswith(prefix)}


# -- v1 then v2 under load, through the registry -------------------------------------------------------

def test_a_code_only_release_under_load_loses_nothing_and_the_registry_gets_only_its_changed_layer(
        world, nginx, env, stack, jars, tmp_path):
    password = Path(stack["REGISTRY_PASSWORD_FILE"]).read_text().strip()
    registry = stack["REGISTRY_ADDR"]
    env = {**env, "REGISTRY": registry, "REGISTRY_USERNAME": stack["REGISTRY_USER"], "REGISTRY_PASSWORD": password}
    assert_ok(deploy(env, tmp_path, APP_VERSION="v1", JAR=str(jars["v1"])))
    blue = world.container("blue")
    # The jar's own launcher is PID 1, exec form, as the non-root user.
    assert blue.attrs["Config"]["User"] == "10001:10001"
    assert blue.attrs["Config"]["Entrypoint"][-3:] == ["-cp", "/app", "launcher.Launcher"]
    assert blue.attrs["Path"] == "java"
    top = blue.top(ps_args="-o pid,user,args")
    [pid1] = [p for p in top["Processes"] if p[2].startswith("java ")]
    assert pid1[1] == "10001", top
    assert blue.attrs["State"]["Pid"] > 0

    link_dir = Path(stack["STACK_DIR"]) / "registry" / "docker" / "registry" / "v2" / "repositories" / world.app / "_layers" / "sha256"
    before = {p.name: p.joinpath("link").stat().st_mtime_ns for p in link_dir.iterdir()}
    time.sleep(0.01)   # a link the registry rewrites gets a later time

    with loadgen.Load(f"http://127.0.0.1:{nginx.port}/", profile="close", connections=8, seconds=120) as load:
        time.sleep(1)
        result = deploy(env, tmp_path, APP_VERSION="v2", JAR=str(jars["v2"]))
        time.sleep(1)
    assert_ok(result)
    assert load.result is not None
    assert load.result.failed == 0, load.result.line()
    assert set(load.result.versions()) == {"version=v1 color=blue", "version=v2 color=green"}, load.result.line()

    # The registry's answer: v2 shares every layer of v1 but the application's, byte for byte.
    def manifest(version: str) -> dict:
        answer = requests.get(f"http://{registry}/v2/{world.app}/manifests/{version}", timeout=10,
                              auth=(stack["REGISTRY_USER"], password), headers={"Accept": MANIFEST_V2})
        answer.raise_for_status()
        return answer.json()
    v1, v2 = manifest("v1")["layers"], manifest("v2")["layers"]
    v2_config = manifest("v2")["config"]["digest"]
    assert len(v1) == len(v2) == len(layers(world.client, stack["JRE_IMAGE"])) + 3
    assert [a["digest"] for a in v1[:-1]] == [b["digest"] for b in v2[:-1]]
    assert v1[-1]["digest"] != v2[-1]["digest"]
    dependencies = v2[-3]
    assert dependencies["size"] > 20_000_000 and v2[-1]["size"] < 50_000, (dependencies, v2[-1])
    # ... and received only that one: of the repository's blob links (written when a blob is
    # uploaded to it), the v2 push wrote two new ones, its application layer and its image
    # config, and rewrote none.
    after = {p.name: p.joinpath("link").stat().st_mtime_ns for p in link_dir.iterdir()}
    assert sorted(set(after) - set(before)) == sorted([v2[-1]["digest"][7:], v2_config[7:]])
    assert {d: t for d, t in after.items() if d in before} == before
    assert nginx.get().text == "version=v2 color=green\n"


# -- reproducible ----------------------------------------------------------------------------------------

def test_the_same_jar_built_twice_gives_the_same_layer_digests_and_image_id(world, stack, jars, caplog):
    """Built, removed with its layers, built again: nothing of the first build is left to reuse."""
    settings = Settings.from_env({"IMAGE_BUILD": "layered", "JAR": str(jars["v1"]), "BASE_IMAGE": stack["JRE_IMAGE"]},
                                 REPO)
    labels = {"pipeline.app": world.app, "pipeline.version": "same"}
    tag = f"{world.app}:same"
    first = layered.build_image(world.client.api, REPO, tag, labels, settings.build, settings.app_port)
    first_layers = layers(world.client, tag)
    world.client.api.remove_image(tag)   # its own layers go with it (nothing else uses them)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        second = layered.build_image(world.client.api, REPO, tag, labels, settings.build, settings.app_port)
    assert second == first == world.client.api.inspect_image(tag)["Id"]
    assert layers(world.client, tag) == first_layers
    # The engine checked the loaded layers against the config's digests (it read them anew).
    assert len(first_layers) == len(layers(world.client, stack["JRE_IMAGE"])) + 3


# -- custom layers, a plain jar --------------------------------------------------------------------------

def test_custom_layers_are_image_layers_in_the_index_order(world, nginx, env, stack, jars, tmp_path):
    result = deploy(env, tmp_path, JAR=str(jars["custom"]))
    assert_ok(result)
    ref = world.container("blue").attrs["Config"]["Image"]
    sizes = history(world.client, ref)
    # The empty snapshot-dependencies layer is left out.
    assert list(sizes) == ["application", "config", "spring-boot-loader", "dependencies", "big-dependencies"], sizes
    icu_bcprov = (Path("/usr/share/java/icu4j.jar").stat().st_size + Path("/usr/share/java/bcprov.jar").stat().st_size)
    assert icu_bcprov <= sizes["big-dependencies"] < icu_bcprov + 100_000
    assert 10_000_000 < sizes["dependencies"] < 20_000_000
    assert sizes["config"] < 5_000 and sizes["application"] < 50_000
    assert len(layers(world.client, ref)) == len(layers(world.client, stack["JRE_IMAGE"])) + 5
    assert nginx.get().text == "version=v1 color=blue\n"


def test_without_a_launcher_in_the_jar_start_class_runs_from_the_unpacked_classes_and_libraries(
        world, nginx, env, jars, tmp_path):
    assert_ok(deploy(env, tmp_path, JAR=str(jars["start-class"])))
    blue = world.container("blue")
    assert blue.attrs["Config"]["Entrypoint"][-3:] == ["-cp", "/app/BOOT-INF/classes:/app/BOOT-INF/lib/*", "demo.Demo"]
    assert list(history(world.client, blue.attrs["Config"]["Image"])) == ["application", "dependencies"]
    assert nginx.get().text == "version=v1 color=blue\n"


def test_a_plain_jar_is_one_layer_and_the_run_says_so_once(world, nginx, env, stack, demo_jar, tmp_path):
    result = deploy(env, tmp_path, JAR=str(demo_jar))
    assert_ok(result)
    assert result.stderr.count("has no BOOT-INF/layers.idx: one image layer, the whole jar") == 1, result.stderr
    blue = world.container("blue")
    assert blue.attrs["Config"]["Entrypoint"][-2:] == ["-jar", "/app/app.jar"]
    assert list(history(world.client, blue.attrs["Config"]["Image"])) == ["jar"]
    assert len(layers(world.client, blue.attrs["Config"]["Image"])) == len(layers(world.client, stack["JRE_IMAGE"])) + 1
    assert nginx.get().text == "version=v1 color=blue\n"


# -- bad input: exit 2, nothing changed -------------------------------------------------------------------

def assert_nothing_changed(world, nginx, include_before: str) -> None:
    assert nginx.include.read_text() == include_before
    assert world.container("blue") is None and world.container("green") is None
    assert world.client.images.list(filters={"label": f"pipeline.app={world.app}"}) == []


def test_a_missing_jar_is_exit_2_and_changes_nothing(world, nginx, env, tmp_path):
    before = nginx.include.read_text()
    result = deploy(env, tmp_path, JAR="build/libs/nope.jar")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["pipeline: error: JAR=build/libs/nope.jar: no such file"]
    assert_nothing_changed(world, nginx, before)


def test_no_jar_or_several_under_build_libs_is_exit_2_naming_them(world, nginx, env, jars, tmp_path):
    before = nginx.include.read_text()
    libs = tmp_path / "build" / "libs"
    result = deploy(env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"pipeline: error: JAR: not set, and {libs} holds no *.jar besides any -plain.jar: set JAR to the one to release"]
    # Several, made by the build command: found after it, before any image.
    script = tmp_path / "build.sh"
    script.write_text(f"mkdir -p build/libs && cp {jars['v1']} build/libs/a.jar && cp {jars['v1']} build/libs/b.jar"
                      " && cp {jars['v1']} build/libs/a-plain.jar\n".replace("{jars['v1']}", str(jars["v1"])))
    result = deploy(env, tmp_path, BUILD_COMMAND=f"sh {script}")
    assert result.returncode == 2, result.stderr
    assert (f"pipeline: error: JAR: not set, and {libs} holds 2 jars (a.jar, b.jar) besides any -plain.jar: "
            "set JAR to the one to release") in result.stderr.splitlines()
    assert "building image" in result.stderr   # the phase began; no image came of it
    assert_nothing_changed(world, nginx, before)


# -- retention and rollback ---------------------------------------------------------------------------

def test_pruning_an_old_release_keeps_the_layers_a_kept_one_shares_and_rollback_recreates_from_its_image(
        world, nginx, env, jars, tmp_path):
    env = {**env, "KEEP_RELEASES": "1"}
    assert_ok(deploy(env, tmp_path, APP_VERSION="v1", JAR=str(jars["v1"])))
    v1_layers = layers(world.client, world.container("blue").attrs["Config"]["Image"])
    assert_ok(deploy(env, tmp_path, APP_VERSION="v2", JAR=str(jars["v2"])))
    assert_ok(deploy(env, tmp_path, APP_VERSION="v3", JAR=str(jars["v1"])))   # the v1 jar again
    tags = sorted(t.split(":")[1] for image in world.client.images.list(filters={"label": f"pipeline.app={world.app}"})
                  for t in image.tags)
    assert tags == ["v2", "v3"], "v1 removed (KEEP_RELEASES=1), v2 kept as the rollback target"
    # v1's image is gone; every layer of it lives on in v3, which runs.
    assert layers(world.client, f"{world.app}:v3") == v1_layers
    assert nginx.get().text == "version=v3 color=blue\n"
    # No registry: status knows each release by the engine's image id, and says so.
    report = json.loads(ok_out(run_pipeline(["status", "--json"], env, tmp_path)))
    assert {name: (r["digest"], r["digest_of"]) for name, r in report["releases"].items() if r} == {
        "live": (world.client.api.inspect_image(f"{world.app}:v3")["Id"], "image id"),
        "previous": (world.client.api.inspect_image(f"{world.app}:v2")["Id"], "image id")}
    # Rollback with v2's container gone: recreated from its layered image.
    world.container("green").remove(force=True)
    assert_ok(run_pipeline(["rollback"], env, tmp_path))
    assert nginx.get().text == "version=v2 color=green\n"


def test_a_base_image_the_engine_cannot_get_fails_the_build_in_one_line_naming_it(world, nginx, env, stack, jars,
                                                                                   tmp_path):
    before = nginx.include.read_text()
    base = f"{stack['REGISTRY_ADDR']}/nope-{world.app}:1"   # the stack's registry: it wants a login
    result = deploy(env, tmp_path, JAR=str(jars["v1"]), BASE_IMAGE=base)
    assert result.returncode == 1, result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("pipeline: error:")]
    assert line.startswith(f"pipeline: error: docker engine at the local socket: building image {world.app}:v1 "
                           f"from the jar on {base}: "), line
    assert_nothing_changed(world, nginx, before)


def test_a_base_image_the_engine_lacks_is_pulled_first_with_the_registry_login(world, nginx, env, stack, jars,
                                                                                tmp_path):
    password = Path(stack["REGISTRY_PASSWORD_FILE"]).read_text().strip()
    auth = {"username": stack["REGISTRY_USER"], "password": password}
    base = f"{stack['REGISTRY_ADDR']}/base-{world.app}:17"
    world.client.api.tag(stack["JRE_IMAGE"], base.rpartition(":")[0], "17")
    try:
        for chunk in world.client.api.push(base.rpartition(":")[0], tag="17", stream=True, decode=True, auth_config=auth):
            assert "error" not in chunk, chunk
    finally:
        world.client.api.remove_image(base)   # the engine no longer has it by that name
    env = {**env, "REGISTRY": stack["REGISTRY_ADDR"], "REGISTRY_USERNAME": stack["REGISTRY_USER"],
           "REGISTRY_PASSWORD": password}
    try:
        result = deploy(env, tmp_path, JAR=str(jars["v1"]), BASE_IMAGE=base)
        assert_ok(result)
        assert f"pulling {base}" in result.stderr
        assert nginx.get().text == "version=v1 color=blue\n"
    finally:
        if world.client.api.images(name=base):
            world.client.api.remove_image(base)


# -- digests, rollback --to and pruning, with the registry ----------------------------------------------

def registry_of(stack) -> Tuple[str, Tuple[str, str]]:
    return stack["REGISTRY_ADDR"], (stack["REGISTRY_USER"], Path(stack["REGISTRY_PASSWORD_FILE"]).read_text().strip())


def registry_digest(stack, app: str, version: str) -> str:
    """The registry's own digest of a tag's manifest (its Docker-Content-Digest answer)."""
    address, auth = registry_of(stack)
    answer = requests.head(f"http://{address}/v2/{app}/manifests/{version}", timeout=10, auth=auth,
                           headers={"Accept": MANIFEST_V2})
    answer.raise_for_status()
    return answer.headers["Docker-Content-Digest"]


def test_status_and_history_show_each_release_registry_digest_and_pruning_newer_releases_keeps_an_older_ones_layers(
        world, nginx, env, stack, jars, tmp_path):
    """v1, v2, v3 deployed; `rollback --to v1` (recreated from its layered image over v2's
    container); v4 deployed with KEEP_RELEASES=1, which prunes v2 and v3: both newer than v1 and
    sharing its dependency and loader layers. v1, kept as the previous release, still starts from
    its image (its container removed first) and the registry still serves every blob of it."""
    address, auth = registry_of(stack)
    env = {**env, "REGISTRY": address, "REGISTRY_USERNAME": auth[0], "REGISTRY_PASSWORD": auth[1]}
    for version in ("v1", "v2", "v3"):
        assert_ok(deploy(env, tmp_path, APP_VERSION=version, JAR=str(jars[version])))
    repository = f"{address}/{world.app}"
    digests = {v: registry_digest(stack, world.app, v) for v in ("v1", "v2", "v3")}
    assert len(set(digests.values())) == 3

    result = run_pipeline(["rollback", "--to", "v1"], env, tmp_path)
    assert_ok(result)
    assert "recreating" in result.stderr and nginx.get().text == "version=v1 color=green\n"
    assert_ok(deploy(env, tmp_path, APP_VERSION="v4", JAR=str(jars["v4"]), KEEP_RELEASES="1"))
    digests["v4"] = registry_digest(stack, world.app, "v4")
    assert nginx.get().text == "version=v4 color=blue\n"
    tags = sorted(t.rpartition(":")[2] for image in world.client.images.list(filters={"label": f"pipeline.app={world.app}"})
                  for t in image.tags)
    assert tags == ["v1", "v4"], "v2 and v3 pruned (KEEP_RELEASES=1); v1 kept as the previous release"

    # status: the record's releases, each with the registry's digest of its tag, saying so.
    report = json.loads(ok_out(run_pipeline(["status", "--json"], env, tmp_path)))
    assert {name: (r["version"], r["digest"], r["digest_of"]) for name, r in report["releases"].items() if r} == {
        "live": ("v4", digests["v4"], "registry"), "previous": ("v1", digests["v1"], "registry")}
    text = ok_out(run_pipeline(["status"], env, tmp_path)).splitlines()
    assert f"  live:     {repository}:v4  {digests['v4']}  (registry digest)" in text, text
    assert f"  previous: {repository}:v1  {digests['v1']}  (registry digest)" in text, text
    # history: every run names the digest of the release it made live; the rollback, v1's.
    entries = json.loads(ok_out(run_pipeline(["history", "--json"], env, tmp_path)))
    assert [(e["action"], e["version"], e["digest"], e["digest_of"]) for e in entries] == [
        ("deploy", "v1", digests["v1"], "registry"), ("deploy", "v2", digests["v2"], "registry"),
        ("deploy", "v3", digests["v3"], "registry"), ("rollback", "v1", digests["v1"], "registry"),
        ("deploy", "v4", digests["v4"], "registry")]
    table = ok_out(run_pipeline(["history"], env, tmp_path)).splitlines()
    assert [row.split()[8:10] for row in table[1:]] == [[digests[e["version"]][:19], "(registry)"] for e in entries]

    # The pruning left every layer of v1 on the engine (it runs from them below) and the registry
    # still serves every blob of v1's manifest: a node that lacks it can pull it.
    manifest = requests.get(f"http://{address}/v2/{world.app}/manifests/{digests['v1']}", timeout=10, auth=auth,
                            headers={"Accept": MANIFEST_V2}).json()
    for blob in [manifest["config"], *manifest["layers"]]:
        answer = requests.head(f"http://{address}/v2/{world.app}/blobs/{blob['digest']}", timeout=10, auth=auth)
        assert answer.status_code == 200 and int(answer.headers["Content-Length"]) == blob["size"], blob
    world.container("green").remove(force=True)   # v1's kept container gone: recreated from its image
    result = run_pipeline(["rollback", "--to", "v1"], env, tmp_path)
    assert_ok(result)
    assert "recreating" in result.stderr
    assert nginx.get().text == "version=v1 color=green\n"
    assert world.container("green").image.id == world.client.api.inspect_image(f"{repository}:v1")["Id"]


def ok_out(result: subprocess.CompletedProcess) -> str:
    assert_ok(result)
    return result.stdout
