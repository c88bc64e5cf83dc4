"""Steady HTTP load through nginx with wrk, bounded by wrk's own -d, and every error counted.

    with Load(url, profile="close", seconds=60) as load:   # wrk starts here
        ... deploy ...
    result = load.result                                  # stopped (SIGINT) and parsed

`Sliced` runs the same load as back-to-back one-second wrk runs, so each error can be placed in
time (e.g. at an nginx reload, or not).

Two client profiles:
- "close": every request on a new connection (`-H "Connection: close"`), the strict one: nothing
  hides a failure behind a reused connection.
- "keepalive": wrk's default, connections kept open across requests as browsers and most HTTP
  clients do. An nginx reload closes idle ones, which a client that has just sent a request on
  one sees as a read error (see docs/benchmarks.md: the "reload floor").

A small Lua script counts every response by status and by the first line of its body (so a test
can see which versions answered), and reports wrk's own error counters. The load runs at most
`seconds` (wrk -d) and stops by itself; `stop()` ends it early with SIGINT, on which wrk prints its
summary as usual. Only loopback URLs are accepted.
"""
from __future__ import annotations

import collections
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Counter, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

PROFILES = ("close", "keepalive")

# response() sees every answer; done() gathers the per-thread tables and prints one line per
# counter, prefixed so they cannot be confused with wrk's own report.
_LUA = r"""
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   statuses = {}
   bodies = {}
   distinct = 0
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   local line = (body or ""):match("^[^\r\n]*") or ""
   line = line:sub(1, 60):gsub("[^%w%s=._:-]", "?")
   if bodies[line] == nil then
      if distinct >= 20 then line = "(other)" else distinct = distinct + 1 end
   end
   bodies[line] = (bodies[line] or 0) + 1
end

function done(summary, latency, requests)
   local statuses, bodies = {}, {}
   for _, thread in ipairs(threads) do
      for k, v in pairs(thread:get("statuses")) do statuses[k] = (statuses[k] or 0) + v end
      for k, v in pairs(thread:get("bodies")) do bodies[k] = (bodies[k] or 0) + v end
   end
   local e = summary.errors
   io.write(string.format("loadgen: summary %d %d %d %d %d %d %d %d\n", summary.requests,
      summary.duration, e.connect, e.read, e.write, e.status, e.timeout, latency.max))
   for k, v in pairs(statuses) do io.write(string.format("loadgen: status %d %d\n", k, v)) end
   for k, v in pairs(bodies) do io.write(string.format("loadgen: body %d %s\n", v, k)) end
end
"""


@dataclass(frozen=True)
class LoadResult:
    profile: str
    connections: int
    requests: int                  # responses received, whatever their status
    seconds: float
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    statuses: Dict[int, int]
    bodies: Dict[str, int]
    max_latency_ms: float
    output: str = field(repr=False, default="")

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def sent(self) -> int:
        """Requests written to a socket: answered, or lost to a read error, write error or timeout.

        A connect error happens before a request is written, so it is not a request sent (but it
        is a failure: see `failed`)."""
        return self.requests + self.read_errors + self.write_errors + self.timeouts

    @property
    def failed(self) -> int:
        """Everything that was not a 2xx answer: non-2xx and socket errors of every kind."""
        return self.non_2xx + self.socket_errors

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def versions(self) -> Dict[str, int]:
        """Bodies of 2xx answers that look like the demo's `version=... color=...`."""
        return {body: n for body, n in self.bodies.items() if body.startswith("version=")}

    def summary(self) -> Dict[str, object]:
        return {
            "profile": self.profile, "connections": self.connections, "seconds": round(self.seconds, 2),
            "requests": self.requests, "sent": self.sent, "rate": round(self.rate),
            "non_2xx": self.non_2xx, "connect": self.connect_errors, "read": self.read_errors,
            "write": self.write_errors, "timeout": self.timeouts, "failed": self.failed,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "versions": self.versions(), "max_latency_ms": round(self.max_latency_ms, 1),
        }

    def line(self) -> str:
        return (f"{self.profile} c={self.connections}: {self.requests} answers in {self.seconds:.1f}s "
                f"({self.rate:.0f}/s), non-2xx {self.non_2xx}, connect {self.connect_errors}, "
                f"read {self.read_errors}, write {self.write_errors}, timeout {self.timeouts}")


def parse(output: str, profile: str, connections: int) -> LoadResult:
    """wrk's output, with the loadgen lines the Lua script adds."""
    summary = re.search(r"^loadgen: summary (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", output, re.M)
    if summary is None:
        raise ValueError(f"no loadgen summary in wrk output:\n{output[-2000:]}")
    requests, micros, connect, read, write, status_errors, timeout, max_latency = map(int, summary.groups())
    statuses = {int(k): int(v) for k, v in re.findall(r"^loadgen: status (\d+) (\d+)$", output, re.M)}
    bodies: Counter = collections.Counter()
    for count, text in re.findall(r"^loadgen: body (\d+) ?(.*)$", output, re.M):
        bodies[text] += int(count)
    # Cross-check against wrk's own report: the script saw every answer wrk counted.
    if sum(statuses.values()) != requests:
        raise ValueError(f"wrk counted {requests} answers, the script {sum(statuses.values())}")
    if status_errors != sum(n for s, n in statuses.items() if s > 399):
        raise ValueError("wrk's count of statuses over 399 disagrees with the script's statuses")
    return LoadResult(profile, connections, requests, micros / 1e6, connect, read, write, timeout,
                      statuses, dict(bodies), max_latency / 1000, output)


