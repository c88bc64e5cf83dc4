"""SshHost.open_channel (health probes and admin requests over SSH) reconnects as SFTP and exec
calls do, over a fake SSH client and transport at our own seam (the client SshHost holds, and
`_open_client`, which makes a new one). The same over a real sshd: tests/integration/test_nginx_host.py."""
from __future__ import annotations

import socket
from typing import List

import paramiko
import pytest

from pipeline.adapters import nginx_host
from pipeline.core.errors import NginxHostFailed, PreflightError
from pipeline.adapters.nginx_host import SshHost
from pipeline.core.settings import NginxSettings, Settings


class FakeChannel:
    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout


class FakeTransport:
    """`outcome` says what opening a channel does: "open", "drop" (the connection goes while the
    channel opens, as when its sshd was killed and paramiko had not noticed yet), "refuse" (the
    sshd could not connect to the target) or "slow" (no answer within the timeout)."""

    def __init__(self, outcome: str = "open", active: bool = True) -> None:
        self.outcome, self.active = outcome, active
        self.opened: List[tuple] = []

    def is_active(self) -> bool:
        return self.active

    def open_channel(self, kind: str, dest: tuple, src: tuple, timeout: float) -> FakeChannel:
        assert self.active, "paramiko raises on a transport that is not active; SshHost must not ask"
        if self.outcome == "drop":
            self.active = False
            raise EOFError()
        if self.outcome == "refuse":
            raise paramiko.ChannelException(2, "Connect failed")
        if self.outcome == "slow":
            raise paramiko.SSHException("Timeout opening channel.")
        self.opened.append((kind, dest, timeout))
        return FakeChannel()


class FakeClient:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.closed = False

    def get_transport(self) -> FakeTransport:
        return self.transport

    def close(self) -> None:
        self.closed = True
        self.transport.active = False


@pytest.fixture
def settings(tmp_path) -> Settings:
    (tmp_path / "key").write_text("")
    (tmp_path / "known_hosts").write_text("")
    return Settings.from_env({"NGINX_HOST": "nginx1", "NGINX_SSH_KEY": str(tmp_path / "key"),
                              "NGINX_SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts")}, tmp_path)


class Connects:
    """Stands for `_open_client`: hands out the given clients, or raises as an unreachable host does."""

    def __init__(self, *clients) -> None:
        self.clients = list(clients)
        self.calls = 0

    def __call__(self, nginx: NginxSettings, timeout: float) -> FakeClient:
        self.calls += 1
        client = self.clients.pop(0)
        if isinstance(client, BaseException):
            raise client
        return client


REFUSED = PreflightError("nginx host root@nginx1:22 is unreachable: Connection refused")
REFUSED.__cause__ = ConnectionRefusedError(111, "Connection refused")


LOST = {"found-dead": lambda: FakeTransport(active=False), "lost-while-opening": lambda: FakeTransport("drop")}


@pytest.mark.parametrize("lost", LOST)
def test_a_channel_over_a_lost_connection_connects_again(settings, monkeypatch, lost):
    fresh = FakeTransport()
    connects = Connects(FakeClient(fresh))
    monkeypatch.setattr(nginx_host, "_open_client", connects)
    host = SshHost(FakeClient(LOST[lost]()), "root@nginx1:22", settings.nginx, settings.network_timeout)  # type: ignore[arg-type]
    channel = host.open_channel("127.0.0.1", 8081, 5.0)
    assert isinstance(channel, FakeChannel) and channel.timeout == 5.0
    assert fresh.opened == [("direct-tcpip", ("127.0.0.1", 8081), 5.0)] and connects.calls == 1
    host.open_channel("127.0.0.1", 8081, 5.0)   # and the new connection is kept
    assert len(fresh.opened) == 2 and connects.calls == 1


@pytest.mark.parametrize("lost", LOST)
def test_a_failed_reconnect_is_one_line_and_not_tried_again(settings, monkeypatch, lost):
    connects = Connects(REFUSED)
    monkeypatch.setattr(nginx_host, "_open_client", connects)
    host = SshHost(FakeClient(LOST[lost]()), "root@nginx1:22", settings.nginx, settings.network_timeout)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(NginxHostFailed) as caught:
            host.open_channel("127.0.0.1", 8081, 5.0)
        assert str(caught.value) == ("nginx host root@nginx1:22 over SSH: connecting again after the "
                                     "connection was lost: Connection refused")
    assert connects.calls == 1   # the second call fails at once: no NETWORK_TIMEOUT per probe


def test_a_connection_lost_again_at_once_is_one_line(settings, monkeypatch):
    connects = Connects(FakeClient(FakeTransport("drop")))
    monkeypatch.setattr(nginx_host, "_open_client", connects)
    host = SshHost(FakeClient(FakeTransport("drop")), "root@nginx1:22", settings.nginx, settings.network_timeout)  # type: ignore[arg-type]
    with pytest.raises(NginxHostFailed) as caught:
        host.open_channel("127.0.0.1", 8081, 5.0)
    assert str(caught.value) == ("nginx host root@nginx1:22 over SSH: opening a channel to 127.0.0.1:8081: "
                                 "the connection was closed")


def test_a_target_that_refuses_or_a_slow_sshd_is_the_callers_answer_not_a_reconnect(settings, monkeypatch):
    monkeypatch.setattr(nginx_host, "_open_client", Connects())   # any connect fails the test
    host = SshHost(FakeClient(FakeTransport("refuse")), "root@nginx1:22", settings.nginx, settings.network_timeout)  # type: ignore[arg-type]
    with pytest.raises(paramiko.ChannelException):
        host.open_channel("172.20.0.3", 8080, 5.0)
    host = SshHost(FakeClient(FakeTransport("slow")), "root@nginx1:22", settings.nginx, settings.network_timeout)  # type: ignore[arg-type]
    with pytest.raises(socket.timeout, match="no channel within 5s"):
        host.open_channel("172.20.0.3", 8080, 5.0)
