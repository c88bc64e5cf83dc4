"""paramiko waits without a timeout for a channel request's answer; the deadline bounds it."""
from __future__ import annotations

import socket
import threading
import time

import paramiko
import pytest

from pipeline.adapters.nginx_host import _deadline


class StuckTransport:
    """Stands for a transport whose server never answers a channel request: `wait_for_answer`
    blocks like paramiko's Channel._wait_for_event until the transport is closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def wait_for_answer(self) -> None:
        # Bounded only so that a broken deadline fails the test instead of hanging it: a tripwire
        # 100x the deadline the test sets, never a measure of how soon it fired.
        assert self.closed.wait(timeout=30), "the deadline never closed the transport"
        raise paramiko.SSHException("Channel closed.")


def test_an_answer_that_never_comes_ends_at_the_deadline_as_a_timeout():
    transport = StuckTransport()
    started = time.monotonic()
    with pytest.raises(socket.timeout, match="no answer within 0.3s"):
        with _deadline(transport, 0.3):
            transport.wait_for_answer()
    assert time.monotonic() - started >= 0.3      # never before the deadline (how soon after: not asserted)
    assert transport.closed.is_set()


def test_an_exchange_within_the_deadline_leaves_the_connection_open():
    transport = StuckTransport()
    with _deadline(transport, 0.2):
        pass
    time.sleep(0.3)
    assert not transport.closed.is_set()


def test_a_failure_before_the_deadline_is_reported_as_itself():
    transport = StuckTransport()
    with pytest.raises(paramiko.SSHException, match="refused"):
        with _deadline(transport, 5.0):
            raise paramiko.SSHException("refused")
    assert not transport.closed.is_set()
