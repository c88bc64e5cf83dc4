"""Network namespaces of the test's own (no default route in them), a TCP relay into one, and a
second dockerd living in one, for tests of where health probes run.

Everything here is created by the test and removed after it. A namespace made here has only its
loopback (and whatever a dockerd inside adds), so nothing sent from inside can leave the machine.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import List

import docker

from .outside import pump

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetNamespace:
    """`ip netns add NAME` with its loopback up; `delete()` removes it."""

    def __init__(self, prefix: str = "pprobe") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def routes(self) -> str:
        return subprocess.run(["ip", "-n", self.name, "-4", "route"], capture_output=True, text=True).stdout

    def argv(self, *command: str) -> List[str]:
        """Run a command inside (nsenter, not `ip netns exec`: that remounts /sys and breaks dockerd)."""
        return ["nsenter", f"--net={self.path}", *command]

    def listen(self, port: int) -> socket.socket:
        """A TCP listener on 127.0.0.1:port inside the namespace, made from a thread of its own
        (setns moves only the calling thread; the thread ends right after)."""
        made: dict = {}

        def inside() -> None:
            target = os.open(self.path, os.O_RDONLY)
            try:
                if _libc.setns(target, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {self.path}")
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen(32)
                made["sock"] = sock
            except BaseException as exc:  # reported to the caller below
                made["error"] = exc
            finally:
                os.close(target)

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        if "error" in made:
            raise made["error"]
        return made["sock"]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


class Relay:
    """Connections to 127.0.0.1:port inside a namespace are carried to 127.0.0.1:port here
    (the stack's sshd), so a process in the namespace reaches the nginx host and nothing else."""

    def __init__(self, namespace: NetNamespace, port: int) -> None:
        self.port = port
        self.listener = namespace.listen(port)
        self.connections = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                outer = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                outer.settimeout(None)
            except OSError:
                inner.close()
                continue
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.listener.close()


class NodeEngine:
    """A second dockerd in a namespace of its own: its bridges exist only in there, so from this
    machine its containers' addresses are not routed (the measured DOCKER_HOST case)."""

    def __init__(self, namespace: NetNamespace) -> None:
        self.namespace = namespace
        self.dir = Path(f"/tmp/{namespace.name}")
        self.dir.mkdir()
        self.socket = self.dir / "docker.sock"
        self.pidfile = self.dir / "docker.pid"
        (self.dir / "daemon.json").write_text(json.dumps({"live-restore": False}))
        self.log = open(self.dir / "dockerd.log", "wb")
        self.process = subprocess.Popen(namespace.argv(
            "dockerd", "--config-file", str(self.dir / "daemon.json"),
            "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
            "-H", f"unix://{self.socket}", "--pidfile", str(self.pidfile),
            "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
            "--containerd-namespace", namespace.name, "--containerd-plugins-namespace", f"{namespace.name}-p",
        ), stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = f"unix://{self.socket}"
        self.client = None
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client = docker.DockerClient(base_url=self.url, timeout=30)
                self.client.ping()
                break
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the node dockerd did not come up; see {self.dir / 'dockerd.log'}: "
                                       + (self.dir / "dockerd.log").read_text()[-2000:])
                time.sleep(0.3)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

