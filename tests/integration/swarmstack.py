"""The test swarm (scripts/swarm.sh): helpers shared by the swarm tests; the session fixture
`swarm` that starts it is in conftest.py."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict

import docker

from pipeline.settings import Settings

from .realstack import LUA_MODULES, REPO, Nginx, free_port

SWARM_SH = REPO / "scripts" / "swarm.sh"
NODES = 3
# scripts/swarm.sh's bridge pswarm0: the nodes' addresses, and all a live nginx's admin takes.
NODE_NETWORK = "10.99.0.0/24"
# A JVM per task on 2 shared cores: a few seconds each, more while other tests run.
CONVERGE_TIMEOUT = 120


def swarm_sh(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(["bash", str(SWARM_SH), *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"swarm.sh {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


def start_swarm(stack: Dict[str, str]) -> Dict[str, str]:
    swarm_sh("start", str(NODES))
    env = {}
    for line in swarm_sh("env").splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.replace("\\ ", " ")
    remove_leftovers(env)
    # The release's base image, where the manager builds and every node pulls.
    swarm_sh("push", stack["JRE_IMAGE"])
    return env


def remove_leftovers(swarm: Dict[str, str]) -> None:
    """Services of an earlier, killed test session would hold the node ports 8081/8082."""
    client = docker.DockerClient(base_url=swarm["SWARM_MANAGER"], timeout=60)
    for service in client.services.list():
        if re.fullmatch(r"s[0-9a-f]{8}", (service.attrs["Spec"].get("Labels") or {}).get("pipeline.app", "")):
            service.remove()
    client.close()


def swarm_env(swarm: Dict[str, str], app: str, **extra: str) -> Dict[str, str]:
    """The settings of a deploy of the demo service to the test swarm, as environment variables."""
    return {
        "TARGET": "swarm", "DOCKER_HOST": swarm["SWARM_MANAGER"], "REGISTRY": swarm["SWARM_REGISTRY"],
        "REGISTRY_USERNAME": swarm["SWARM_REGISTRY_USER"],
        "REGISTRY_PASSWORD": Path(swarm["SWARM_REGISTRY_PASSWORD_FILE"]).read_text().strip(),
        "APP_NAME": app, "STOP_TIMEOUT": "5", "BUILD_COMMAND": "",
        # Verification (30 s by default, on a swarm too) only where a test turns it on.
        "VERIFY_SECONDS": "0",
        "DOCKERFILE": str(REPO / "docker" / "Dockerfile"), "BUILD_CONTEXT": str(REPO / "demo"),
        "BUILD_ARGS": f"BASE_IMAGE={swarm['SWARM_REGISTRY']}/pipeline/jre:17 JAR=build/libs/app.jar",
        **extra,
    }


def swarm_settings(swarm: Dict[str, str], app: str, **extra: str) -> Settings:
    # Read from here, where no .env file is: only these settings count.
    return Settings.from_env(swarm_env(swarm, app, **extra), Path(__file__).parent)


def swarm_nginx(directory: Path, mode: str) -> Nginx:
    """A started nginx of the test's own in front of the swarm: for `live`, app-live.conf with its
    admin taking the nodes' network only; else the upstream form, which reload mode rewrites."""
    if mode == "live":
        server = Nginx(directory, free_port(), free_port(), form="live", extra_conf=list(LUA_MODULES),
                       admin_port=free_port(), allowed_networks=[NODE_NETWORK])
    else:
        server = Nginx(directory, free_port(), free_port(), form="upstream")
    server.directory.mkdir()
    server.start()
    return server


def switch_env(nginx: Nginx, mode: str) -> Dict[str, str]:
    """The settings that make deploys switch `nginx` in `mode`."""
    if mode == "live":
        # Live mode never tests or reloads nginx; a deploy that did would fail.
        return {"SWITCH_MODE": "live", "NGINX_ADMIN_URL": nginx.admin_url,
                "NGINX_ADMIN_TOKEN_FILE": str(nginx.token_file),
                "NGINX_TEST_COMMAND": "false", "NGINX_RELOAD_COMMAND": "false"}
    return {"NGINX_TEST_COMMAND": nginx.test_command, "NGINX_RELOAD_COMMAND": nginx.reload_command}
