"""Outside parts that fail on cue, for the fault matrix: each started by a test and stopped after.

- pump: one direction of a socket relay (also used by netns.Relay).
- DockerRelay: a unix socket that relays to the real dockerd; `kill()` makes the engine vanish
  for the tool alone (the shared dockerd and everyone else's containers are untouched).
- SilentListener: accepts TCP on 127.0.0.1 and never answers (a hanging registry).
- OwnSshd: a second sshd on a free 127.0.0.1 port with the stack's host key and authorized key,
  optionally without the SFTP subsystem; its connections can be cut (`kill_sessions`).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import List, Sequence

from teststack.realstack import free_port, wait_for

DOCKER_SOCKET = "/var/run/docker.sock"


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy `source` to `sink` until either side ends, then shut both down (one direction of a relay)."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DockerRelay:
    def __init__(self, path: Path, target: str = DOCKER_SOCKET) -> None:
        self.path = path
        self.target = target
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        self._open: List[socket.socket] = []
        self._lock = threading.Lock()
        self._dead = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            with self._lock:
                if self._dead:
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    def kill(self) -> None:
        """The engine is gone: the socket refuses, every open connection is cut."""
        with self._lock:
            self._dead = True
            sockets, self._open = self._open, []
        self._server.close()
        self.path.unlink(missing_ok=True)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class SilentListener:
    """127.0.0.1:PORT accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self.accepted: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted.append(conn)   # kept open, never read from or written to

    def stop(self) -> None:
        self._server.close()
        for conn in self.accepted:
            conn.close()


class OwnSshd:
    """`sshd -D` of the test's own, from the stack's sshd_config with the port (and possibly
    the SFTP subsystem) changed."""

    def __init__(self, stack: dict, directory: Path, sftp: bool = True, extra: Sequence[str] = ()) -> None:
        stack_dir = Path(stack["STACK_DIR"])
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        lines = []
        for line in (stack_dir / "sshd_config").read_text().splitlines():
            word = line.split(" ", 1)[0]
            if word == "Port":
                line = f"Port {self.port}"
            elif word == "PidFile":
                line = f"PidFile {directory}/sshd.pid"
            elif word == "Subsystem" and not sftp:
                continue
            lines.append(line)
        lines += list(extra)
        self.config = directory / "sshd_config"
        self.config.write_text("\n".join(lines) + "\n")
        host_key = (stack_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.known_hosts = directory / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(host_key)}\n")
        self.log = directory / "sshd.log"
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(self.config), "-E", str(self.log)])
        wait_for(self._listening, 10, what=f"the test's sshd on 127.0.0.1:{self.port}")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def env(self, ssh_env: dict) -> dict:
        return {**ssh_env, "NGINX_SSH_PORT": str(self.port), "NGINX_SSH_KNOWN_HOSTS": str(self.known_hosts)}

    def kill_sessions(self) -> None:
        """SIGKILL every process the listener forked for its connections (the monitor and the
        process serving the connection under it): those connections drop, as when a host dies."""
        _kill(_descendants(self.process.pid))

    def stop(self, drop_connections: bool = False) -> None:
        """The listener only: sessions it started go on (sshd forks them), unless
        `drop_connections`: then they are killed once no new connection can be made."""
        sessions = _descendants(self.process.pid) if drop_connections else []
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _kill(sessions)


def _kill(pids: List[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _descendants(pid: int) -> List[int]:
    """Every process below `pid`, parents before their children."""
    out: List[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in map(int, children):
        out += [child] + _descendants(child)
    return out
