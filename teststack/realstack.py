"""Helpers for tests against the real stack: dockerd, nginx, sshd and the registry on 127.0.0.1.

`scripts/stack.sh start` (run by .ci/run) brings the stack up; these helpers start what each test
owns (an nginx, a docker network, an app name) and remove it afterwards. A missing part is a test
error, never a skip.
"""
from __future__ import annotations

import itertools
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import docker
import requests

REPO = Path(__file__).resolve().parents[1]
NGINX_CONF_D = REPO / "nginx" / "conf.d"
NGINX_LIVE = REPO / "nginx" / "live"
# Top-level lines for the "live" form (Debian's libnginx-mod-http-lua; NDK must come first).
LUA_MODULES = ["load_module /usr/lib/nginx/modules/ndk_http_module.so;",
               "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"]


def stack_env() -> Dict[str, str]:
    out = subprocess.run(["bash", str(REPO / "scripts" / "stack.sh"), "env"], capture_output=True,
                         text=True, check=True).stdout
    env = {}
    for line in out.splitlines():
        match = re.match(r"^export (\w+)=(.*)$", line.strip())
        if match:
            env[match.group(1)] = shlex.split(match.group(2))[0] if match.group(2) else ""
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- docker networks -----------------------------------------------------------------------------

_SUBNET_COUNTER = itertools.count(os.getpid() % 200)


@dataclass
class TestNetwork:
    name: str
    subnet: str
    gateway: str
    blue_ip: str
    green_ip: str


def reserve_network(client: docker.DockerClient) -> TestNetwork:
    """A name and a free /24 for a deploy network (the tool creates it; the test removes it)."""
    taken = set()
    for net in client.api.networks():
        for config in (net.get("IPAM") or {}).get("Config") or []:
            if config.get("Subnet"):
                taken.add(config["Subnet"])
    for _ in range(256):
        third = next(_SUBNET_COUNTER) % 250 + 1
        subnet = f"172.29.{third}.0/24"
        if subnet not in taken:
            base = f"172.29.{third}"
            return TestNetwork(f"ptest-{uuid.uuid4().hex[:6]}", subnet, f"{base}.1", f"{base}.2", f"{base}.3")
    raise RuntimeError("no free 172.29.x.0/24 subnet for a test network")


def remove_app(client: docker.DockerClient, app: str) -> None:
    for container in client.containers.list(all=True, filters={"label": f"pipeline.app={app}"}):
        container.remove(force=True)
    for image in client.images.list(filters={"label": f"pipeline.app={app}"}):
        try:
            client.images.remove(image.id, force=True)
        except docker.errors.APIError:
            pass


def remove_network(client: docker.DockerClient, name: str) -> None:
    for net in client.networks.list(names=[name]):
        if net.name == name:
            net.reload()
            for container in net.containers:
                net.disconnect(container, force=True)
            net.remove()


def demo_settings(app: str, network: TestNetwork, stack: Mapping[str, str]) -> Dict[str, str]:
    """The demo service as `app`, built by the tool from this tree (no build command: the jar is
    there, see ensure_demo_jar), on `network` at its fixed blue and green addresses."""
    return {
        "APP_NAME": app, "BUILD_COMMAND": "",
        "DOCKERFILE": str(REPO / "docker" / "Dockerfile"), "BUILD_CONTEXT": str(REPO / "demo"),
        "BUILD_ARGS": f"BASE_IMAGE={stack['JRE_IMAGE']} JAR=build/libs/app.jar",
        "DEPLOY_NETWORK": network.name, "DEPLOY_SUBNET": network.subnet, "DEPLOY_GATEWAY": network.gateway,
        "BLUE_IP": network.blue_ip, "GREEN_IP": network.green_ip,
    }


# -- nginx ---------------------------------------------------------------------------------------

