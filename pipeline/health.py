"""The health gate: GET the new container's health URL until it answers 200.

Probes go only to an address a container of ours holds (checked before every probe), because a
private address nobody holds here may be routed off this machine.

Readiness is seen fast without probing fast: the health probes back off up to HEALTH_INTERVAL,
while a cheap check that the port accepts connections runs every 100 ms in the waits between
them. A JVM service listens only once its framework is up, so the moment it starts listening the
probes start over from short gaps (the first one at once).
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Callable, Optional

import requests
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type

from .errors import HealthCheckFailed

log = logging.getLogger("pipeline")

# While waiting between probes the container's state is checked this often, so a crash is seen
# at once rather than after HEALTH_INTERVAL or HEALTH_TIMEOUT.
ALIVE_CHECK_EVERY = 0.25
# With a connect check, the container's state and then the port are checked this often.
CONNECT_CHECK_EVERY = 0.1
# The first wait between probes; each next one doubles, up to HEALTH_INTERVAL.
FIRST_WAIT = 0.25
# Once the port accepts connections: probe at once, then wait this long first, doubling again.
# Short, because a framework that listens is at most moments from answering its health check.
FIRST_WAIT_ONCE_LISTENING = 0.1
# The local connect check gives up after this long (a refused connect comes back at once).
CONNECT_TIMEOUT = 0.2


class NotHealthyYet(Exception):
    def __init__(self, last: str) -> None:
        super().__init__(last)
        self.last = last


def probe(session: requests.Session, url: str, timeout: float) -> str:
    """One GET; returns a short description of the answer, raises NotHealthyYet unless 200."""
    try:
        response = session.get(url, timeout=(min(timeout, 2.0), timeout), allow_redirects=False)
    except requests.RequestException as exc:
        raise NotHealthyYet(_short(exc)) from exc
    answer = f"HTTP {response.status_code} {response.text[:120].strip()!r}"
    if response.status_code != 200:
        raise NotHealthyYet(answer)
    return answer


class Backoff:
    """The waits between health probes: `first`, doubling, never more than `longest`.
    `start_over(first)` goes back to short gaps. Also a tenacity wait strategy."""

    def __init__(self, first: float, longest: float) -> None:
        self.longest = longest
        self._next = min(first, longest)

    def start_over(self, first: float) -> None:
        self._next = min(first, self.longest)

    def __call__(self, state: object = None) -> float:
        gap = self._next
        self._next = min(gap * 2, self.longest)
        return gap


class PortWatch:
    """Tells when `can_connect` turns true: the service has just started listening.

    Starts as "not listening", so a port that is already open when the wait begins counts as
    opening at the first check: one extra probe at most, never a missed start."""

    def __init__(self, can_connect: Optional[Callable[[], bool]]) -> None:
        self.can_connect = can_connect
        self.listening = False

    def opened(self) -> bool:
        if self.can_connect is None:
            return False
        was, self.listening = self.listening, bool(self.can_connect())
        return self.listening and not was


def connect_check(ip: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Callable[[], bool]:
    """`can_connect` for a container reached directly: does ip:port accept a TCP connection?

    Only for an address a container of ours holds on a local docker network: wait_healthy calls
    it right after `check_alive` has said so."""

    def can_connect() -> bool:
        try:
            with socket.create_connection((ip, port), timeout=timeout):
                return True
        except OSError:
            return False

    return can_connect


def wait_healthy(url: str, interval: float, timeout: float, check_alive: Callable[[], None],
                 session: Optional[requests.Session] = None,
                 logs: Callable[[], list] = lambda: [],
                 can_connect: Optional[Callable[[], bool]] = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """Probe until 200 or `timeout` s pass, at most `interval` s apart; returns the attempts made.

    `check_alive` raises (e.g. ContainerExited) if the container is gone or does not hold the
    address any more; it runs before each probe and during every wait. `can_connect` (optional)
    says whether the service's port accepts connections; it runs during the waits, every
    CONNECT_CHECK_EVERY s and right after `check_alive`, and when it turns true the probes start
    over from short gaps. `clock` and `sleep` are the time this runs on.
    """
    session = session or requests.Session()
    probe_timeout = max(0.5, min(interval, 5.0))
    started = clock()
    backoff = Backoff(FIRST_WAIT, interval)
    port = PortWatch(can_connect)
    tick = ALIVE_CHECK_EVERY if can_connect is None else CONNECT_CHECK_EVERY

    def attempt() -> str:
        check_alive()
        return probe(session, url, probe_timeout)

    def next_wait(state: RetryCallState) -> float:
        # Never past the deadline: the last probe comes at `timeout`, not up to `interval` later.
        return max(0.0, min(backoff(), started + timeout - clock()))

    def wait_for_next_probe(seconds: float) -> None:
        deadline = clock() + seconds
        while True:
            check_alive()
            if port.opened():
                log.info("    port open after %.1fs; probing now", clock() - started)
                backoff.start_over(FIRST_WAIT_ONCE_LISTENING)
                return
            left = deadline - clock()
            if left <= 0:
                return
            sleep(min(tick, left))

    def out_of_time(state: RetryCallState) -> bool:
        return clock() - started >= timeout

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else interval
        log.info("    health attempt %d: %s; next in %.2gs", state.attempt_number,
                 getattr(exc, "last", exc), wait)

    retrying = Retrying(
        stop=out_of_time,
        # Start quick and settle at `interval`: a fast service (or a kept container on rollback)
        # is seen within a fraction of a second, and no probe is ever more than `interval` apart.
        # The port opening starts the gaps over (wait_for_next_probe).
        wait=next_wait,
        retry=retry_if_exception_type(NotHealthyYet),
        sleep=wait_for_next_probe,
        before_sleep=before_sleep,
    )
    try:
        answer = retrying(attempt)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise HealthCheckFailed(url, exc.last_attempt.attempt_number, getattr(last, "last", str(last)),
                                logs()) from last
    attempts = retrying.statistics.get("attempt_number", 1)
    log.info("    healthy after %d attempt(s), %.1fs: %s", attempts, clock() - started, answer)
    return attempts


def _short(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or unreachable"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__
