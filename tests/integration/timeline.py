"""Every answer nginx gives one steady poller, time-stamped: when the first bad answer came, and
when traffic was back on the old release. Used by test_verify.py and bench/verify_switchback.py.

One thread, GET / with a new connection each time every `every` seconds, to loopback only,
bounded by `max_seconds`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import List, Optional

import requests


@dataclass(frozen=True)
class Answer:
    at: float        # time.monotonic() when the answer came
    status: int      # 0: no answer (connection error, timeout)
    body: str        # the first line


class Timeline:
    def __init__(self, url: str, every: float = 0.01, max_seconds: float = 120) -> None:
        assert url.startswith("http://127."), "load goes to loopback only"
        self.url, self.every, self.max_seconds = url, every, max_seconds
        self.answers: List[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Timeline":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> "Timeline":
        self._stop.set()
        self._thread.join(timeout=10)
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response = requests.get(self.url, timeout=2, headers={"Connection": "close"})
                answer = Answer(time.monotonic(), response.status_code, response.text.split("\n", 1)[0])
            except requests.RequestException as exc:
                answer = Answer(time.monotonic(), 0, type(exc).__name__)
            self.answers.append(answer)
            time.sleep(self.every)

    def first(self, predicate) -> Optional[Answer]:
        return next((a for a in self.answers if predicate(a)), None)

    def last(self, predicate) -> Optional[Answer]:
        return next((a for a in reversed(self.answers) if predicate(a)), None)

    def back_on(self, old: str, bad) -> Optional[float]:
        """Seconds from the first answer `bad` finds bad to the first answer from `old` after which
        only `old` answered; None if there was no bad answer or traffic never came back."""
        first_bad = self.first(bad)
        if first_bad is None:
            return None
        last_other = self.last(lambda a: not a.body.startswith(old))
        if last_other is None or last_other is self.answers[-1]:
            return None
        after = self.answers[self.answers.index(last_other) + 1]
        return after.at - first_bad.at
