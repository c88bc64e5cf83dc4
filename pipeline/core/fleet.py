"""Several nginx hosts (NGINX_HOSTS) switched as one, and probed from as one.

`FleetSwitch` is a TrafficSwitch over one switch per nginx host (compose hands it to the flows
as `ctx.switch` when there is more than one host, so the flows' calls do not change). A switch is
two-phase and all-or-nothing:

1. prepare on every host (reload mode: the new include written and `nginx -t` run with it; live
   mode: the addresses checked and the admin answering with its token), each host in its own
   thread, while every host still serves the old release. One host failing: every prepared host is
   put back (its include), none switched, and the failure names the host.
2. commit on every host at once: one thread per host, released together by one barrier, each
   doing its reload (seen to apply) or its PUT (read back). The time each host's commit completes
   is taken; the skew (first to last host serving the new release) is logged and kept (`skew`).
   One host failing: that host put itself back (its switch does), every host that committed is
   switched back (in parallel), and the failure names the host and says what each one serves.
   A put-back that fails is SwitchIncomplete naming that host: the flows then keep the new
   release running.

`current()` asks every host; hosts that disagree are HostsDisagree (exit 3, nothing changed).
nginx's answers for verification are summed over every host (`FleetAnswers`), and health probes
run from every host (`FleetProber`): a release is healthy only when every nginx host gets a 200.

No I/O of its own: the threads run the per-host switches' and probers' calls.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Counter, Dict, List, Optional, Sequence, Tuple, TypeVar, cast

from pipeline.core.answers import AnswerReader, Tally
from pipeline.core.clock import Clock
from pipeline.core.errors import (DeployFailed, HostsDisagree, IncludeNotLoaded, Interrupted, PipelineError,
                                  SwitchIncomplete)
from pipeline.core.gate import NotHealthyYet, Probing
from pipeline.core.maintenance import Maintenance, describe as described
from pipeline.core.route import Route, shown
from pipeline.core.switch import Prepared, TwoPhaseSwitch

log = logging.getLogger("pipeline")

T = TypeVar("T")
R = TypeVar("R")
E = TypeVar("E", bound=BaseException)

# The threads of a commit wait at most this long for each other to start (they start in
# microseconds; a barrier that breaks fails that host's commit, which is then undone as any other).
START_TOGETHER_TIMEOUT = 10.0

Outcome = Tuple[Optional[R], Optional[BaseException]]


def on_each(items: Sequence[T], act: Callable[[T], R], together: bool = False) -> List[Outcome[R]]:
    """`act` on every item, each in a thread of its own, all at the same time; (result, None) or
    (None, what it raised) per item, in the items' order. `together`: the threads wait for each
    other and start `act` at the same moment (a barrier), so no host waits for the threads of the
    hosts before it to start. One item runs here, without a thread.

    A signal arriving while this waits (Interrupted) is raised once every thread is done, so no
    host is left half-way by the flow giving up on it."""
    if len(items) == 1:
        try:
            return [(act(items[0]), None)]
        except Exception as exc:
            return [(None, exc)]
    results: List[Outcome[R]] = [(None, None)] * len(items)
    barrier = threading.Barrier(len(items)) if together else None

    def run(index: int) -> None:
        try:
            if barrier is not None:
                barrier.wait(START_TOGETHER_TIMEOUT)
            results[index] = (act(items[index]), None)
        except BaseException as exc:
            results[index] = (None, exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"nginx-host-{i + 1}", daemon=True)
               for i in range(len(items))]
    for thread in threads:
        thread.start()
    interrupted: Optional[Interrupted] = None
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except Interrupted as exc:   # a signal outside a critical step: every host finishes first
                interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted
    return results


def named(exc: E, host: str) -> E:
    """The error, its message naming the nginx host it came from (unless it does already); its
    type and fields kept, so the flows handle it as before."""
    if host not in str(exc):
        exc.args = (f"nginx host {host}: {exc}",)
    return exc


class FleetSwitch:
    """Every nginx host's switch as one TrafficSwitch (see the module docstring)."""

    # The hosts' (they all have the same SWITCH_MODE), and the longest of their settle times.
    mode: str = ""
    settle_seconds: float = 0.0

    def __init__(self, members: Sequence[Tuple[str, TwoPhaseSwitch]], clock: Clock) -> None:
        """`members`: (how a message names the host, its switch), in NGINX_HOSTS' order;
        `clock`: when each host's commit completed is read on it."""
        assert members, "a fleet of no nginx host"
        self.names = [name for name, _ in members]
        self.switches = [switch for _, switch in members]
        self.mode = self.switches[0].mode
        self.settle_seconds = max(switch.settle_seconds for switch in self.switches)
        self.clock = clock
        # The last switch: seconds from the first host's commit completing to the last one's.
        self.skew: Optional[float] = None

    # -- asked of every host ------------------------------------------------------------------------

    def _all(self, act: Callable[[TwoPhaseSwitch], R]) -> List[R]:
        """`act` on every host's switch at once; the first failure (in NGINX_HOSTS' order), naming
        its host, is raised once every host answered."""
        outcomes = on_each(self.switches, act)
        for name, (_, exc) in zip(self.names, outcomes):
            if exc is not None:
                raise named(exc, name)
        return [cast(R, result) for result, _ in outcomes]

    def check(self) -> None:
        self._all(lambda switch: switch.check())

    def check_answers(self) -> None:
        self._all(lambda switch: switch.check_answers())

    def describe(self) -> Dict[str, Optional[str]]:
        return {f"{name} {key}": value for name, report in zip(self.names, self._all(lambda s: s.describe()))
                for key, value in report.items()}

    def answers(self, route: Route) -> AnswerReader:
        """nginx's answers for `route`'s addresses, summed over every host."""
        return FleetAnswers(self.names, self._all(lambda switch: switch.answers(route)))

    def current(self, route_name: str) -> Optional[Route]:
        """What every host serves, when they agree. A host that cannot say raises (naming it);
        hosts that disagree raise HostsDisagree. IncludeNotLoaded (reload mode) stands for the
        address its include names, so the flow can settle it on every host."""
        outcomes = on_each(self.switches, lambda switch: switch.current(route_name))
        for name, (_, exc) in zip(self.names, outcomes):
            if exc is not None and not isinstance(exc, IncludeNotLoaded):
                raise named(exc, name)
        seen = {name: exc.address if isinstance(exc, IncludeNotLoaded) else served
                for name, (served, exc) in zip(self.names, outcomes)}
        if len(set(seen.values())) > 1:
            each = "; ".join(f"{name} {'names' if isinstance(exc, IncludeNotLoaded) else 'serves'} "
                             f"{shown(seen[name])}" for name, (_, exc) in zip(self.names, outcomes))
            raise HostsDisagree(f"the nginx hosts disagree on the {route_name} route: {each}. Nothing was changed: "
                                f"point every host at the same color (or take the odd one out of NGINX_HOSTS), "
                                f"then run again")
        for name, (_, exc) in zip(self.names, outcomes):
            if exc is not None:
                raise named(exc, name)
        return seen[self.names[0]]

    def maintenance(self) -> Optional[Maintenance]:
        """Every host's flag, when they agree (HostsDisagree otherwise)."""
        flags = self._all(lambda switch: switch.maintenance())
        if len(set(flags)) > 1:
            each = "; ".join(f"{name} {described(flag)}" for name, flag in zip(self.names, flags))
            raise HostsDisagree(f"the nginx hosts disagree on maintenance mode: {each}. Nothing was changed: turn "
                                f"it on or off again (`python -m pipeline maintenance on|off`) to set every host")
        return flags[0]

    def set_maintenance(self, flag: Optional[Maintenance]) -> None:
        """On every host at once; when one fails, the others are set back to what they had."""
        before = self._all(lambda switch: switch.maintenance())
        outcomes = on_each(self.switches, lambda switch: switch.set_maintenance(flag))
        failed = [(name, exc) for name, (_, exc) in zip(self.names, outcomes) if exc is not None]
        if not failed:
            return
        done = [(switch, was) for switch, was, (_, exc) in zip(self.switches, before, outcomes) if exc is None]
        back = on_each(done, lambda pair: pair[0].set_maintenance(pair[1]))
        stuck = [f"{self.names[self.switches.index(switch)]} ({exc})"
                 for (switch, _), (_, exc) in zip(done, back) if exc is not None]
        name, exc = failed[0]
        if not isinstance(exc, PipelineError):
            raise exc
        what = f"maintenance mode {described(flag)} failed on nginx host {name}: {exc}"
        if stuck:
            raise DeployFailed(f"{what}; setting the other hosts back failed on {', '.join(stuck)}: "
                               f"`python -m pipeline status` shows each host") from exc
        raise DeployFailed(f"{what}; every other host set back as it was") from exc

    # -- the switch: prepare everywhere, then commit everywhere at once ----------------------------

    def route_to(self, route_name: str, route: Route) -> None:
        outcomes = on_each(self.switches, lambda switch: switch.prepare(route_name, route))
        prepared = [(name, cast(Prepared, p)) for name, (p, exc) in zip(self.names, outcomes) if exc is None]
        failed = [(name, exc) for name, (_, exc) in zip(self.names, outcomes) if exc is not None]
        if failed:
            self._prepare_failed(route_name, route, prepared, failed)
        committed = on_each([p for _, p in prepared], lambda p: self._commit(p), together=True)
        failed = [(name, exc) for (name, _), (_, exc) in zip(prepared, committed) if exc is not None]
        if failed:
            # Back: every host that switched, and any whose commit ended in a bug (a failure of
            # ours, not the host's: its switch did not put itself back).
            done = [(name, p) for (name, p), (_, exc) in zip(prepared, committed)
                    if exc is None or not isinstance(exc, PipelineError)]
            self._commit_failed(route_name, route, prepared, done, failed)
        times = [(name, cast(float, at)) for (name, _), (at, _) in zip(prepared, committed)]
        self._report_skew(route_name, route, times)

    def _commit(self, prepared: Prepared) -> float:
        prepared.commit()
        return self.clock.now()

    def _report_skew(self, route_name: str, route: Route, times: List[Tuple[str, float]]) -> None:
        ordered = sorted(times, key=lambda item: item[1])
        self.skew = ordered[-1][1] - ordered[0][1]
        log.info("    %d nginx hosts switched the %s route to %s; skew %.1f ms (first %s, last %s)", len(times),
                 route_name, shown(route), self.skew * 1000, ordered[0][0], ordered[-1][0])

    def _undo(self, prepared: List[Tuple[str, Prepared]]) -> Dict[str, BaseException]:
        """Every one of them put back at once: the hosts whose put-back failed, with why."""
        outcomes = on_each([p for _, p in prepared], lambda p: p.undo())
        return {name: exc for (name, _), (_, exc) in zip(prepared, outcomes) if exc is not None}

    def _prepare_failed(self, route_name: str, route: Route, prepared: List[Tuple[str, Prepared]],
                        failed: List[Tuple[str, BaseException]]) -> None:
        stuck = self._undo(prepared)
        name, exc = failed[0]
        stuck.update((n, e) for n, e in failed if isinstance(e, SwitchIncomplete))
        if not isinstance(exc, PipelineError):
            raise exc   # a bug: reported as one, once every host is put back
        what = f"preparing the {route_name} switch to {shown(route)} failed on nginx host {name}: {exc}"
        if stuck:
            raise SwitchIncomplete(f"{what}; then putting back failed on " + "; ".join(
                f"nginx host {n} ({e})" for n, e in stuck.items()) + ". No host was reloaded or switched, but "
                "the includes named may name the new address: the new release is left running", list(exc.detail())) \
                from exc
        raise DeployFailed(f"{what}; no nginx host was switched: every one still serves what it served before "
                           f"({self._serving(prepared, {})})", list(exc.detail())) from exc

    def _commit_failed(self, route_name: str, route: Route, prepared: List[Tuple[str, Prepared]],
                       done: List[Tuple[str, Prepared]], failed: List[Tuple[str, BaseException]]) -> None:
        log.error("==> switching nginx host %s failed: switching back %s", failed[0][0],
                  ", ".join(name for name, _ in done) or "no other host (none had switched)")
        stuck = self._undo(done)
        stuck.update((n, e) for n, e in failed if isinstance(e, SwitchIncomplete))
        name, exc = failed[0]
        if not isinstance(exc, PipelineError):
            raise exc
        what = f"switching the {route_name} route to {shown(route)} failed on nginx host {name}: {_what(exc)}"
        serving = self._serving(prepared, stuck, route, said=exc)
        if stuck:
            raise SwitchIncomplete(f"{what}; the hosts could not all be put back: {serving}. So the new release "
                                   f"is left running; `python -m pipeline status` shows what each host serves. "
                                   f"Runs refuse while the hosts disagree: once every host answers, point "
                                   f"{' and '.join(stuck)} at what the others serve (on that host: its include, then "
                                   f"NGINX_TEST_COMMAND and NGINX_RELOAD_COMMAND), then run again",
                                   list(exc.detail())) from exc
        back = f"switched {', '.join(n for n, _ in done)} back" if done else "no other host had switched"
        raise DeployFailed(f"{what}; {back}: {serving}", list(exc.detail())) from exc

    @staticmethod
    def _serving(prepared: List[Tuple[str, Prepared]], stuck: Dict[str, BaseException],
                 route: Optional[Route] = None, said: Optional[BaseException] = None) -> str:
        """What each host serves after a failed switch: what it served before, or (its put-back
        failed) either, and why, unless that is `said` (the failure the message starts with: a
        host whose commit and put-back both failed is not told twice in one line)."""
        return ", ".join((f"{name} may serve {shown(route)} or {shown(p.before)}"
                          + ("" if stuck[name] is said else f" ({_what(stuck[name])})")) if name in stuck
                         else f"{name} serves {shown(p.before)}" for name, p in prepared)


