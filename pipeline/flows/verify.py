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

Where the answers come from depends on the switch, which hands out the reader (answers.py):
nginx's access log in reload mode, the counters nginx's Lua balancer keeps in live mode. What is
watched and probed depends on the target, which hands out the watch (target.Watch).

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

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Tuple

from pipeline.core import gate
from pipeline.core.answers import AccessLogReader as AccessLogReader
from pipeline.core.answers import AnswerReader
from pipeline.core.answers import StatsReader as StatsReader
from pipeline.core.answers import Tally
from pipeline.core.answers import parse_log_line as parse_log_line
from pipeline.core.answers import parse_stats as parse_stats
from pipeline.core.clock import Clock
from pipeline.core.route import Route, health_url, shown
from pipeline.core.errors import (AdminUnavailable, DeployFailed, Interrupted, LiveUnverified, OutsideFailure, PipelineError,
                     SwitchedBack, SwitchedBackAfterBug, SwitchedBackOnSignal, SwitchIncomplete)
from pipeline.core.gate import Transport
from pipeline.core.settings import Settings
from pipeline.signals import SignalGuard
from pipeline.core.switch import LIVE, TrafficSwitch
from pipeline.core.target import Target, Watch

# The readers and parsers moved to answers.py (the switches hand out the readers); named here too,
# for what reads them through this module.
__all__ = ["AccessLogReader", "StatsReader", "Tally", "parse_log_line", "parse_stats", "Baseline", "Verdict",
           "check", "baseline", "verify", "switch_back", "too_many_errors", "SwitchedBack", "SwitchedBackOnSignal",
           "SwitchedBackAfterBug", "DeployFailed"]



class Context(Protocol):
    """What the window uses of the flow's context (deploy.Context has all of it; importing that
    here would close an import circle). Read-only: the context is frozen."""

    @property
    def settings(self) -> Settings: ...

    @property
    def engine(self) -> Target: ...

    @property
    def switch(self) -> TrafficSwitch: ...

    @property
    def guard(self) -> SignalGuard: ...

    @property
    def prober(self) -> Transport: ...

    @property
    def clock(self) -> Clock: ...


log = logging.getLogger("pipeline")

TRAFFIC_POLL = 0.5        # how often nginx's answers are read during the window
HEALTH_EVERY_MAX = 2.0    # health is probed at least this often during the window
HEALTH_FAILS = 2          # this many failed probes in a row fail the release
READ_LIMIT = 8 * 1024 * 1024   # access-log bytes read per poll at most (the rest at the next one)
READ_FAILS = 3            # reads of nginx's answers failed this many polls in a row (~1 s): switch back


def too_many_errors(tally: Tally, max_rate: float, min_requests: int) -> bool:
    """The release fails on its answers: enough of them counted, and too many 5xx."""
    return tally.requests >= min_requests and tally.rate > max_rate



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
    """Taken just before the switch: where counting starts, and the new color as it is when
    nginx is switched to it (on a swarm: the tasks), which is what is watched and probed."""

    color: str
    old: str
    reader: AnswerReader
    watch: Watch
    old_addresses: Route = ()   # where the old release answered: the switch back's fallback
    # What the window counted so far (for --report, also when it switched back): kept up by _Watch.
    tally: Tally = field(default_factory=Tally)
    probes: int = 0


def check(ctx: Context) -> None:
    """Preflight: can the answers be read at all? (Nothing is changed yet; the switch says how:
    the access log opened in reload mode, the admin's stats in live mode.)"""
    if ctx.settings.verify_seconds == 0:
        return
    ctx.switch.check_answers()


