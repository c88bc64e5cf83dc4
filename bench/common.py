"""What the bench scripts share: a docker network of their own with the demo service on it.

The network is created first and removed last, after every container on it; nothing is sent to
an address on it unless a container of ours holds that address.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import docker

from teststack.realstack import Nginx, TestNetwork, demo_settings, remove_app, remove_network, reserve_network, stack_env

REPO = Path(__file__).resolve().parents[1]


class BenchNetwork:
    """A bench network (fixed IPs, like the seed's `deploy` network), the demo image (unless
    `build` is false), and a work directory. On exit: every container and image labelled
    bench.run=<name>, then the network, then the directory."""

    def __init__(self, purpose: str, build: bool = True) -> None:
        self.build = build
        self.client = docker.from_env()
        self.stack: Dict[str, str] = stack_env()
        self.name = f"bench-{uuid.uuid4().hex[:6]}-{purpose}"
        self.work = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.net = reserve_network(self.client)
        self.image = f"{self.name}:v1"

    def __enter__(self) -> "BenchNetwork":
        n = self.net
        self.client.networks.create(n.name, driver="bridge", labels={"bench.run": self.name},
                                    ipam=docker.types.IPAMConfig(pool_configs=[
                                        docker.types.IPAMPool(subnet=n.subnet, gateway=n.gateway)]))
        if not self.build:
            return self
        self.client.images.build(path=str(REPO / "demo"), dockerfile=str(REPO / "docker" / "Dockerfile"),
                                 tag=self.image, labels={"bench.run": self.name}, rm=True,
                                 buildargs={"BASE_IMAGE": self.stack["JRE_IMAGE"], "JAR": "build/libs/app.jar"})
        return self

    def __exit__(self, *exc: object) -> None:
        for container in self.client.containers.list(all=True, filters={"label": f"bench.run={self.name}"}):
            container.remove(force=True)
        remove_network(self.client, self.net.name)
        for image in self.client.images.list(filters={"label": f"bench.run={self.name}"}):
            try:
                self.client.images.remove(image.id, force=True)
            except docker.errors.APIError:
                pass
        shutil.rmtree(self.work, ignore_errors=True)

    def run(self, role: str, ip: str, **kwargs):
        """Start the demo service as `role` at `ip` on the bench network; return once it listens."""
        container = self.client.containers.create(self.image, name=f"{self.name}-{role}",
                                                  labels={"bench.run": self.name}, network=self.net.name, **kwargs)
        network = self.client.networks.get(self.net.name)
        network.disconnect(container)          # attached with any address by create; pin it
        network.connect(container, ipv4_address=ip)
        container.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            container.reload()
            if container.status == "running" and b"listening" in container.logs():
                return container
            time.sleep(0.2)
        raise SystemExit(f"{role} container did not start: {container.logs()[-500:]!r}")


def format_table(rows: List[Dict[str, object]], columns: Sequence[str]) -> str:
    """The rows as a plain text table, one left-aligned column per name in `columns`."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def write_rows(rows: List[Dict[str, object]], columns: Sequence[str], json_path: Optional[Path]) -> None:
    """The table on stdout; every row, with all its keys, also as JSON to `json_path` if given."""
    sys.stdout.write(format_table(rows, columns))
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2) + "\n")


def ensure_demo_jar() -> None:
    """Build the demo service's jar unless it is there already (the bench images copy it in)."""
    if not (REPO / "demo" / "build" / "libs" / "app.jar").is_file():
        subprocess.run(["bash", str(REPO / "demo" / "build.sh")], check=True, cwd=REPO / "demo")


