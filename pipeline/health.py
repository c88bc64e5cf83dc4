"""The health gate: GET the new container's health URL until it answers 200.

Probes go only to an address a container of ours holds (checked before every probe), because a
private address nobody holds here may be routed off this machine.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import requests
from tenacity import (RetryCallState, RetryError, Retrying, retry_if_exception_type,
                      stop_after_delay, wait_exponential)

from .errors import HealthCheckFailed

log = logging.getLogger("pipeline")

# While waiting between probes the container's state is checked this often, so a crash is seen
# at once rather than after HEALTH_INTERVAL or HEALTH_TIMEOUT.
ALIVE_CHECK_EVERY = 0.25
# The first wait between probes; each next one doubles, up to HEALTH_INTERVAL.
FIRST_WAIT = 0.25


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


def wait_healthy(url: str, interval: float, timeout: float, check_alive: Callable[[], None],
                 session: Optional[requests.Session] = None,
                 logs: Callable[[], list] = lambda: []) -> int:
    """Probe until 200 or `timeout` s pass, at most `interval` s apart; returns the attempts made.

    `check_alive` raises (e.g. ContainerExited) if the container is gone or does not hold the
    address any more; it runs before each probe and during every wait.
    """
    session = session or requests.Session()
    probe_timeout = max(0.5, min(interval, 5.0))

    def attempt() -> str:
        check_alive()
        return probe(session, url, probe_timeout)

    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(ALIVE_CHECK_EVERY, left))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else interval
        log.info("    health attempt %d: %s; next in %.2gs", state.attempt_number,
                 getattr(exc, "last", exc), wait)

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        # Start quick and settle at `interval`: a fast service (or a kept container on rollback)
        # is seen within a fraction of a second, and no probe is ever more than `interval` apart.
        wait=wait_exponential(multiplier=FIRST_WAIT, max=interval),
        retry=retry_if_exception_type(NotHealthyYet),
        sleep=sleep,
        before_sleep=before_sleep,
    )
    try:
        answer = retrying(attempt)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise HealthCheckFailed(url, exc.last_attempt.attempt_number, getattr(last, "last", str(last)),
                                logs()) from last
    attempts = retrying.statistics.get("attempt_number", 1)
    log.info("    healthy after %d attempt(s): %s", attempts, answer)
    return attempts


def _short(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or unreachable"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__
