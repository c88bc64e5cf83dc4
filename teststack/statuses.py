"""Background requests that keep every answer's status and when its request was sent, for tests
that assert what nginx answered before and after a moment (maintenance mode on and off).

A few threads send GET with a new connection each time (nothing hides a reset behind a reused
connection or a retry), bounded by a deadline and a request cap, and stop by themselves.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, TypeVar

T = TypeVar("T")

import requests


@dataclass(frozen=True)
class Answer:
    sent: float        # time.monotonic() before the request was sent
    status: str        # "200", "503", ... or the exception's name ("ConnectionError")
    body: str
    retry_after: Optional[str]


class StatusRecorder:
    def __init__(self, url: str, threads: int = 3, max_seconds: float = 180, max_requests: int = 100_000,
                 pause: float = 0.01) -> None:
        assert url.startswith("http://127."), "load goes to loopback only"
        self.url = url
        self.threads = threads
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.pause = pause
        self.answers: List[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._workers: List[threading.Thread] = []

    def __enter__(self) -> "StatusRecorder":
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, args=(deadline,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> List[Answer]:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)
        return self.snapshot()

    def snapshot(self) -> List[Answer]:
        with self._lock:
            return sorted(self.answers, key=lambda a: a.sent)

    def between(self, start: float, end: float = float("inf")) -> List[Answer]:
        """The answers to requests sent in [start, end)."""
        return [a for a in self.snapshot() if start <= a.sent < end]

    def _run(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._sent >= self.max_requests:
                    return
                self._sent += 1
            sent = time.monotonic()
            try:
                response = requests.get(self.url, timeout=5, headers={"Connection": "close"})
                answer = Answer(sent, str(response.status_code), response.text, response.headers.get("Retry-After"))
            except requests.RequestException as exc:
                answer = Answer(sent, type(exc).__name__, "", None)
            with self._lock:
                self.answers.append(answer)
            time.sleep(self.pause)


def statuses(answers: List[Answer]) -> List[str]:
    return sorted({a.status for a in answers})


def timed(command: Callable[[], T]) -> Tuple[float, float, T]:
    """Run `command()`; (monotonic before, monotonic after, its result)."""
    start = time.monotonic()
    result = command()
    return start, time.monotonic(), result