def check(url: str, profile: str) -> None:
    if not (urlsplit(url).hostname or "").startswith("127."):
        raise ValueError(f"load goes to loopback only, not {url}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")


class Load:
    """wrk against one loopback URL, in the background, bounded by `seconds`."""

    def __init__(self, url: str, profile: str = "close", seconds: float = 30, connections: int = 16,
                 threads: int = 2, timeout: float = 5.0, pause_ms: int = 0,
                 prefix: Sequence[str] = ()) -> None:
        """`pause_ms`: each connection waits this long between requests, to pace the load (an
        idle keep-alive connection nginx closes then counts as a read error: pace only runs
        without reloads). `prefix`: run wrk under it, e.g. nsenter into another network
        namespace (whose 127.0.0.1 is then the target)."""
        check(url, profile)
        self.url = url
        self.profile = profile
        self.seconds = seconds
        self.connections = connections
        self.threads = min(threads, connections)
        self.timeout = timeout
        self.pause_ms = pause_ms
        self.prefix = list(prefix)
        self.result: Optional[LoadResult] = None
        self._process: Optional[subprocess.Popen] = None
        self._dir = tempfile.TemporaryDirectory(prefix="loadgen-")
        self.started = 0.0

    def argv(self) -> List[str]:
        script = Path(self._dir.name) / "count.lua"
        script.write_text(_LUA + (f"\nfunction delay()\n   return {int(self.pause_ms)}\nend\n" if self.pause_ms else ""))
        argv = [*self.prefix, "wrk", "-t", str(self.threads), "-c", str(self.connections), "-d", f"{int(self.seconds)}s",
                "--timeout", f"{self.timeout:g}s", "-s", str(script)]
        if self.profile == "close":
            argv += ["-H", "Connection: close"]
        return argv + [self.url]

    def start(self) -> "Load":
        self._process = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
        self.started = time.monotonic()
        return self

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        """End the run now (if wrk is still going) and parse its report."""
        if self.result is not None:
            return self.result
        assert self._process is not None, "not started"
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
        return self.wait()

    def wait(self) -> LoadResult:
        """Wait for wrk to finish by itself (at most its -d, plus the time to report)."""
        assert self._process is not None, "not started"
        try:
            output, _ = self._process.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            output, _ = self._process.communicate()
            raise RuntimeError(f"wrk did not stop by itself after {self.seconds}s:\n{output[-2000:]}")
        self._dir.cleanup()
        if self._process.returncode not in (0, -signal.SIGINT):
            raise RuntimeError(f"wrk exited with {self._process.returncode}:\n{output[-2000:]}")
        self.result = parse(output, self.profile, self.connections)
        return self.result


def run(url: str, seconds: float, **kwargs: object) -> LoadResult:
    """One bounded run to its end."""
    return Load(url, seconds=seconds, **kwargs).start().wait()  # type: ignore[arg-type]


def combine(results: Sequence[LoadResult], profile: str, connections: int) -> LoadResult:
    """The sum of several runs of the same profile (all zero if there are none)."""
    statuses: Counter = collections.Counter()
    bodies: Counter = collections.Counter()
    for result in results:
        statuses.update(result.statuses)
        bodies.update(result.bodies)
    return LoadResult(profile, connections, sum(r.requests for r in results),
                      sum(r.seconds for r in results), sum(r.connect_errors for r in results),
                      sum(r.read_errors for r in results), sum(r.write_errors for r in results),
                      sum(r.timeouts for r in results), dict(statuses), dict(bodies),
                      max((r.max_latency_ms for r in results), default=0.0))


@dataclass(frozen=True)
class Slice:
    started: float                 # wall clock (time.time()), to compare with other logs
    ended: float
    result: LoadResult

    def overlaps(self, windows: Iterable[Tuple[float, float]]) -> bool:
        return any(self.started < end and start < self.ended for start, end in windows)


class Sliced:
    """The same load as `Load`, run as consecutive one-second wrk runs until stopped or `seconds`.

    Each error can then be placed within a second. Between two slices wrk reconnects (a few ms
    without load); an event that falls in such a gap is not measured. Each slice is bounded by
    wrk's -d, the whole by `seconds`.
    """

    def __init__(self, url: str, seconds: float, profile: str = "close", connections: int = 16,
                 **kwargs: object) -> None:
        self.url = url
        self.seconds = seconds
        self.profile = profile
        self.connections = connections
        self.kwargs = kwargs
        check(url, profile)
        self.slices: List[Slice] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def __enter__(self) -> "Sliced":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.time()
                load = Load(self.url, self.profile, 1, self.connections, **self.kwargs)  # type: ignore[arg-type]
                result = load.start().wait()
                self.slices.append(Slice(started, time.time(), result))
        except BaseException as exc:   # raised again by stop()
            self._error = exc

    def stop(self) -> LoadResult:
        """Let the running slice finish (at most a second) and return the sum of all slices."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=35)
        if self._error is not None:
            raise self._error
        return self.result

    @property
    def result(self) -> LoadResult:
        return self.sum(self.slices)

    def sum(self, slices: Iterable[Slice]) -> LoadResult:
        return combine([s.result for s in slices], self.profile, self.connections)

    def split(self, windows: Sequence[Tuple[float, float]]) -> Tuple[LoadResult, LoadResult]:
        """(the slices that overlap any of these wall-clock windows, all the others), each summed."""
        return (self.sum(s for s in self.slices if s.overlaps(windows)),
                self.sum(s for s in self.slices if not s.overlaps(windows)))
