"""The health gate and the ready hold: when a color just started counts as ready, and stays so.

No I/O of its own: a target hands over a `Gate` (its alive check, one probe over every endpoint it
needs, its port check) and the run's clock; health.py has the transports the probes go through.

Readiness is seen fast without probing fast: the health probes back off up to HEALTH_INTERVAL,
while a cheap check that the port accepts connections (`can_connect`, the transport's) runs every
100 ms in the waits between them. A JVM service listens only once its framework is up, so the
moment it starts listening the probes start over from short gaps (the first one at once).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type

from pipeline.core.clock import Clock
from pipeline.core.errors import HealthCheckFailed

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

# The connect check gives up after this long (a refused connect comes back at once).
CONNECT_TIMEOUT = 0.2


class NotHealthyYet(Exception):
    def __init__(self, last: str) -> None:
        super().__init__(last)
        self.last = last


class Transport(Protocol):
    """An HTTP getter on the side of the network nginx is on."""

    where: str

    def get(self, url: str, timeout: float) -> Tuple[int, str]:
        """GET without redirects: (status, start of the body); NotHealthyYet if no answer came."""
        ...

    def can_connect(self, ip: str, port: int, timeout: float) -> bool:
        """True if a TCP connection to ip:port opens from this side."""
        ...


class Probing(Transport, Protocol):
    """A transport that checks the route to each address first (Prober): what a flow probes with."""

    def check_routes(self, ips: Sequence[str]) -> None:
        """RouteRefused unless the probing side may take its route to every one (one engine:
        over a local bridge; a swarm: a node's address, by any route); PreflightError if the
        nginx host runs no commands."""
        ...

    def route_to(self, ip: str) -> str:
        """How the probing side reaches `ip` ("via 10.0.0.1 on eth0", "directly on br-1a2b"), for
        `status`; RouteRefused as `check_routes`."""
        ...


def probe(transport: Transport, url: str, timeout: float) -> str:
    """One GET; returns a short description of the answer, raises NotHealthyYet unless 200."""
    status, text = transport.get(url, timeout)
    answer = f"HTTP {status} {text.strip()!r}"
    if status != 200:
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


def connect_check(transport: Transport, ip: str, port: int,
                  timeout: float = CONNECT_TIMEOUT) -> Callable[[], bool]:
    """`can_connect` for a Gate: does ip:port accept a TCP connection from where the transport
    probes? Only for an address a container of ours holds: wait_ready calls it right after
    `check_alive` has said so."""
    return lambda: transport.can_connect(ip, port, timeout)


@dataclass(frozen=True)
class Gate:
    """What the health gate waits on: a color just started, as its target sees it (one container
    at one address, or every task of a swarm color at its node's address)."""

    # What a failed gate names: the health URL, or "every task of app-green at /health".
    what: str
    # What the phase line says is awaited: "app-green to answer URL", "3 task(s) of app-green to ...".
    awaited: str
    # Raises (ContainerExited, TaskFailed) when the color failed: the wait ends at once. Runs
    # before each probe and during every wait.
    check_alive: Callable[[], None]
    # One attempt (each probe may take `timeout`): raises NotHealthyYet unless every endpoint the
    # gate needs answers 200; returns the answer, for the log.
    probe_all: Callable[[float], str]
    # The color's last log lines, for the failure's detail.
    logs: Callable[[], List[str]] = lambda: []
    # Optional: does the service's port accept connections? (see the module docstring)
    can_connect: Optional[Callable[[], bool]] = None


def wait_ready(gate: Gate, interval: float, timeout: float, clock: Clock) -> int:
    """The health gate: attempt until every endpoint answers 200 or `timeout` s pass, at most
    `interval` s apart; returns the attempts made.

    `gate.check_alive` runs before each attempt and during every wait (a color that failed ends
    the wait at once). `gate.can_connect` (optional) runs during the waits, every
    CONNECT_CHECK_EVERY s and right after `check_alive`, and when it turns true the probes start
    over from short gaps. `clock` is the time this runs on.
    """
    probe_timeout = max(0.5, min(interval, 5.0))
    started = clock.now()
    backoff = Backoff(FIRST_WAIT, interval)
    port = PortWatch(gate.can_connect)
    tick = ALIVE_CHECK_EVERY if gate.can_connect is None else CONNECT_CHECK_EVERY

    def attempt() -> str:
        gate.check_alive()
        return gate.probe_all(probe_timeout)

    def next_wait(state: RetryCallState) -> float:
        # Never past the deadline: the last probe comes at `timeout`, not up to `interval` later.
        return max(0.0, min(backoff(), started + timeout - clock.now()))

    def wait_for_next_probe(seconds: float) -> None:
        deadline = clock.now() + seconds
        while True:
            gate.check_alive()
            if port.opened():
                log.info("    port open after %.1fs; probing now", clock.now() - started)
                backoff.start_over(FIRST_WAIT_ONCE_LISTENING)
                return
            left = deadline - clock.now()
            if left <= 0:
                return
            clock.sleep(min(tick, left))

    def out_of_time(state: RetryCallState) -> bool:
        return clock.now() - started >= timeout

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
        answer: str = retrying(attempt)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise HealthCheckFailed(gate.what, exc.last_attempt.attempt_number, getattr(last, "last", str(last)),
                                gate.logs()) from last
    attempts = int(retrying.statistics.get("attempt_number", 1))
    log.info("    healthy after %d attempt(s), %.1fs: %s", attempts, clock.now() - started, answer)
    return attempts


# After the gate (MIN_READY_SECONDS, and the last look before the old color is stopped): probes
# at most this far apart, HEALTH_INTERVAL if shorter; each may take this long; after a failed one
# the next comes this soon; this many failed in a row mean the release stopped answering.
READY_PROBE_EVERY_MAX = 1.0

READY_PROBE_TIMEOUT = 2.0

READY_RETRY_AFTER = 0.5

READY_FAILS = 2


def stay_ready(seconds: float, interval: float, problem: Callable[[], Optional[str]],
               probe_all: Callable[[float], object], clock: Clock) -> Optional[str]:
    """Watch a release that has passed its health gate for `seconds`: why it stopped being ready,
    or None when it held to the end.

    `problem` (the container or tasks: exited, restarted, gone, lost their address; None if
    fine) runs every ALIVE_CHECK_EVERY s and right before each probe, so a crash is seen at once
    and an address nothing of ours holds is never probed. `probe_all(timeout)` (raises
    NotHealthyYet unless every address answers 200) runs every `interval` s, at most
    READY_PROBE_EVERY_MAX apart, and once more at the end: the window ends only on a probe that
    passed, and READY_FAILS failures in a row (one slow answer on a busy host is not one) end it.
    `seconds=0` is one look: the check, then a probe (retried once).
    """
    started = clock.now()
    end = started + seconds
    every = min(interval, READY_PROBE_EVERY_MAX)
    next_probe = min(started + every, end)
    fails = 0
    while True:
        found = problem()
        if found is not None:
            return found
        now = clock.now()
        if now >= next_probe:
            try:
                probe_all(READY_PROBE_TIMEOUT)
                fails = 0
            except NotHealthyYet as exc:
                fails += 1
                if fails >= READY_FAILS:
                    return f"its health failed {fails} times in a row (last: {exc.last})"
                log.warning("    health probe failed (%d in a row): %s", fails, exc.last)
            if not fails and now >= end:
                return None
            next_probe = clock.now() + READY_RETRY_AFTER if fails else min(clock.now() + every, end)
        clock.sleep(max(0.0, min(ALIVE_CHECK_EVERY, next_probe - clock.now())))
