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
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import docker

from teststack.realstack import remove_app, remove_network, reserve_network, stack_env

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
