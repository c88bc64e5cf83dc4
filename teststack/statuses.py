"""Background requests that keep every answer's status and when its request was sent, for tests
that assert what nginx answered before and after a moment (maintenance mode on and off).

A few threads send GET with a new connection each time (nothing hides a reset behind a reused
connection or a retry), bounded by a deadline and a request cap, and stop by themselves
(teststack/traffic.py's `RequestThreads`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, TypeVar

import requests

from teststack.traffic import RequestThreads

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    sent: float        # time.monotonic() before the request was sent
    status: str        # "200", "503", ... or the exception's name ("ConnectionError")
    body: str
    retry_after: Optional[str]


class StatusRecorder(RequestThreads):
    def __init__(self, url: str, threads: int = 3, max_seconds: float = 180, max_requests: int = 100_000,
                 pause: float = 0.01) -> None:
        super().__init__(url, threads, max_seconds, max_requests, pause)
        self.answers: List[Answer] = []

    def stop(self) -> List[Answer]:
        self._halt()
        return self.snapshot()

    def snapshot(self) -> List[Answer]:
        with self._lock:
            return sorted(self.answers, key=lambda a: a.sent)

    def between(self, start: float, end: float = float("inf")) -> List[Answer]:
        """The answers to requests sent in [start, end)."""
        return [a for a in self.snapshot() if start <= a.sent < end]

    def _send_one(self) -> None:
        sent = time.monotonic()
        try:
            response = requests.get(self.url, timeout=5, headers={"Connection": "close"})
            answer = Answer(sent, str(response.status_code), response.text, response.headers.get("Retry-After"))
        except requests.RequestException as exc:
            answer = Answer(sent, type(exc).__name__, "", None)
        with self._lock:
            self.answers.append(answer)


def statuses(answers: List[Answer]) -> List[str]:
    return sorted({a.status for a in answers})


def timed(command: Callable[[], T]) -> Tuple[float, float, T]:
    """Run `command()`; (monotonic before, monotonic after, its result)."""
    start = time.monotonic()
    result = command()
    return start, time.monotonic(), result
