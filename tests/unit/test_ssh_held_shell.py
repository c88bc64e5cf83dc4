"""SshHost's held shell where `sh -s` does not work on the nginx host (its session ends before a
command begins): each command then has a session of its own, as before. Over a fake transport at
our own seam; the held shell itself over a real sshd: tests/integration/test_ssh_held_shell.py."""
from __future__ import annotations

from typing import List

from pipeline.adapters.nginx_host import SshHost


class Session:
    """A session channel: `exec sh -s` ends at once (no sh on the host); any other command
    prints `output` and exits 0."""

    def __init__(self, log: List[str]) -> None:
        self.log = log
        self.command = ""
        self.closed = self.eof_received = False

    def set_combine_stderr(self, combine: bool) -> None:
        pass

    def settimeout(self, timeout: float) -> None:
        pass

    def exec_command(self, command: str) -> None:
        self.command = command
        self.log.append(f"exec {command}")

    def exit_status_ready(self) -> bool:
        return self.eof_received

    def sendall(self, data: bytes) -> None:
        self.log.append("line")

    def recv(self, size: int) -> bytes:
        self.eof_received = True
        return b""   # the session ended

    def makefile(self, mode: str) -> "Session":
        return self

    def read(self) -> bytes:
        return f"ran {self.command}\n".encode()

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class Transport:
    def __init__(self) -> None:
        self.log: List[str] = []

    def is_active(self) -> bool:
        return True

    def open_session(self, timeout: float) -> Session:
        return Session(self.log)

    def close(self) -> None:
        # Called by a deadline's timer (another thread): recorded, and the test asserts on it.
        self.log.append("closed")


class Client:
    def __init__(self) -> None:
        self.transport = Transport()

    def get_transport(self) -> Transport:
        return self.transport

    def close(self) -> None:
        pass


def test_where_sh_does_not_hold_each_command_has_a_session_of_its_own():
    client = Client()
    host = SshHost(client, "root@nginx1:22", None, 5.0)  # type: ignore[arg-type]
    assert (host.run(["nginx", "-t"]).code, host.run(["nginx", "-t"]).output) == (0, "ran nginx -t\n")
    assert host.run(["true"]).output == "ran true\n"
    # One try at a held shell (its session ended before the command began), then no more.
    assert client.transport.log[:3] == ["exec exec sh -s", "line", "exec nginx -t"]
    assert client.transport.log.count("exec exec sh -s") == 1
    assert "closed" not in client.transport.log   # no deadline passed
