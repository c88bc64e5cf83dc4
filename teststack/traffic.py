"""Steady background traffic through nginx for fault tests: every answer is counted and kept.

A few threads send GET / with a new connection each time (the strict profile: nothing hides a
failure behind a retry), bounded by a deadline and a request cap, and stop by themselves.
`RequestThreads` is those bounded threads alone; teststack/statuses.py builds on it too.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Counter, Dict, List, TypeVar

import requests

Self = TypeVar("Self", bound="RequestThreads")


@dataclass
class TrafficReport:
    sent: int = 0
    ok: int = 0
    failures: List[str] = field(default_factory=list)
    versions: Counter = field(default_factory=collections.Counter)
    first_seen: Dict[str, float] = field(default_factory=dict)   # answer -> time.monotonic()

    @property
    def failed(self) -> int:
        return len(self.failures)


class RequestThreads:
    """`threads` workers that send one request after another to a loopback `url`, each on a new
    connection and without a retry, until `stop()`, `max_seconds` after start, or `max_requests`
    sent in all; then they end by themselves. A subclass says what one request is and what it
    keeps (`_send_one`), and what its `stop()` hands back (`_halt()` stops and joins)."""

    def __init__(self, url: str, threads: int, max_seconds: float, max_requests: int, pause: float) -> None:
        assert url.startswith("http://127."), "load goes to loopback only"
        self.url = url
        self.threads = threads
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._workers: List[threading.Thread] = []

    def __enter__(self: Self) -> Self:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt()

    def _start(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, args=(deadline,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def _halt(self) -> None:
        """Tell the workers to end and wait for each (a bounded wait: one request's timeout and more)."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)

    def _run(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._sent >= self.max_requests:
                    return
                self._sent += 1
                self._counted()
            self._send_one()
            time.sleep(self.pause)

    def _counted(self) -> None:
        """Called under the lock each time a worker takes one more request of the cap."""

    def _send_one(self) -> None:
        raise NotImplementedError


class Traffic(RequestThreads):
    def __init__(self, url: str, threads: int = 4, max_seconds: float = 120, max_requests: int = 200_000) -> None:
        super().__init__(url, threads, max_seconds, max_requests, pause=0.005)
        self.report = TrafficReport()

    def stop(self) -> TrafficReport:
        self._halt()
        return self.report

    def _counted(self) -> None:
        self.report.sent += 1

    def _send_one(self) -> None:
        try:
            response = requests.get(self.url, timeout=5, headers={"Connection": "close"})
            body = response.text.strip()
            outcome = None if response.status_code == 200 else f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            body, outcome = "", type(exc).__name__
        with self._lock:
            if outcome is None:
                self.report.ok += 1
                self.report.versions[body] += 1
                self.report.first_seen.setdefault(body, time.monotonic())
            else:
                self.report.failures.append(outcome)
