"""Verify the new release under live traffic after the switch; switch back by itself if it fails.

For VERIFY_SECONDS after the switch the old release keeps running, and the tool watches:

- the new release's container (exited, restarted, lost its address: fail at once); on a swarm
  (TARGET=swarm) the tasks nginx was switched to: one that fails, restarts or is rescheduled, or
  fewer than REPLICAS running, fails at once (swarm.serving_problem);
- its health, probed every HEALTH_INTERVAL but at most 2 s apart (two failures in a row: fail);
  on a swarm every task is probed at its node's address, and two failures in a row on any one
  task fail the release, naming the task, its node and address;
- what nginx answered for requests that went to the new release's addresses (one, or every task
  of a swarm color: summed): the share of 5xx (nginx's own 502/504 included) above
  VERIFY_MAX_ERROR_RATE, once at least VERIFY_MIN_REQUESTS were counted, fails.

Where the answers come from depends on the switch (one reader per mode, both here):

- reload mode: nginx's access log (NGINX_ACCESS_LOG, in the shipped `pipeline` format with
  `upstream=` and the status), read through the NginxHost from its size just before the switch;
  each poll reads only the bytes added since.
- live mode: counters nginx keeps per upstream address and status in its Lua log phase
  (nginx/live/app-live.conf), read through the admin's `GET /pipeline/stats`; the counts just
  before the switch are the baseline.

On failure the old release is put back through the same switch (same checks; on a swarm to every
running task of the old color, which stays scaled up until verification passes), the new container
is stopped and removed (a swarm's new service is scaled to 0, its spec kept, as after a failed
start), and SwitchedBack is raised (exit 1). SIGINT/SIGTERM during the window
does the same, as the safest choice: the old release is running and was serving until seconds
ago, while the new one is unproven; then the signal's exit code (130/143). So does anything else
that ends the window early: an error (the engine or the swarm manager not answering, a route
check refused: exit 1) or a bug (SwitchedBackAfterBug: exit 70). If switching back fails, the new
release keeps the traffic unverified: LiveUnverified (exit 6) says what serves and what to run.

`baseline()` runs just before the switch, `verify()` right after it.
"""
from __future__ import annotations

import collections
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Counter, Dict, FrozenSet, List, Optional, Protocol, Tuple

from . import health
from .decide import Address, Route, shown
from .errors import (AdminUnavailable, DeployFailed, Interrupted, LiveUnverified, NginxHostFailed, OutsideFailure,
                     PipelineError, PreflightError, SwitchedBack, SwitchedBackAfterBug, SwitchedBackOnSignal,
                     SwitchIncomplete)
from .nginx_host import NginxHost
from .settings import Settings
from .signals import SignalGuard
from .switch import LIVE



class Context(Protocol):
    """What the window uses of the flow's context (deploy.Context has all of it; importing that
    here would close an import circle)."""

    settings: Settings
    engine: Any
    host: NginxHost
    switch: Any
    guard: SignalGuard
    prober: Any
    sleep: Callable[[float], None]

log = logging.getLogger("pipeline")

TRAFFIC_POLL = 0.5        # how often nginx's answers are read during the window
HEALTH_EVERY_MAX = 2.0    # health is probed at least this often during the window
HEALTH_FAILS = 2          # this many failed probes in a row fail the release
READ_LIMIT = 8 * 1024 * 1024   # access-log bytes read per poll at most (the rest at the next one)
READ_FAILS = 3            # reads of nginx's answers failed this many polls in a row (~1 s): switch back


# -- pure: parsing and judging ----------------------------------------------------------------------

# The shipped `pipeline` log format (nginx/conf.d/00-log-format.conf):
#   ... [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
#   upstream=$upstream_addr upstream_status=$upstream_status ...
# nginx writes a `"` inside a variable as \x22, so the quoted fields hold no bare quote.
_LOG_RE = re.compile(r'\] "[^"]*" (\d{3}) \S+ "[^"]*" "[^"]*" upstream=(.*?) upstream_status=')
_ADDRESS_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}:\d{1,5})\s*$")


def parse_log_line(line: str) -> Optional[Tuple[Optional[str], int]]:
    """(upstream address that answered, status) of one access-log line; None if not the format.

    The address is None when nginx answered by itself (upstream=-). After a retry
    $upstream_addr lists several ("a, b", or "a : b" after an internal redirect): the last one
    answered.
    """
    match = _LOG_RE.search(line)
    if match is None:
        return None
    address = _ADDRESS_RE.search(match.group(2))
    return (address.group(1) if address else None), int(match.group(1))


