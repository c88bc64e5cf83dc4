"""Fixtures for the real stack. Teardown order matters: nginx stops and the app's containers go
before the test's docker network is removed, so nothing is ever probed on a vanished network."""
from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

import docker
import pytest

from teststack.realstack import REPO, Nginx, TestNetwork, demo_settings, free_port, remove_app, remove_network, reserve_network, stack_env
from teststack import switchmodes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def stack() -> Dict[str, str]:
    env = stack_env()
    try:
        docker.from_env().ping()
    except Exception as exc:  # a missing part is a failure, not a skip
        pytest.fail(f"docker engine not reachable ({exc}); run scripts/stack.sh start")
    for key in ("SSH_KEY", "SSH_KNOWN_HOSTS", "REGISTRY_PASSWORD_FILE"):
        if not Path(env.get(key, "")).is_file():
            pytest.fail(f"{key} missing from the stack ({env.get(key)}); run scripts/stack.sh start")
    return env


@pytest.fixture(scope="session")
def client(stack) -> docker.DockerClient:
    return docker.from_env()


@pytest.fixture(scope="session")
def demo_jar(stack) -> Path:
    # build.sh skips the build when the jar is newer than the sources: a jar left over from an
    # older Demo.java (without a switch a test uses) is rebuilt.
    jar = REPO / "demo" / "build" / "libs" / "app.jar"
    subprocess.run(["bash", str(REPO / "demo" / "build.sh")], check=True, cwd=REPO / "demo",
                   capture_output=True)
    return jar


# A tag of our own on the demo release's layers without the per-app labels (see below).
LAYERS_TAG = "pipeline-test-layers:demo"


@pytest.fixture(scope="session")
def release_layers(client, demo_jar, stack) -> str:
    """The demo release's shared layers (jar, user, entrypoint), built once per session and tagged.

    Every test's app name is new, so its first build differs from all others only in the LABEL
    steps the tool adds last; but each test's teardown force-removes its images, and with them
    the untagged layers below, so without this tag every test built the jar's layers anew (about
    1 s of each first deploy on 2 cores). The tool still runs its own `docker build` each time,
    with the same Dockerfile, context and build args: the engine just finds those steps cached.
    The tag is left in place: it is small, and the next session (or a parallel one) uses it too."""
    client.images.build(path=str(REPO / "demo"), dockerfile=str(REPO / "docker" / "Dockerfile"),
                        buildargs={"BASE_IMAGE": stack["JRE_IMAGE"], "JAR": "build/libs/app.jar"},
                        tag=LAYERS_TAG, rm=True, forcerm=True)
    return LAYERS_TAG


@pytest.fixture(scope="session")
def sqlite_build_args(client, demo_jar) -> str:
    """BUILD_ARGS for a release of the demo that reaches a real SQLite database (teststack/sqlite.py):
    its jar with the JDBC driver on pipeline/jre-sql:17, built here when missing. Its layers are
    tagged, as release_layers does for the plain one."""
    from teststack import sqlite

    build_args = sqlite.build_jre()
    client.images.build(path=str(REPO / "demo"), dockerfile=str(REPO / "docker" / "Dockerfile"),
                        buildargs=dict(arg.split("=", 1) for arg in build_args.split()),
                        tag=LAYERS_TAG + "-sqlite", rm=True, forcerm=True)
    return build_args


@dataclass
class World:
    """What one test owns on the engine: an app name and a deploy network."""

    client: docker.DockerClient
    app: str
    network: TestNetwork

    def container(self, color: str):
        try:
            return self.client.containers.get(f"{self.app}-{color}")
        except docker.errors.NotFound:
            return None

    def state(self, color: str) -> str:
        container = self.container(color)
        return container.status if container else "absent"

    def running_containers(self) -> list:
        return self.client.containers.list(filters={"label": f"pipeline.app={self.app}"})


@pytest.fixture
def world(client, demo_jar, release_layers) -> Iterator[World]:
    network = reserve_network(client)
    app = f"t{uuid.uuid4().hex[:8]}"
    yield World(client, app, network)
    remove_app(client, app)
    remove_network(client, network.name)


@pytest.fixture
def nginx(world, tmp_path, request) -> Iterator[Nginx]:
    """An nginx of the test's own; the include form ("set" or "upstream") may be parametrized
    indirectly."""
    server = Nginx(tmp_path / "nginx", free_port(), free_port(), form=getattr(request, "param", "set"))
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mode_nginx(world, tmp_path, mode) -> Iterator[Nginx]:
    """The nginx for a module's `mode` fixture (teststack.switchmodes: reload, reload-upstream or
    live; for live the Lua config, its admin on a free port); a module that switches modes names
    it its `nginx`."""
    server = switchmodes.make_nginx(mode, tmp_path / "nginx", world.network)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings_env(world, nginx, stack) -> Dict[str, str]:
    """Settings for a fast deploy of the demo service through the test's own nginx, locally."""
    return {
        **demo_settings(world.app, world.network, stack),
        "APP_VERSION": "v1",
        "HEALTH_INTERVAL": "0.5",
        "HEALTH_TIMEOUT": "30",
        "DRAIN_SECONDS": "0.5",
        # Off here, so the rest of the suite is not 30 s longer per deploy; test_verify.py turns
        # it on (and points NGINX_ACCESS_LOG at this nginx's log).
        "VERIFY_SECONDS": "0",
        "STOP_TIMEOUT": "5",
        "NGINX_HOST": "",
        "NGINX_INCLUDE": str(nginx.include),
        "NGINX_TEST_COMMAND": nginx.test_command,
        "NGINX_RELOAD_COMMAND": nginx.reload_command,
        "NGINX_PID_FILE": str(nginx.pid_file),
    }


@pytest.fixture
def ssh_env(settings_env, stack) -> Dict[str, str]:
    """The same, with nginx reached over SSH on 127.0.0.1 (key auth, checked host key)."""
    return {
        **settings_env,
        "NGINX_HOST": "127.0.0.1",
        "NGINX_SSH_PORT": stack["SSH_PORT"],
        "NGINX_SSH_USER": "root",
        "NGINX_SSH_KEY": stack["SSH_KEY"],
        "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"],
    }


@pytest.fixture(scope="session")
def swarm(stack) -> Iterator[Dict[str, str]]:
    """The 3-node test swarm (scripts/swarm.sh), its registry holding the JRE base image; stopped
    at the end of the session (left running with PIPELINE_KEEP_SWARM=1, for the next session).

    One swarm serves one pytest session at a time: its bridge, namespaces and node ports are
    the machine's, so a second session waits here (an flock) until the first is done."""
    import fcntl

    from teststack.swarmstack import start_swarm, swarm_sh

    with open("/tmp/pipeline-swarm.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        env = start_swarm(stack)
        yield env
        if os.environ.get("PIPELINE_KEEP_SWARM") != "1":
            swarm_sh("stop")


@pytest.fixture
def app(swarm) -> Iterator[str]:
    """An app name of the test's own on the swarm; its services are removed after the test."""
    from teststack.swarmstack import app_of_its_own

    yield from app_of_its_own(swarm)


@pytest.fixture
def swarm_nginx(tmp_path) -> Iterator[Nginx]:
    """An nginx of the test's own in front of the swarm, in the upstream form that reload mode
    rewrites (test_swarm_verify.py makes its own, for each switch mode)."""
    from teststack import swarmstack

    server = swarmstack.swarm_nginx(tmp_path / "nginx", "reload")
    yield server
    server.stop()
