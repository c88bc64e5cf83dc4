"""When the first bad answer came and when traffic was back on the old release. Used by
test_verify.py and the benches (verify_switchback.py, rollback_running.py).

- Timeline: one thread sending GET / with a new connection every `every` seconds (loopback only,
  bounded by `max_seconds`), every answer time-stamped: what a client saw.
- log_msec + bad_window: nginx's access log with $msec added (to a test's own nginx only): every
  request nginx sent to an address, to the millisecond.
"""
from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Union

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


# -- nginx's own view: every request, time-stamped to the millisecond ---------------------------------

def log_msec(nginx) -> None:
    """Tests and benches only: add `msec=$msec` to this nginx's copy of the `pipeline` log format
    (after the fields the tool reads, so they parse as before), then reload and wait for it."""
    path = nginx.directory / "00-log-format.conf"
    text = path.read_text()
    marker = "upstream_response_time=$upstream_response_time'"
    assert marker in text, "the shipped log format changed; update log_msec"
    path.write_text(text.replace(marker, "upstream_response_time=$upstream_response_time msec=$msec'"))
    before = nginx.worker_pids()
    subprocess.run(nginx.argv("-s", "reload"), check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while nginx.worker_pids() in ([], before) and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass(frozen=True)
class BadWindow:
    first_bad: Optional[float]     # wall clock ($msec) of the first 5xx from the address
    last_served: Optional[float]   # of the last request the address served
    requests: int                  # requests the address served
    errors: int                    # of them 5xx

    @property
    def back_after(self) -> Optional[float]:
        """From the first bad answer to the last request the bad release served."""
        if self.first_bad is None or self.last_served is None:
            return None
        return self.last_served - self.first_bad


_MSEC_RE = re.compile(r" msec=(\d+\.\d+)")


def bad_window(access_log: Path, address: Union[str, Iterable[str]]) -> BadWindow:
    """What nginx's log (with log_msec) says about the requests that went to `address` (or to
    any of several: a swarm color's tasks)."""
    from pipeline.flows.verify import parse_log_line

    addresses = {address} if isinstance(address, str) else set(address)
    first_bad = last = None
    requests_, errors = 0, 0
    for line in access_log.read_text().splitlines():
        parsed, stamp = parse_log_line(line), _MSEC_RE.search(line)
        if parsed is None or stamp is None or parsed[0] not in addresses:
            continue
        at = float(stamp.group(1))
        requests_ += 1
        last = at
        if parsed[1] >= 500:
            errors += 1
            first_bad = at if first_bad is None else first_bad
    return BadWindow(first_bad, last, requests_, errors)