def baseline(ctx: Context, color: str, old: Optional[str]) -> Optional[Baseline]:
    """Mark where counting starts, just before the switch; None when nothing will be verified."""
    s = ctx.settings
    if s.verify_seconds == 0:
        return None
    fact = ctx.engine.container(old) if old else None
    if old is None or fact is None or not fact.running:
        log.info("    no running previous release to switch back to: not verifying")
        return None
    return Baseline(color, old, ctx.switch.answers(ctx.engine.addresses(color)), ctx.engine.watch(color),
                    ctx.engine.addresses(old))


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
    if mark.reader.unparsed and watch.tally.requests == 0:
        log.warning("    %d new lines of %s are not in the `pipeline` log format: no answer was judged",
                    mark.reader.unparsed, s.nginx_access_log)
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
        started = ctx.clock.now()
        deadline = started + s.verify_seconds
        next_probe = started + every
        next_report = started + 5.0
        failed_in_row: Dict[str, int] = {}   # per probed address (a swarm color has one per task)
        while True:
            problem = self.mark.watch.problem()
            if problem is not None:
                return f"{problem}; traffic: {self.tally.describe()}"
            problem = self._read()
            if problem is not None:
                return problem
            if too_many_errors(self.tally, s.verify_max_error_rate, s.verify_min_requests):
                return (f"{color} answered 5xx to {self.tally.rate:.1%} of {self.tally.requests} requests "
                        f"(limit {s.verify_max_error_rate:.1%}; commonest: {self.tally.commonest()})")
            now = ctx.clock.now()
            if now >= next_probe:
                next_probe = now + every
                for where, url in self._probed():
                    self.probes += 1
                    self.mark.probes = self.probes
                    try:
                        # Only where the watch just found ours holding the address, and from where
                        # nginx is (ctx.prober checks the route there first). A generous timeout:
                        # a busy host must not turn a slow answer into a switch-back.
                        gate.probe(ctx.prober, url, HEALTH_EVERY_MAX)
                        failed_in_row[where] = 0
                    except gate.NotHealthyYet as exc:
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
                ctx.clock.sleep(TRAFFIC_POLL)
            else:
                ctx.clock.sleep(max(0.0, min(TRAFFIC_POLL, deadline - now, next_probe - now)))

    def _probed(self) -> List[Tuple[str, str]]:
        """The health URLs to probe now, each with how a failure names it ("" for the one container)."""
        path = self.ctx.settings.health_path
        return [(e.name, health_url(e.address, path)) for e in self.mark.watch.endpoints()]

    def _read(self) -> Optional[str]:
        """Read what nginx answered; why the window fails if it could not for READ_FAILS polls
        in a row. Health alone does not verify a release (it may answer its probe while failing
        every request), so the window goes on without the answers for a moment only, and does
        not end on a failed read."""
        try:
            self.tally = self.mark.tally = self.mark.reader.read()
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


def _switched_back(ctx: Context, mark: Baseline, why: str) -> None:
    """switch_back, for a failure: a signal held through it is raised once it is done, and by
    then traffic is on the old release again, so it is reported as a switch back on a signal."""
    try:
        switch_back(ctx, mark.color, mark.old, why, mark.old_addresses)
    except Interrupted as exc:
        raise SwitchedBackOnSignal(exc.signum, f"switched back to {mark.old}: {why}") from exc


def switch_back(ctx: Context, color: str, old: str, why: str, old_addresses: Route = ()) -> None:
    """Old release back in traffic through the same switch, then the new container removed (a
    swarm's new service scaled to 0, as after a failed start). All of it one critical step.

    If the switch back itself fails, the new release stays live and running (removing it would
    leave nginx pointing at nothing): LiveUnverified says what serves and what to run. If only
    removing the new container fails (the engine is what failed), traffic is back all the same:
    said, and left to the next deploy.
    """
    s = ctx.settings
    new_name, old_name = s.container_name(color), s.container_name(old)
    addresses: Optional[Route] = None
    with ctx.guard.critical():
        try:
            addresses = _old_addresses(ctx, old, old_addresses)
            log.error("==> switching back to %s (%s) [%s]", old, shown(addresses) if addresses else "",
                      ctx.switch.mode)
            if not addresses:
                raise DeployFailed(f"{old_name} has no running task")
            ctx.switch.route_to(LIVE, addresses)
        except PipelineError as exc:
            if isinstance(exc, SwitchIncomplete):
                serving = f"nginx serves {new_name} or {old_name}: both are left running"
            else:
                old_state = ("was running at the switch" if addresses is None else
                             "is still running" if addresses else "has no running task")
                serving = f"{new_name} still has the traffic, unverified; {old_name} {old_state}"
            raise LiveUnverified(f"{why}; switching back to {old} failed: {exc}. {serving}. To go back to "
                                 f"{old}, run `python -m pipeline rollback` once that is fixed", color,
                                 exc.detail()) from exc
        # Requests nginx's old workers (reload mode) still send to the new release finish first.
        ctx.clock.sleep(ctx.switch.settle_seconds)
        try:
            log.error("==> %s; traffic is on %s again", ctx.engine.discarding(color, graceful=True), old_name)
            ctx.engine.discard(color, graceful=True)
        except OutsideFailure as exc:
            log.error("    could not remove %s (%s); traffic is on %s again, and the next deploy replaces it",
                      new_name, exc, old_name)


def _old_addresses(ctx: Context, old: str, at_switch: Route) -> Route:
    """Where the old release answers now (a swarm: every running task); if the engine (the swarm
    manager) does not answer, where it answered at the switch."""
    try:
        return ctx.engine.addresses(old)
    except OutsideFailure as exc:
        if not at_switch:
            raise
        log.warning("    %s; switching back to where %s answered at the switch", exc, old)
        return at_switch
