"""The test swarm (scripts/swarm.sh): helpers shared by the swarm tests; the session fixture
`swarm` that starts it is in conftest.py."""
from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import docker

from pipeline.core.errors import EngineFailed, PreflightError
from pipeline.core.settings import Settings
from pipeline.compose import make_target

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
    return {"NGINX_TEST_COMMAND": nginx.test_command, "NGINX_RELOAD_COMMAND": nginx.reload_command,
            "NGINX_PID_FILE": str(nginx.pid_file)}


def node_links() -> Dict[int, Tuple[int, int]]:
    """Each node's (bytes sent to it, bytes received from it) so far, on the host side of its veth
    (pswarm-hI) on the bridge: what it pulled from the registry, what it pushed, and whatever else
    crossed its link (swarm's own traffic, health probes, requests from nginx)."""
    out = {}
    for node in range(1, NODES + 1):
        stats = Path(f"/sys/class/net/pswarm-h{node}/statistics")
        out[node] = (int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text()))
    return out


def dead_nodes(swarm: Dict[str, str]) -> List[int]:
    """The nodes whose dockerd is not running (by their pid files, as swarm.sh sees them)."""
    dead = []
    for i in range(1, NODES + 1):
        try:
            os.kill(int((Path(swarm["SWARM_DIR"]) / f"n{i}" / "docker.pid").read_text()), 0)
        except (OSError, ValueError):
            dead.append(i)
    return dead


def bring_back(swarm: Dict[str, str], app: str) -> None:
    """Start again a node whose dockerd died outside a test's plan, saying so with its last log
    lines. Measured here: dockerd 20.10's swarmkit has crashed on the manager while a test's
    services were removed after a node had rejoined; every swarm test after it then failed on
    "connection refused". The crash is the engine's, not the tool's (which says exit 3, one line),
    and it must not take the rest of the session with it."""
    dead = dead_nodes(swarm)
    if not dead:
        return
    for i in dead:
        log = Path(swarm["SWARM_DIR"]) / f"n{i}" / "dockerd.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else ["(no log)"]
        # A Go crash starts with "panic:" or "fatal error:", then dumps every goroutine.
        crash = [n for n, line in enumerate(lines) if line.startswith(("panic:", "fatal error:"))]
        tail = lines[crash[-1]:crash[-1] + 30] if crash else lines[-20:]
        # A warning, so that the session's summary shows it even when every test passes.
        warnings.warn(f"swarm: node {i}'s dockerd was not running; started again. Its last log lines:\n"
                      + "\n".join(tail))
    swarm_sh("start")
    engine = make_target(swarm_settings(swarm, app), {})
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while sum(n.ready for n in engine.nodes()) < NODES:
        assert time.monotonic() < deadline, f"swarm nodes {dead} did not come back ready"
        time.sleep(0.5)


def app_of_its_own(swarm: Dict[str, str]) -> Iterator[str]:
    """The body of the swarm tests' `app` fixture (conftest.py): an app name of the test's own on a swarm whose
    nodes all run; its services are removed after the test."""
    name = f"s{uuid.uuid4().hex[:8]}"
    bring_back(swarm, name)
    yield name
    try:
        remove_services(swarm, name)
    except (EngineFailed, PreflightError):
        bring_back(swarm, name)
        remove_services(swarm, name)


def remove_services(swarm: Dict[str, str], app: str) -> None:
    engine = make_target(swarm_settings(swarm, app), {})
    for color in ("blue", "green"):
        engine.remove(color)