def parse_stats(text: str) -> Dict[str, Counter]:
    """`GET /pipeline/stats` lines "IP:PORT STATUS COUNT" -> address -> status -> count."""
    counts: Dict[str, Counter] = collections.defaultdict(collections.Counter)
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[1].isdigit() and words[2].isdigit():
            counts[words[0]][int(words[1])] += int(words[2])
    return dict(counts)


@dataclass(frozen=True)
class Tally:
    """What nginx answered for requests to the new release during the window."""

    statuses: Dict[int, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def commonest(self, n: int = 3) -> str:
        ranked = sorted(self.statuses.items(), key=lambda item: (-item[1], item[0]))[:n]
        return ", ".join(f"{status} x{count}" for status, count in ranked) or "none"

    def describe(self) -> str:
        return (f"{self.rate:.1%} 5xx of {self.requests} requests (commonest: {self.commonest()})")


def too_many_errors(tally: Tally, max_rate: float, min_requests: int) -> bool:
    """The release fails on its answers: enough of them counted, and too many 5xx."""
    return tally.requests >= min_requests and tally.rate > max_rate


# -- readers: what nginx answered for the new release's addresses -----------------------------------

def address_set(route: Route) -> FrozenSet[str]:
    """One address or several (a swarm color's tasks) as the `IP:PORT` strings nginx reports."""
    return frozenset(str(a) for a in route)


def summed(counts: Dict[str, Counter], addresses: FrozenSet[str]) -> Counter:
    """Status -> count over every one of `addresses` (a color of several tasks answers at each)."""
    total: Counter = collections.Counter()
    for address in addresses:
        total.update(counts.get(address, {}))
    return total


class AnswerReader(Protocol):
    def read(self) -> Tally:
        """Everything counted for the addresses since the baseline, summed."""


class AccessLogReader:
    """Follows NGINX_ACCESS_LOG from its size at the baseline, reading only what was added."""

    def __init__(self, host: NginxHost, path: str, addresses: Route) -> None:
        self.host, self.path, self.addresses = host, path, address_set(addresses)
        size = host.size(path)
        if size is None:
            raise PreflightError(f"NGINX_ACCESS_LOG={path}: no such file on the nginx host ({host.description})")
        self.offset = size
        self.partial = b""
        self.counts: Counter = collections.Counter()
        self.unparsed = 0

    def read(self) -> Tally:
        size = self.host.size(self.path)
        if size is not None and size < self.offset:
            log.warning("    %s shrank (rotated?); reading it from the start", self.path)
            self.offset, self.partial = 0, b""
        data = self.host.read_bytes(self.path, self.offset, READ_LIMIT)
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()          # an unfinished last line waits for the next read
        for raw in lines:
            parsed = parse_log_line(raw.decode("utf-8", "replace"))
            if parsed is None:
                self.unparsed += 1
            elif parsed[0] in self.addresses:
                self.counts[parsed[1]] += 1
        return Tally(dict(self.counts))


class StatsReader:
    """Live mode: nginx's counters for the addresses (one stats line per upstream address and
    status), summed, minus what they were at the baseline."""

    def __init__(self, admin, addresses: Route) -> None:
        self.admin, self.addresses = admin, address_set(addresses)
        self.before = summed(parse_stats(admin.stats()), self.addresses)
        self.unparsed = 0

    def read(self) -> Tally:
        now = summed(parse_stats(self.admin.stats()), self.addresses)
        return Tally({status: n - self.before.get(status, 0) for status, n in now.items()
                      if n - self.before.get(status, 0) > 0})


def make_reader(ctx: Context, addresses: Route) -> AnswerReader:
    s = ctx.settings
    if ctx.switch.mode == "live":
        return StatsReader(ctx.switch.admin, addresses)   # type: ignore[attr-defined]
    return AccessLogReader(ctx.host, str(s.nginx_access_log), addresses)


# -- the step ---------------------------------------------------------------------------------------



@dataclass(frozen=True)
class Verdict:
    seconds: float
    tally: Tally
    probes: int

    def summary(self) -> str:
        return (f"verified for {self.seconds:g}s: {self.tally.errors} 5xx of {self.tally.requests} "
                f"requests ({self.tally.rate:.1%}), {self.probes} health probes ok")


@dataclass
class Baseline:
    """Taken just before the switch: where counting starts, and (on a swarm) the tasks nginx is
    switched to, which are the ones watched and probed."""

    color: str
    old: str
    reader: AnswerReader
    tasks: FrozenSet[str] = frozenset()
    old_addresses: Tuple[Address, ...] = ()   # where the old release answered: the switch back's fallback


def check(ctx: Context) -> None:
    """Preflight: can the answers be read at all? (Nothing is changed yet.) In reload mode the
    access log must be a file the nginx host lets us open: Debian's is 0640 www-data:adm, which
    a non-root SSH user outside `adm` cannot read; found only during the window, that would cost
    a switch back."""
    s = ctx.settings
    if s.verify_seconds == 0:
        return
    if ctx.switch.mode == "live":
        ctx.switch.admin.stats()   # type: ignore[attr-defined]  # AdminUnavailable: exit 3
        return
    path = str(s.nginx_access_log)
    where = f"on the nginx host ({ctx.host.description})"
    then = "verification reads nginx's answers there (the `pipeline` log format), or set VERIFY_SECONDS=0"
    try:
        size = ctx.host.size(path)
        if size is not None:
            ctx.host.read_bytes(path, max(size - 1, 0), 1)   # opened, as the window will
    except NginxHostFailed as exc:
        who = f"NGINX_SSH_USER={s.nginx_ssh_user}" if s.remote else "the user running pipeline"
        hint = (f" (it is read as {who}: on Debian, make that user a member of `adm`)"
                if isinstance(exc.__cause__, PermissionError) else "")
        raise PreflightError(f"NGINX_ACCESS_LOG={path}: cannot read it {where}: {exc.cause}{hint}; "
                             f"{then}") from exc
    if size is None:
        raise PreflightError(f"NGINX_ACCESS_LOG={path}: no such file {where}; {then}")


def baseline(ctx: Context, color: str, old: Optional[str]) -> Optional[Baseline]:
    """Mark where counting starts, just before the switch; None when nothing will be verified."""
    s = ctx.settings
    if s.verify_seconds == 0:
        return None
    fact = ctx.engine.container(old) if old else None
    if fact is None or not fact.running:
        log.info("    no running previous release to switch back to: not verifying")
        return None
    tasks: FrozenSet[str] = frozenset()
    if s.target == "swarm":
        tasks = frozenset(t.task_id for t in ctx.engine.task_addresses(color))
    return Baseline(color, old, make_reader(ctx, ctx.engine.addresses(color)), tasks,  # type: ignore[arg-type]
                    tuple(ctx.engine.addresses(old)))


def verify(ctx: Context, mark: Optional[Baseline]) -> Optional[Verdict]:
    """Watch the new release for VERIFY_SECONDS; on failure (or a signal) switch back."""
    if mark is None:
        return None
    s = ctx.settings
    log.info("==> verifying %s for %gs under live traffic (5xx at most %g%% once %d requests are "
             "counted; health every %gs); %s keeps running meanwhile", s.container_name(mark.color),
             s.verify_seconds, s.verify_max_error_rate * 100, s.verify_min_requests,
             min(s.health_interval, HEALTH_EVERY_MAX), s.container_name(mark.old))
    watch = _Watch(ctx, mark)
    cause: Optional[PipelineError] = None
    try:
        problem = watch.run()
    except Interrupted as exc:
        log.warning("==> %s during verification: putting traffic back on %s, which is still running",
                    exc, s.container_name(mark.old))
        switch_back(ctx, mark.color, mark.old, f"{exc} during verification", mark.old_addresses)
        raise SwitchedBackOnSignal(exc.signum, f"switched back to {mark.old} "
                                               f"({watch.tally.describe()})") from exc
    except PipelineError as exc:
        # The window could not go on (the engine or the swarm manager not answering, a route
        # check refused): the new release is unproven and the old one runs, so this is a failure
        # like any other, not a reason to leave the unproven release with the traffic.
        problem, cause = f"verification could not go on: {exc}; traffic: {watch.tally.describe()}", exc
    except Exception as exc:
        # A bug in pipeline. It is still reported as one (exit 70, the traceback with --verbose),
        # but only once the release nobody verified is out of traffic.
        log.error("==> internal error during verification (%s: %s): putting traffic back on %s",
                  type(exc).__name__, exc, s.container_name(mark.old))
        _switched_back(ctx, mark, f"internal error during verification ({type(exc).__name__}: {exc})")
        raise SwitchedBackAfterBug(f"{type(exc).__name__}: {exc} during verification; switched back to "
                                   f"{mark.old}") from exc
    if problem is not None:
        if cause is not None:
            log.error("==> %s: putting traffic back on %s", problem, s.container_name(mark.old))
        _switched_back(ctx, mark, problem)
        raise SwitchedBack(f"switched back to {mark.old}: {problem}") from cause
    if getattr(mark.reader, "unparsed", 0) and watch.tally.requests == 0:
        log.warning("    %d new lines of %s are not in the `pipeline` log format: no answer was judged",
                    getattr(mark.reader, "unparsed"), s.nginx_access_log)
    verdict = Verdict(s.verify_seconds, watch.tally, watch.probes)
    log.info("    %s", verdict.summary())
    return verdict


class _Watch:
    """The window itself: returns why the release failed, or None when it held to the end."""

    def __init__(self, ctx: Context, mark: Baseline) -> None:
        self.ctx, self.mark = ctx, mark
        self.tally = Tally()
        self.probes = 0
        self.read_failures = 0   # reads of nginx's answers that failed, in a row

    def run(self) -> Optional[str]:
        ctx, s, color = self.ctx, self.ctx.settings, self.mark.color
        every = min(s.health_interval, HEALTH_EVERY_MAX)
        started = time.monotonic()
        deadline = started + s.verify_seconds
        next_probe = started + every
        next_report = started + 5.0
        failed_in_row: Dict[str, int] = {}   # per probed address (a swarm color has one per task)
        while True:
            problem, targets = _serving(ctx, self.mark)
            if problem is not None:
                return f"{problem}; traffic: {self.tally.describe()}"
            problem = self._read()
            if problem is not None:
                return problem
            if too_many_errors(self.tally, s.verify_max_error_rate, s.verify_min_requests):
                return (f"{color} answered 5xx to {self.tally.rate:.1%} of {self.tally.requests} requests "
                        f"(limit {s.verify_max_error_rate:.1%}; commonest: {self.tally.commonest()})")
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + every
                for where, url in targets:
                    self.probes += 1
                    try:
                        # Only where _serving just found ours holding the address, and from where
                        # nginx is (ctx.prober checks the route there first). A generous timeout:
                        # a busy host must not turn a slow answer into a switch-back.
                        health.probe(ctx.prober, url, HEALTH_EVERY_MAX)
                        failed_in_row[where] = 0
                    except health.NotHealthyYet as exc:
                        fails = failed_in_row[where] = failed_in_row.get(where, 0) + 1
                        on = f" on {where}" if where else ""
                        log.warning("    health probe %d%s failed (%d in a row): %s", self.probes, on, fails, exc.last)
                        if fails >= HEALTH_FAILS:
                            return (f"{color}'s health failed {fails} times in a row{on} (last: {exc.last}); "
                                    f"traffic: {self.tally.describe()}")
            if now >= deadline and not self.read_failures:
                return None   # judged on answers read at the end, never on older ones
            if now >= next_report:
                next_report = now + 5.0
                log.info("    %.0fs: %s", now - started, self.tally.describe())
            if now >= deadline:   # past it only while the answers cannot be read: poll again
                ctx.sleep(TRAFFIC_POLL)
            else:
                ctx.sleep(max(0.0, min(TRAFFIC_POLL, deadline - now, next_probe - now)))

    def _read(self) -> Optional[str]:
        """Read what nginx answered; why the window fails if it could not for READ_FAILS polls
        in a row. Health alone does not verify a release (it may answer its probe while failing
        every request), so the window goes on without the answers for a moment only, and does
        not end on a failed read."""
        try:
            self.tally = self.mark.reader.read()
        except (OutsideFailure, AdminUnavailable) as exc:
            self.read_failures += 1
            if self.read_failures >= READ_FAILS:
                return (f"cannot read nginx's answers ({exc}; {self.read_failures} reads in a row); "
                        f"traffic until then: {self.tally.describe()}")
            if self.read_failures == 1:
                log.warning("    cannot read nginx's answers (%s); switching back unless it reads again "
                            "within %d polls", exc, READ_FAILS - 1)
            return None
        if self.read_failures:
            log.info("    reading nginx's answers again")
        self.read_failures = 0
        return None


def _serving(ctx: Context, mark: Baseline) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """Why the new release cannot be serving (nothing is probed then), else the health URLs to
    probe now, each with how a failure names it ("" for the one container)."""
    s = ctx.settings
    if s.target != "swarm":
        return (container_problem(ctx, mark.color),
                [("", f"http://{s.ip_of(mark.color)}:{s.app_port}{s.health_path}")])
    from .swarm import serving_problem, task_where   # only a swarm has tasks (and needs this module)
    tasks = ctx.engine.tasks(mark.color)
    problem = serving_problem(tasks, mark.tasks, s.replicas)
    if problem is not None:
        return f"{s.container_name(mark.color)}: {problem}", []
    # Network safety: only the watched tasks, running on a node that is up, at their node's address.
    return None, [(task_where(t), f"http://{t.node_addr}:{t.port}{s.health_path}") for t in tasks
                  if t.task_id in mark.tasks and t.running and t.node_up and t.node_addr]


def container_problem(ctx: Context, color: str) -> Optional[str]:
    """Why the new container cannot be serving (and must not be probed), or None."""
    s = ctx.settings
    fact = ctx.engine.container(color)
    if fact is None:
        return f"container {s.container_name(color)} was removed"
    if not fact.running or fact.restart_count > 0:
        return f"container {s.container_name(color)} stopped ({fact.status}, restarted {fact.restart_count}x)"
    if not ctx.engine.at_fixed_ip(fact):
        return f"container {s.container_name(color)} no longer holds {s.ip_of(color)} on {s.deploy_network}"
    return None


def _switched_back(ctx: Context, mark: Baseline, why: str) -> None:
    """switch_back, for a failure: a signal held through it is raised once it is done, and by
    then traffic is on the old release again, so it is reported as a switch back on a signal."""
    try:
        switch_back(ctx, mark.color, mark.old, why, mark.old_addresses)
    except Interrupted as exc:
        raise SwitchedBackOnSignal(exc.signum, f"switched back to {mark.old}: {why}") from exc


def switch_back(ctx: Context, color: str, old: str, why: str, old_addresses: Tuple[Address, ...] = ()) -> None:
    """Old release back in traffic through the same switch, then the new container removed (a
    swarm's new service scaled to 0, as after a failed start). All of it one critical step.

    If the switch back itself fails, the new release stays live and running (removing it would
    leave nginx pointing at nothing): LiveUnverified says what serves and what to run. If only
    removing the new container fails (the engine is what failed), traffic is back all the same:
    said, and left to the next deploy.
    """
    s = ctx.settings
    new_name, old_name = s.container_name(color), s.container_name(old)
    addresses: Optional[List[Address]] = None
    with ctx.guard.critical():
        try:
            addresses = _old_addresses(ctx, old, old_addresses)
            log.error("==> switching back to %s (%s) [%s]", old, shown(tuple(addresses)) if addresses else "",
                      ctx.switch.mode)
            if not addresses:
                raise DeployFailed(f"{old_name} has no running task")
            ctx.switch.route_to(LIVE, tuple(addresses))
        except PipelineError as exc:
            if isinstance(exc, SwitchIncomplete):
                serving = f"nginx serves {new_name} or {old_name}: both are left running"
            else:
                old_state = ("was running at the switch" if addresses is None else
                             "is still running" if addresses else "has no running task")
                serving = f"{new_name} still has the traffic, unverified; {old_name} {old_state}"
            raise LiveUnverified(f"{why}; switching back to {old} failed: {exc}. {serving}. To go back to "
                                 f"{old}, run `python -m pipeline rollback` once that is fixed", color) from exc
        # Requests nginx's old workers (reload mode) still send to the new release finish first.
        ctx.sleep(ctx.switch.settle_seconds)
        try:
            if s.target == "swarm":
                log.error("==> scaling %s to 0 (its spec kept); traffic is on %s again", new_name, old_name)
                ctx.engine.discard(color)
            else:
                log.error("==> removing %s; traffic is on %s again", new_name, old_name)
                ctx.engine.stop(color)
                ctx.engine.remove(color)
        except OutsideFailure as exc:
            log.error("    could not remove %s (%s); traffic is on %s again, and the next deploy replaces it",
                      new_name, exc, old_name)


def _old_addresses(ctx: Context, old: str, at_switch: Tuple[Address, ...]) -> List[Address]:
    """Where the old release answers now (a swarm: every running task); if the engine (the swarm
    manager) does not answer, where it answered at the switch."""
    try:
        return list(ctx.engine.addresses(old))
    except OutsideFailure as exc:
        if not at_switch:
            raise
        log.warning("    %s; switching back to where %s answered at the switch", exc, old)
        return list(at_switch)
