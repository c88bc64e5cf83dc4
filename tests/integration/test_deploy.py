"""The core deploy against the real engine, nginx and sshd (issue: core blue-green deploy)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from teststack.realstack import run_pipeline

pytestmark = pytest.mark.integration


def deploy(env, cwd, *args, **overrides):
    result = run_pipeline(["deploy", *args], {**env, **overrides}, cwd)
    return result


def assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"


@pytest.mark.parametrize("over_ssh", [False, True], ids=["local-nginx", "nginx-over-ssh"])
def test_two_deploys_switch_colors_and_keep_the_old_one_stopped(request, world, nginx, tmp_path, over_ssh):
    env = request.getfixturevalue("ssh_env" if over_ssh else "settings_env")
    net = world.network

    first = deploy(env, tmp_path, APP_VERSION="v1")
    assert_ok(first)
    assert nginx.include.read_text() == f"set $service_url http://{net.blue_ip}:8080;\n"
    assert nginx.get().text == "version=v1 color=blue\n"
    assert "switching nginx to blue" in first.stderr

    second = deploy(env, tmp_path, APP_VERSION="v2")
    assert_ok(second)
    assert nginx.include.read_text() == f"set $service_url http://{net.green_ip}:8080;\n"
    assert nginx.get().text == "version=v2 color=green\n"
    # The old color is stopped, not removed: it is the rollback target.
    assert world.state("blue") == "exited"
    assert world.container("blue").labels["pipeline.version"] == "v1"
    green = world.container("green")
    assert green.labels == {**green.labels, "pipeline.app": world.app, "pipeline.color": "green",
                            "pipeline.version": "v2"}
    assert green.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"] == net.green_ip
    assert not green.attrs["HostConfig"]["PortBindings"], "no host port is published"
    # nginx's access log records which upstream served each request.
    assert f"upstream={net.green_ip}:8080" in nginx.access_log.read_text().splitlines()[-1]
    # Releases are separate image tags, not one tag overwritten.
    tags = {t for image in world.client.images.list(filters={"label": f"pipeline.app={world.app}"})
            for t in image.tags}
    assert {f"{world.app}:v1", f"{world.app}:v2"} <= tags

    status = run_pipeline(["status", "--json"], env, tmp_path)
    assert_ok(status)
    report = json.loads(status.stdout)
    assert (report["live_color"], report["live_version"]) == ("green", "v2")
    assert report["colors"]["green"]["state"] == "running"
    assert report["colors"]["green"]["health"].startswith("HTTP 200")
    assert report["colors"]["blue"]["state"] == "exited"
    assert report["include"]["points_at"] == f"{net.green_ip}:8080"
    assert report["settings"]["deploy_network"] == net.name

    text = run_pipeline(["status"], env, tmp_path)
    assert_ok(text)
    assert "live:     green (v2)" in text.stdout


def test_first_deploy_creates_the_network_with_the_configured_subnet(world, nginx, settings_env, tmp_path):
    assert not world.client.networks.list(names=[world.network.name])
    assert_ok(deploy(settings_env, tmp_path))
    network = world.client.networks.get(world.network.name)
    config = network.attrs["IPAM"]["Config"][0]
    assert (config["Subnet"], config["Gateway"]) == (world.network.subnet, world.network.gateway)


def test_network_with_another_subnet_is_refused_before_anything_changes(world, nginx, settings_env, tmp_path):
    world.client.networks.create(world.network.name, driver="bridge", ipam={
        "Config": [{"Subnet": world.network.subnet.replace(".0/24", ".0/25")}]})
    before = nginx.include.read_text()
    result = deploy(settings_env, tmp_path)
    assert result.returncode == 3, result.stderr
    assert f"not DEPLOY_SUBNET={world.network.subnet}" in result.stderr
    assert nginx.include.read_text() == before
    assert world.container("blue") is None


def test_registry_push_and_pull(world, nginx, settings_env, stack, tmp_path):
    password = Path(stack["REGISTRY_PASSWORD_FILE"]).read_text().strip()
    env = {**settings_env, "REGISTRY": stack["REGISTRY_ADDR"], "REGISTRY_USERNAME": stack["REGISTRY_USER"],
           "REGISTRY_PASSWORD": password, "APP_VERSION": "r1"}
    result = deploy(env, tmp_path)
    assert_ok(result)
    ref = f"{stack['REGISTRY_ADDR']}/{world.app}:r1"
    assert world.container("blue").attrs["Config"]["Image"] == ref
    assert f"docker push {ref}: done" in result.stderr and f"docker pull {ref}: done" in result.stderr
    assert password not in result.stderr + result.stdout
    # The registry really has it: remove the local copy and pull it back with the same credentials.
    world.client.login(stack["REGISTRY_USER"], password, registry=stack["REGISTRY_ADDR"])
    manifest = world.client.api.inspect_distribution(ref, auth_config={
        "username": stack["REGISTRY_USER"], "password": password})
    assert manifest["Descriptor"]["digest"].startswith("sha256:")
    assert nginx.get().text == "version=r1 color=blue\n"


def test_registry_with_a_wrong_password_fails_without_touching_traffic(world, nginx, settings_env, stack, tmp_path):
    assert_ok(deploy(settings_env, tmp_path, APP_VERSION="v1"))
    env = {**settings_env, "REGISTRY": stack["REGISTRY_ADDR"], "REGISTRY_USERNAME": stack["REGISTRY_USER"],
           "REGISTRY_PASSWORD": "not-the-password", "APP_VERSION": "v2"}
    result = deploy(env, tmp_path)
    # Proven in preflight, before the build: exit 3.
    assert result.returncode == 3, result.stderr
    assert f"registry {stack['REGISTRY_ADDR']}: login as {stack['REGISTRY_USER']} failed: " in result.stderr
    assert "not-the-password" not in result.stderr and "building image" not in result.stderr
    assert nginx.get().text == "version=v1 color=blue\n"
    assert world.container("green") is None


def test_build_command_runs_in_the_working_directory_and_failure_stops_the_deploy(world, nginx, settings_env, tmp_path):
    (tmp_path / "build.sh").write_text("echo building in $(pwd)\nexit 7\n")
    result = deploy(settings_env, tmp_path, BUILD_COMMAND="sh build.sh")
    assert result.returncode == 1
    assert f"building in {tmp_path}" in result.stderr
    assert "build command `sh build.sh` exited with 7" in result.stderr
    assert world.container("blue") is None
    assert "127.0.0.1:9" in nginx.include.read_text()


def test_version_defaults_to_the_git_sha(world, nginx, settings_env, tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
                    "-m", "x"], cwd=tmp_path, check=True)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.strip()
    env = {k: v for k, v in settings_env.items() if k != "APP_VERSION"}
    assert_ok(deploy(env, tmp_path))
    assert nginx.get().text == f"version={sha} color=blue\n"


def test_existing_blue_with_no_include_is_probed_as_the_seed_does(world, nginx, settings_env, tmp_path):
    assert_ok(deploy(settings_env, tmp_path, APP_VERSION="v1"))
    nginx.include.write_text("# lost\n")   # the include says nothing usable
    result = deploy(settings_env, tmp_path, APP_VERSION="v2")
    assert_ok(result)
    assert "blue answers its health check" in result.stderr
    assert world.state("green") == "running" and world.state("blue") == "exited"


def test_container_env_file_and_volumes_reach_the_container(world, nginx, settings_env, tmp_path):
    (tmp_path / "app.env").write_text("GREETING=hello\n")
    volume = f"{world.app}-data-{{color}}"
    env = {**settings_env, "CONTAINER_ENV_FILE": str(tmp_path / "app.env"),
           "CONTAINER_VOLUMES": f"{volume}:/data"}
    assert_ok(deploy(env, tmp_path))
    blue = world.container("blue")
    assert "GREETING=hello" in blue.attrs["Config"]["Env"]
    assert blue.attrs["Mounts"][0]["Name"] == f"{world.app}-data-blue"
    blue.remove(force=True)
    world.client.volumes.get(f"{world.app}-data-blue").remove()
