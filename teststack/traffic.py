"""Steady background traffic through nginx for fault tests: every answer is counted and kept.

A few threads send GET / with a new connection each time (the strict profile: nothing hides a
failure behind a retry), bounded by a deadline and a request cap, and stop by themselves.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Counter, Dict, List

import requests


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


class Traffic:
    def __init__(self, url: str, threads: int = 4, max_seconds: float = 120, max_requests: int = 200_000) -> None:
        assert url.startswith("http://127."), "load goes to loopback only"
        self.url = url
        self.threads = threads
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.report = TrafficReport()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: List[threading.Thread] = []

    def __enter__(self) -> "Traffic":
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, args=(deadline,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> TrafficReport:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)
        return self.report

    def _run(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.report.sent >= self.max_requests:
                    return
                self.report.sent += 1
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
            time.sleep(0.005)