def _what(exc: BaseException) -> str:
    """A host's failure without what to do on that host alone (SwitchIncomplete.todo): put back
    as one host would, it could still disagree with the others."""
    return exc.what if isinstance(exc, SwitchIncomplete) else str(exc)


class FleetAnswers:
    """nginx's answers for the new release, summed over every host's reader (an access log per
    host in reload mode, each host's stats in live mode)."""

    def __init__(self, names: Sequence[str], readers: Sequence[AnswerReader]) -> None:
        self.names, self.readers = list(names), list(readers)
        self.unparsed = 0

    def read(self) -> Tally:
        total: Counter[int] = collections.Counter()
        for name, reader in zip(self.names, self.readers):
            try:
                total.update(reader.read().statuses)
            except PipelineError as exc:
                raise named(exc, name)
        self.unparsed = sum(reader.unparsed for reader in self.readers)
        return Tally(dict(total))


class FleetProber:
    """Health probes from every nginx host (one Prober each): an answer is a 200 only when every
    host got one; the routes are checked on every host."""

    def __init__(self, probers: Sequence[Probing]) -> None:
        assert probers, "probing from no nginx host"
        self.probers = list(probers)
        self.where = "every nginx host (" + "; ".join(p.where for p in self.probers) + ")"

    def check_routes(self, ips: Sequence[str]) -> None:
        """Every host's route check at once (each is a command on its host); the first refusal,
        in NGINX_HOSTS' order, is raised (it names where the probes run)."""
        for _, exc in on_each(self.probers, lambda prober: prober.check_routes(ips)):
            if exc is not None:
                raise exc

    def get(self, url: str, timeout: float) -> Tuple[int, str]:
        """Every host's answer; the first that is not a 200 (naming its host), else the 200."""
        answer: Tuple[int, str] = (0, "")
        for prober in self.probers:
            try:
                status, text = prober.get(url, timeout)
            except NotHealthyYet as exc:
                raise NotHealthyYet(f"{exc.last} (from {prober.where})") from exc
            if status != 200:
                raise NotHealthyYet(f"HTTP {status} {text.strip()!r} (from {prober.where})")
            answer = (status, text)
        return answer

    def can_connect(self, ip: str, port: int, timeout: float) -> bool:
        return all(prober.can_connect(ip, port, timeout) for prober in self.probers)

    def route_to(self, ip: str) -> str:
        """How each host reaches `ip`, for `status`."""
        return "; ".join(f"{prober.route_to(ip)} from {prober.where}" for prober in self.probers)
