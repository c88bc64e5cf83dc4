"""scripts/stack.sh acts on its own dockerd only, named by pid file and socket (issue 11).

The swarm tests run more dockerd on this machine; `restart-dockerd` once took `pidof dockerd`
(every daemon) and failed. Here a second, throwaway dockerd plays the one stack.sh manages while
the shared one runs: the shared daemon is never stopped by this test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import docker
import pytest

from teststack.realstack import REPO

pytestmark = pytest.mark.integration

MAIN_PIDFILE = Path("/var/run/docker.pid")
NAME_LOOKUP = "stack.sh looked up a process by name"
DOCKERD = shutil.which("dockerd") or "/usr/bin/dockerd"


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def answers(socket: Path) -> bool:
    try:
        client = docker.DockerClient(base_url=f"unix://{socket}", timeout=5)
        try:
            return client.ping()
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


class Throwaway:
    """A dockerd with its own data-root, exec-root, socket, pid file, config and network namespace
    (no networking)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pidfile = root / "docker.pid"
        self.socket = root / "docker.sock"
        self.config = root / "daemon.json"
        self.config.write_text("{}\n")
        self.args = (f"--data-root {root}/data --exec-root {root}/exec --bridge=none --iptables=false"
                     f" --ip-masq=false --ip-forward=false --containerd-namespace {root.name}"
                     f" --containerd-plugins-namespace {root.name}-plugins")

    def stack_env(self) -> dict:
        return {**os.environ, "PATH": f"{self.own_network()}:{self.no_name_lookups()}:{os.environ['PATH']}",
                "STACK_DIR": str(self.root / "stack"), "DOCKERD_PIDFILE": str(self.pidfile),
                "DOCKERD_SOCKET": str(self.socket), "DOCKERD_CONFIG": str(self.config),
                "DOCKERD_ARGS": self.args}

    def own_network(self) -> Path:
        """A PATH entry whose `dockerd` runs in a network namespace of its own. A dockerd started
        with --bridge=none deletes the machine's docker0 (moby's removeDefaultBridgeInterface),
        and the shared daemon's builds then fail on "could not find bridge docker0"."""
        bin_dir = self.root / "own-network"
        bin_dir.mkdir(exist_ok=True)
        shim = bin_dir / "dockerd"
        shim.write_text(f'#!/bin/sh\nexec unshare --net -- {DOCKERD} "$@"\n')
        shim.chmod(0o755)
        return bin_dir

    def no_name_lookups(self) -> Path:
        """A PATH entry whose pidof, pgrep, pkill and killall refuse to run. A stack.sh that went
        back to finding dockerd by name then fails here, instead of finding the shared daemon and
        restarting it under every other test on this machine."""
        bin_dir = self.root / "no-name-lookups"
        bin_dir.mkdir(exist_ok=True)
        for tool in ("pidof", "pgrep", "pkill", "killall"):
            shim = bin_dir / tool
            shim.write_text(f'#!/bin/sh\necho "{NAME_LOOKUP}: {tool} $*" >&2\nexit 99\n')
            shim.chmod(0o755)
        return bin_dir

    def start(self) -> None:
        # setsid -f: the daemon is not our child, as the shared one is not stack.sh's once it exits.
        with (self.root / "first.log").open("w") as log:
            subprocess.run(["setsid", "-f", str(self.own_network() / "dockerd"), "--pidfile", str(self.pidfile), "-H", f"unix://{self.socket}",
                            "--config-file", str(self.config), *self.args.split()],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=10)
        deadline = time.monotonic() + 60
        while not answers(self.socket):
            assert time.monotonic() < deadline, (self.root / "first.log").read_text()[-2000:]
            time.sleep(0.3)

    def stop(self) -> None:
        if not self.pidfile.is_file():
            return
        pid = read_pid(self.pidfile)
        if not alive(pid):
            return
        os.kill(pid, 15)
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid):
            os.kill(pid, 9)


@pytest.fixture
def throwaway() -> Iterator[Throwaway]:
    # Short path under /tmp: a unix socket path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="sg-dd-", dir="/tmp"))
    daemon = Throwaway(root)
    bridge_before = Path("/sys/class/net/docker0").exists()
    try:
        yield daemon
    finally:
        daemon.stop()
        # dockerd bind-mounts its data-root onto itself and leaves that mount behind when it exits.
        if os.path.ismount(root / "data"):
            subprocess.run(["umount", str(root / "data")], check=True, timeout=30)
        shutil.rmtree(root)
    # The shared daemon's default bridge is not the throwaway's to remove (its builds' RUN steps use it).
    assert Path("/sys/class/net/docker0").exists() == bridge_before, "the throwaway dockerd removed docker0"


def test_restart_dockerd_restarts_only_the_daemon_named_by_its_pid_file(throwaway):
    throwaway.start()
    old_pid = read_pid(throwaway.pidfile)
    main_pid = read_pid(MAIN_PIDFILE)
    assert alive(main_pid), "the shared dockerd is not running; run scripts/stack.sh start"

    # A caller's DOCKER_HOST (a swarm manager, say) must not divert stack.sh from its daemon.
    env = {**throwaway.stack_env(), "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    restart = subprocess.run(["bash", str(REPO / "scripts" / "stack.sh"), "restart-dockerd"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert NAME_LOOKUP not in restart.stderr, restart.stderr
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert f"dockerd: stopped (pid {old_pid})" in restart.stdout

    new_pid = read_pid(throwaway.pidfile)
    assert new_pid != old_pid and not alive(old_pid) and alive(new_pid)
    assert answers(throwaway.socket)
    # Two dockerd ran throughout; the shared one was left alone.
    assert read_pid(MAIN_PIDFILE) == main_pid and alive(main_pid)


def test_restart_dockerd_refuses_a_pid_file_that_names_no_dockerd(throwaway):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        throwaway.pidfile.write_text(f"{sleeper.pid}\n")
        restart = subprocess.run(["bash", str(REPO / "scripts" / "stack.sh"), "restart-dockerd"],
                                 env=throwaway.stack_env(), capture_output=True, text=True, timeout=60)
        assert NAME_LOOKUP not in restart.stderr, restart.stderr
        assert restart.returncode == 1
        assert f"no running dockerd in {throwaway.pidfile}" in restart.stderr
        assert sleeper.poll() is None, "stack.sh signalled a process that is not dockerd"
    finally:
        sleeper.kill()
        sleeper.wait()
        throwaway.pidfile.unlink()