@contextmanager
def nginx_world(client: docker.DockerClient, prefix: str, make_nginx: Callable[[Path, Any], Any],
                app_prefix: str = "b") -> Iterator[Tuple[Path, Any, str, Any]]:
    """A work directory, a reserved network, an app name and a started nginx of the bench's own
    (`make_nginx(directory, network)`), as (cwd, network, app, nginx). On exit nginx and the app's
    containers go before the network, so nothing is probed on a vanished one."""
    with tempfile.TemporaryDirectory(prefix=prefix) as temp:
        cwd = Path(temp)
        network = reserve_network(client)
        app = f"{app_prefix}{uuid.uuid4().hex[:8]}"
        nginx = make_nginx(cwd / "nginx", network)
        nginx.start()
        try:
            yield cwd, network, app, nginx
        finally:
            nginx.stop()
            remove_app(client, app)
            remove_network(client, network.name)


# -- the settings a bench passes to the tool ------------------------------------------------------

#: Short health, drain and stop waits: the benches that take them measure the switch, not the waits.
QUICK_TIMINGS: Dict[str, str] = {"HEALTH_INTERVAL": "0.5", "HEALTH_TIMEOUT": "30", "DRAIN_SECONDS": "0.5",
                                 "STOP_TIMEOUT": "5"}

SWITCH_MODES = ("reload", "live")




def ssh_settings(stack: Mapping[str, str]) -> Dict[str, str]:
    """nginx reached over SSH: the stack's sshd on 127.0.0.1, as root (its files are this machine's)."""
    return {"NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": stack["SSH_PORT"], "NGINX_SSH_USER": "root",
            "NGINX_SSH_KEY": stack["SSH_KEY"], "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"]}


def nginx_settings(nginx: Nginx, switch: str = "reload", ssh: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The tool switching the bench's own `nginx` in `switch` mode; locally, or with `ssh` (the
    stack's settings) through the stack's sshd."""
    if switch not in SWITCH_MODES:
        raise ValueError(f"switch mode {switch!r}: one of {', '.join(SWITCH_MODES)}")
    settings = ssh_settings(ssh) if ssh is not None else {"NGINX_HOST": ""}
    settings.update(NGINX_INCLUDE=str(nginx.include), NGINX_TEST_COMMAND=nginx.test_command,
                    NGINX_RELOAD_COMMAND=nginx.reload_command, NGINX_PID_FILE=str(nginx.pid_file))
    if switch == "live":
        # `false`: live mode must never test or reload nginx, and a deploy that did would fail.
        settings.update(SWITCH_MODE="live", NGINX_ADMIN_URL=nginx.admin_url,
                        NGINX_ADMIN_TOKEN_FILE=str(nginx.token_file),
                        NGINX_TEST_COMMAND="false", NGINX_RELOAD_COMMAND="false")
    return settings


def bench_env(app: str, network: TestNetwork, nginx: Nginx, stack: Mapping[str, str], *,
              switch: str = "reload", over_ssh: bool = False, **extra: str) -> Dict[str, str]:
    """The settings for deploying the demo service on `network` behind the bench's own `nginx`:
    `demo_settings`, then `nginx_settings`, then what is particular to the bench (`extra` wins)."""
    return {**demo_settings(app, network, stack),
            **nginx_settings(nginx, switch, ssh=stack if over_ssh else None), **extra}


def tool_trees(parser: Any, against: Optional[Path], first: str) -> List[Tuple[str, Path]]:
    """This tree (named `first`) and, with `--against DIR`, another copy of the pipeline package."""
    trees: List[Tuple[str, Path]] = [(first, REPO)]
    if against is not None:
        if not (against / "pipeline" / "__init__.py").is_file():
            parser.error(f"--against {against}: no pipeline package there")
        trees.append((against.name, against.resolve()))
    return trees


def compile_trees(trees: Sequence[Tuple[str, Path]], source: bool) -> None:
    """Bytecode compiled first, as `pip install` does (`source`: removed, so each run compiles)."""
    for _, tree in trees:
        if source:
            shutil.rmtree(tree / "pipeline" / "__pycache__", ignore_errors=True)
        else:
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "pipeline")], check=True)
