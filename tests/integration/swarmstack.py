"""The test swarm (scripts/swarm.sh): helpers shared by the swarm tests; the session fixture
`swarm` that starts it is in conftest.py."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict

import docker

from pipeline.settings import Settings

from .realstack import REPO

SWARM_SH = REPO / "scripts" / "swarm.sh"
NODES = 3
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