@dataclass
class Nginx:
    """An nginx of the test's own, built from the shipped configs in nginx/conf.d (or, for the
    "live" form, nginx/live/app-live.conf: pass admin_port, extra_conf=LUA_MODULES and the
    allowed_networks, usually the test network's subnet; `start` writes `token` to `token_file`,
    or leaves that file alone if `token` is None)."""

    directory: Path
    port: int
    preview_port: int
    form: str = "set"
    extra_conf: List[str] = field(default_factory=list)
    admin_port: int = 0
    allowed_networks: List[str] = field(default_factory=list)
    token: Optional[str] = field(default_factory=lambda: secrets.token_hex(32), repr=False)

    @property
    def conf(self) -> Path:
        return self.directory / "nginx.conf"

    @property
    def include(self) -> Path:
        name = "service-upstream.inc" if self.form == "upstream" else "service-url.inc"
        return self.directory / name

    @property
    def preview_include(self) -> Path:
        return self.directory / "service-url-preview.inc"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def token_file(self) -> Path:
        return self.directory / "pipeline-admin.token"

    @property
    def error_log(self) -> Path:
        """The main error log: where init_by_lua (start, reload) writes."""
        return self.directory / "error.log"

    @property
    def admin_error_log(self) -> Path:
        return self.directory / "pipeline-admin.error.log"

    @property
    def access_log(self) -> Path:
        return self.directory / "app.access.log"

    def argv(self, *extra: str) -> List[str]:
        return ["nginx", "-p", str(self.directory), "-c", str(self.conf), *extra]

    @property
    def pid_file(self) -> Path:
        """Where the master writes its pid (the `pid` directive): NGINX_PID_FILE."""
        return self.directory / "nginx.pid"

    @property
    def test_command(self) -> str:
        return shlex.join(self.argv("-t", "-q"))

    @property
    def reload_command(self) -> str:
        return shlex.join(self.argv("-s", "reload"))

    def write_config(self) -> None:
        server_file = "app-upstream.conf" if self.form == "upstream" else "app.conf"
        sources = [NGINX_CONF_D / name for name in ("00-log-format.conf", server_file, "app-preview.conf")]
        if self.form == "live":
            sources = [NGINX_CONF_D / "00-log-format.conf", NGINX_LIVE / "app-live.conf"]
        parts = []
        for source in sources:
            name = source.name
            text = source.read_text()
            text = text.replace("/etc/nginx/conf.d/", f"{self.directory}/")
            text = text.replace("/var/log/nginx/", f"{self.directory}/")
            text = re.sub(r"listen\s+80\b[^;]*;", f"listen 127.0.0.1:{self.port};", text)
            text = re.sub(r"listen\s+8081\b[^;]*;", f"listen 127.0.0.1:{self.preview_port};", text)
            text = re.sub(r"listen\s+127\.0\.0\.1:8091\b[^;]*;", f"listen 127.0.0.1:{self.admin_port};", text)
            if name == "app-live.conf":
                text = _live_settings(text, self.token_file, self.allowed_networks)
            (self.directory / name).write_text(text)
            parts.append(f"    include {self.directory / name};")
        self.conf.write_text("\n".join([
            "worker_processes 1;",
            f"pid {self.directory}/nginx.pid;",
            f"error_log {self.directory}/error.log;",
            *self.extra_conf,
            "events { worker_connections 4096; }",
            "http {",
            "    access_log off;",
            *parts,
            "}",
            "",
        ]))

    def start(self) -> None:
        self.write_config()
        if self.form == "live":
            # No include yet: nothing serves (503) until the first deploy. (A placeholder such as
            # the discard port would not load: app-live.conf refuses loopback addresses.)
            if self.token is not None:
                self.write_token(self.token)
        else:
            placeholder = "127.0.0.1:9"  # discard port: nothing serves until the first deploy
            if not self.include.exists():
                if self.form == "upstream":
                    self.include.write_text(f"upstream app_live {{\n    server {placeholder};\n}}\n")
                else:
                    self.include.write_text(f"set $service_url http://{placeholder};\n")
            if not self.preview_include.exists():
                self.preview_include.write_text(f"set $preview_url http://{placeholder};\n")
        subprocess.run(self.argv(), check=True, capture_output=True)
        # `nginx` returns once it has daemonized: the master writes its pid file and forks its
        # worker a moment later. A test that starts right away must find nginx whole.
        wait_for(self.worker_pids, 5, what="nginx's worker process to start")

    def write_token(self, token: str) -> None:
        """The admin token file, as the install steps make it (mode 0600); nginx reads it when
        it starts or reloads."""
        self.token_file.touch(mode=0o600)
        self.token_file.chmod(0o600)
        self.token_file.write_text(token + "\n")

    def reload(self) -> None:
        """`nginx -s reload`, returning once the new workers run and the old ones are gone: by
        then the master has read the config (and app-live.conf its token and includes) again."""
        before = set(self.worker_pids())
        subprocess.run(self.argv("-s", "reload"), check=True, capture_output=True)
        wait_for(lambda: (lambda now: now and not now & before)(set(self.worker_pids())), 10,
                 what="nginx's workers to be replaced by the reload")

    def worker_pids(self) -> List[int]:
        """The pids of nginx's worker processes: a reload replaces them, a live switch does not."""
        try:
            master = (self.directory / "nginx.pid").read_text().strip()
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except (FileNotFoundError, ValueError):
            return []
        return sorted(int(pid) for pid in children)

    def stop(self) -> None:
        subprocess.run(self.argv("-s", "quit"), capture_output=True)
        pid_file = self.directory / "nginx.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def get(self, path: str = "/", preview: bool = False, timeout: float = 5.0) -> requests.Response:
        port = self.preview_port if preview else self.port
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=timeout,
                            headers={"Connection": "close"})


def _live_settings(text: str, token_file: Path, allowed_networks: List[str]) -> str:
    """app-live.conf with the test's token file and allowed networks in its settings block."""
    text, files = re.subn(r'token_file = "[^"]*"', f'token_file = "{token_file}"', text)
    listed = ", ".join(f'"{network}"' for network in allowed_networks)
    text, networks = re.subn(r"allowed_networks = \{[^}]*\}", f"allowed_networks = {{ {listed} }}", text)
    assert (files, networks) == (1, 1), "app-live.conf's settings block changed: update realstack.py"
    return text


# -- running the tool ----------------------------------------------------------------------------

def pipeline_env(env: Dict[str, str]) -> Dict[str, str]:
    """This process's environment without any pipeline setting, plus the test's settings."""
    full = {k: v for k, v in os.environ.items() if not _is_setting(k)}
    full.update(env)
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    return full


def run_pipeline(args: List[str], env: Dict[str, str], cwd: Path, timeout: float = 300,
                 ) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, as Jenkins or a developer runs it."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=pipeline_env(env),
                          capture_output=True, text=True, timeout=timeout)


def start_pipeline(args: List[str], env: Dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=pipeline_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _is_setting(name: str) -> bool:
    from pipeline.core.settings import SETTING_NAMES

    return name in SETTING_NAMES


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
