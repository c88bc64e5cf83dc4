"""The deploy, as the runbook tells it.

    preflight -> build -> pick the idle color -> start it -> health -> [smoke] -> [min ready]
    -> switch -> verify -> drain -> last look -> stop old

Every flow that changes something starts with `preflight` (lock, check; the history is written
when it ends, however it ends); its settings, the version included, were settled before the
context was composed (compose.py). Facts are gathered next, including the release
record (releases.py), the decision is made by pure functions (decide.py, releases.py), then the
world is touched. Every failure before the switch leaves traffic where it was and removes the new
container (on a swarm: scales the new service to 0); a failed switch restores the include (the
switch modules). `stage` (deploy --no-promote), `promote` and `rollback` are short flows of the
same steps. The colors run on a Target (target.py), one engine or a swarm: the same runbook.
"""
from __future__ import annotations

import logging
import os
import shlex
import socket
import contextlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from pipeline.flows import build, hooks, smoke, verify

from pipeline.core import decide, gate, releases
from pipeline.core.decide import ContainerFact
from pipeline.core.route import Route, health_url, shown
from pipeline.core.errors import (DeployFailed, IncludeNotLoaded, Interrupted, InterruptedAfterSwitch,
                     LiveUnverified, NothingToDo, OutsideFailure, PipelineError, PreflightError, ReleasePhaseFailed,
                     RouteRefused, SettingsError,
                     SwitchedBack, SwitchedBackAfterBug, SwitchedBackOnSignal, SwitchIncomplete, SwitchUnavailable)
from pipeline.core.history import Entry, History
from pipeline.core.clock import SYSTEM, Clock
from pipeline.flows.lock import LockInfo, LockSet, who_am_i
from pipeline.core.host import NginxHost, check_writable
from pipeline.core.releases import Release, ReleaseRecord, ReleaseStore
from pipeline.core.runlog import Phase, RunLog
from pipeline.core.settings import COLORS, Settings
from pipeline.signals import SignalGuard
from pipeline.core.switch import LIVE, PREVIEW, IncludeFiles, TrafficSwitch, status_fields
from pipeline.core.target import HealthReport, Target, probe_endpoints

log = logging.getLogger("pipeline")

# What `status` and `history` return: JSON documents (cli.py prints them, or dumps them with --json).
Report = Dict[str, Any]


@dataclass(frozen=True)
class Context:
    """The outside things a flow works with, handed in (never globals), with settings already
    settled (the version included): compose.py builds it, and nothing changes it afterwards."""

    settings: Settings
    engine: Target       # one engine (engine.py) or a swarm (swarm.py): compose.make_target
    host: NginxHost
    switch: TrafficSwitch
    cwd: Path
    environ: Mapping[str, str]
    prober: gate.Probing   # where health probes run (the nginx host's side): compose.make_prober
    started: float             # on `clock`: when the run started (the total time at the end)
    guard: SignalGuard = field(default_factory=SignalGuard)
    clock: Clock = SYSTEM   # every wait of the run: the gate, MIN_READY_SECONDS, the window, the drain
    # The health gate (gate.wait_ready's signature): the one step that waits for the release.
    health_gate: Callable[[gate.Gate, float, float, Clock], int] = gate.wait_ready
    lock_wait: float = 0.0
    # What the run decided and how long each phase took: for the hooks and `--report` (cli.py).
    runlog: RunLog = field(default_factory=RunLog)
    # Every nginx host (NGINX_HOSTS, in order; `host` is the first): (host,) when there is one;
    # and each one's own switch, in the same order (`switch` is what the flows switch with).
    hosts: Tuple[NginxHost, ...] = ()
    switches: Tuple[TrafficSwitch, ...] = ()

    def __post_init__(self) -> None:
        if not self.hosts:
            object.__setattr__(self, "hosts", (self.host,))
        if not self.switches:
            object.__setattr__(self, "switches", (self.switch,))


@dataclass(frozen=True)
class Facts:
    live_address: Optional[Route]      # live mode on a swarm: every task's address
    preview_address: Optional[Route]
    containers: Dict[str, ContainerFact]
    choice: decide.ColorChoice


@dataclass(frozen=True)
class Outcome:
    action: str
    version: str
    color: str
    message: str
    release: Optional[Release] = None   # the release it made live or staged: its digest goes on record


def phase(message: str, *args: object) -> None:
    log.info("==> " + message, *args)


def timed(ctx: Context, name: str) -> "contextlib.AbstractContextManager[Phase]":
    """A step of the run, timed on the run's clock for `--report` (runlog.py)."""
    return ctx.runlog.timed(name, ctx.clock, ctx.started)


# -- facts -----------------------------------------------------------------------------------------

def gather(ctx: Context, current: Optional[Callable[[str], Optional[Route]]] = None,
           probe: bool = True, include_loaded: bool = True) -> Facts:
    """What the flows decide from. `current` says where a route points (default: the switch).
    `probe=False`: blue is not probed (status, when probes are refused), so it counts as not alive.
    `include_loaded=False`: nginx was not seen loading the live include (decide.may_serve)."""
    s = ctx.settings
    current = current or ctx.switch.current
    live_address = current(LIVE)
    preview_address = current(PREVIEW) if s.nginx_preview_include else None
    containers = ctx.engine.containers()
    include_color = ctx.engine.color_at(live_address)
    blue_alive = None
    if probe and include_color is None and ctx.engine.holds_address("blue"):
        # The seed's rule, kept for a host with no include yet: probe blue, but only because a
        # container of ours holds its address (checked just above).
        try:
            gate.probe(ctx.prober, health_url(ctx.engine.addresses("blue")[0], s.health_path), 2.0)
            blue_alive = True
        except gate.NotHealthyYet:
            blue_alive = False
    running = frozenset(color for color, fact in containers.items() if fact.running)
    choice = decide.choose_colors(include_color, blue_alive, running, include_loaded)
    return Facts(live_address, preview_address, containers, choice)


def check_probe_routes(ctx: Context) -> None:
    """Before any probe: both colors' addresses are reached from where probes run (the nginx
    host's side) by a route the probes may take (exit 3 otherwise): one engine's over a local
    bridge, never through a gateway; a swarm's nodes' by any route (health.py). The first command
    the nginx host runs in a flow: one, for every address."""
    ctx.prober.check_routes(ctx.engine.probe_ips())


def preview_route(ctx: Context, color: str) -> Route:
    """The preview serves a tester, not the load: one address (a swarm color's first task)."""
    return ctx.engine.addresses(color)[:1]


# -- preflight: one place, for every flow that changes something ----------------------------------

class Run:
    """One flow's run, between preflight and the history entry."""

    def __init__(self) -> None:
        self.outcome: Optional[Outcome] = None
        self.post_hook = False   # the pre hook's stage was passed: the post hook runs at the end

    def done(self, outcome: Outcome) -> Outcome:
        """What the history records when the flow's `with preflight(...)` block ends."""
        self.outcome = outcome
        return outcome


@contextmanager
def preflight(ctx: Context, action: str) -> Iterator[Run]:
    """Take the deploy lock, check every part the run will use; on the way out write the history
    (of a failure too) and release the lock. The version is settled already (compose.settled).

    A check that fails has changed nothing: the lock is released again.
    """
    s = ctx.settings
    ctx.runlog.action = action
    if action in ("deploy", "stage"):
        ctx.runlog.version = s.app_version   # settled: the report names it even if preflight fails
    checks = ctx.runlog.begin("preflight", ctx.clock, ctx.started)   # the lock and the checks
    for host in ctx.hosts:
        check_writable(host, s)   # first: the lock and the history are written there, on every host
    assert s.app_version or action not in ("deploy", "stage"), "compose settles the version of a deploy"
    who = who_am_i(ctx.environ)
    lock = LockSet.on(ctx.hosts, str(s.lock_path()), clock=ctx.clock)
    history = run_history(ctx)
    try:
        lock.acquire(LockInfo(who, socket.gethostname(), os.getpid(), action, s.app_version or "", _now()),
                     ctx.lock_wait)
    except BaseException:
        checks.end(ctx.clock, failed=True)
        raise
    run = Run()
    try:
        try:
            history.mend()   # several hosts: one that missed runs gets every host's history
            if lock.taken_over is not None and not _ended_elsewhere(ctx, history, lock.taken_over):
                history.append(killed_entry(lock.taken_over, s.app_name, who))
            phase("preflight")   # from here to "done" this run holds the lock
            ctx.switch.check()
            if action in ("deploy", "promote"):
                verify.check(ctx)   # the answers verification reads can be read at all
            if action in ("deploy", "stage") and s.registry:
                ctx.engine.check_registry()   # the login works (and answers) before anything is built
            if ctx.engine.network_exists():
                check_probe_routes(ctx)
            else:
                ctx.prober.check_routes([])   # that the nginx host runs commands, before a network is made
            if ctx.engine.ensure_network():
                log.info("    created docker network %s (%s, gateway %s)", s.deploy_network, s.deploy_subnet,
                         s.deploy_gateway)
                try:
                    check_probe_routes(ctx)
                except PreflightError:   # no route, or the nginx host runs no commands
                    ctx.engine.remove_network()   # ours, just made, empty: nothing changed
                    raise
            ctx.engine.check_capacity()   # a swarm with fewer nodes up than REPLICAS: exit 3 here
            checks.end(ctx.clock)
            yield run
        except BaseException as exc:
            checks.end(ctx.clock, failed=True)
            if not isinstance(exc, (NothingToDo, SettingsError)):   # neither changed anything
                result = getattr(exc, "history_result", None) or (
                    "interrupted" if isinstance(exc, Interrupted) else "failed")
                history.append(Entry(_now(), who, s.app_name, action, s.app_version or "",
                                     getattr(exc, "color", ""), result, _elapsed(ctx), describe_failure(exc)[:300]))
                if run.post_hook:
                    run_hook(ctx, "post", result)
            raise
        outcome = run.outcome
        assert outcome is not None, f"the {action} flow ended without saying what it did"
        made = outcome.release
        lost = history.append(Entry(_now(), who, s.app_name, outcome.action, outcome.version, outcome.color, "ok",
                                    _elapsed(ctx), outcome.message, made.digest if made else "",
                                    made.digest_of if made else ""))
        if run.post_hook:
            run_hook(ctx, "post", "ok")
        if lost and len(ctx.hosts) > 1:
            raise host_lost(outcome, lost)
        phase("done: %s in %.1fs", outcome.message, ctx.clock.now() - ctx.started)
    finally:
        lock.release()   # on every host; one that fails is logged and must not replace the run's result


def host_lost(outcome: Outcome, lost: Sequence[Tuple[str, str]]) -> DeployFailed:
    """A run that did what it set out to do, but one of several nginx hosts could not be reached
    at its end (its history could not be written there): exit 1 naming it. What it serves is not
    known; the next run cannot connect to it and refuses (exit 3) until it is back or removed
    from NGINX_HOSTS."""
    names = ", ".join(host for host, _ in lost)
    causes = "; ".join(f"{host}: {cause}" for host, cause in lost)
    return DeployFailed(f"{outcome.message} on the other nginx hosts, but the nginx host {names} could not be "
                        f"reached at the end of the run ({causes}): what it serves is not known; the next "
                        f"deploy refuses (exit 3) until it is back or removed from NGINX_HOSTS")


def _ended_elsewhere(ctx: Context, history: History, dead: LockInfo) -> bool:
    """With several nginx hosts: whether the run whose stale lock was taken over did end, its
    history line written on another host (it lost this one before it could release the lock
    there). It was not killed, and is not recorded as killed."""
    if len(ctx.hosts) == 1:
        return False
    ended = any(e.who == dead.who and e.action == dead.action and e.version == dead.version and e.time >= dead.since
                for e in history.entries())
    if ended:
        log.info("    the stale lock was left by a run that ended (%s of %s by %s; its history says so), not "
                 "one that was killed", dead.action, dead.version or "?", dead.who)
    return ended


def before_changes(ctx: Context, run: Run, version: str, previous: Optional[Release], color: str) -> None:
    """The run knows what it releases and has changed nothing yet: the report learns it, and the
    pre hook runs (a failing one stops the run here, exit 1). The post hook runs when it ends."""
    r = ctx.runlog
    r.version, r.previous_version, r.color = version, previous.version if previous else None, color
    run_hook(ctx, "pre")
    run.post_hook = True


def run_hook(ctx: Context, when: str, result: Optional[str] = None) -> None:
    """The action's pre or post hook, if HOOKS_DIR holds it (hooks.py), timed as a phase."""
    s = ctx.settings
    pre, post = hooks.HOOKS[ctx.runlog.action]
    name = pre if when == "pre" else post
    path = hooks.find(s.hooks_dir, ctx.cwd, name)
    if path is None:
        return
    hosts = ",".join(map(str, s.nginx_hosts)) or s.nginx_host or "localhost"
    env = hooks.environment(ctx.environ, ctx.runlog, who_am_i(ctx.environ), hosts, ctx.clock.now() - ctx.started,
                            result)
    with timed(ctx, f"{name} hook"):
        hooks.run(path, name, env, ctx.cwd, s.hook_timeout, must_pass=when == "pre")


def killed_entry(dead: LockInfo, app: str, found_by: str) -> Entry:
    """The history entry of a run that died holding the lock (SIGKILL, a crash): it never wrote
    its own. Its start time and what it ran; how far it got is not known (`status` says what
    serves now)."""
    return Entry(dead.since, dead.who, app, dead.action, dead.version, "", "killed", 0.0,
                 f"its process ended without finishing (pid {dead.pid} on {dead.machine}); "
                 f"{found_by} took over its lock at {_now()}")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _elapsed(ctx: Context) -> float:
    return round(ctx.clock.now() - ctx.started, 2)


def facts_and_record(ctx: Context) -> Tuple[Facts, ReleaseRecord]:
    """What the flows decide from: the facts, and the release record checked against them. With
    several nginx hosts whose copies of the record differ, the record reconciled (releases.load)
    is written on every host here, under the lock."""
    gathered = _gathered_settled(ctx)
    store = record_store(ctx)
    copies = store.copies()   # once: _settled and recorded both need it (one SFTP round trip per host)
    facts = _settled(ctx, gathered, copies)
    record = recorded(ctx, facts, copies)
    if any(copy.record != copies[0].record for copy in copies):   # several hosts, copies that disagree
        with ctx.guard.critical():
            store.write(record)
    return facts, record


def _gathered_settled(ctx: Context) -> Facts:
    """The facts, for a flow that changes something. When nginx was not seen loading the live
    include (reload mode: a run killed between the include and the reload, a reload that did not
    apply) and may still serve the color this run would replace, nginx loads the include first
    (test + reload, seen to apply), so that it serves what the include names; or the run stops
    (exit 3) saying what to do (decide.settle_before_touching)."""
    try:
        return gather(ctx)
    except IncludeNotLoaded as exc:
        unloaded = exc
    facts = gather(ctx, lambda route: unloaded.address if route == LIVE else ctx.switch.current(route),
                    include_loaded=False)
    choice, s = facts.choice, ctx.settings
    if choice.settle is None:
        return facts
    todo = (f"on the nginx host, run `{shlex.join(s.nginx_test_command)}` and "
            f"`{shlex.join(s.nginx_reload_command)}`, then run again")
    if choice.settle == "refuse":
        raise PreflightError(f"{unloaded}; {s.container_name(choice.target)} runs and nginx may serve it, but the "
                             f"include names no running color of ours: point the include at the color nginx "
                             f"should serve, {todo}")
    phase("settling what nginx serves: %s; reloading it before touching %s", unloaded,
          s.container_name(choice.target))
    # "reload" only when the include names a running color: it names an address.
    assert unloaded.address is not None, unloaded
    try:
        with ctx.guard.critical():
            ctx.switch.route_to(LIVE, unloaded.address)
    except DeployFailed as exc:
        raise PreflightError(f"{unloaded}, and {s.container_name(choice.target)} runs; reloading nginx to settle "
                             f"that failed: {exc}. Nothing was changed: {todo}") from exc
    return gather(ctx)


def _settled(ctx: Context, facts: Facts, copies: Optional[Sequence[releases.Copy]] = None) -> Facts:
    written = releases.agreed(copies if copies is not None else record_store(ctx).copies())
    running = frozenset(color for color, fact in facts.containers.items() if fact.running)
    choice = releases.settle_live(facts.choice, written, running)
    if choice == facts.choice:
        return facts
    log.info("    the release record says nothing is live yet: %s is staged, not live", choice.target)
    return replace(facts, choice=choice)


def recorded(ctx: Context, facts: Facts, copies: Optional[Sequence[releases.Copy]] = None) -> ReleaseRecord:
    """The release record, checked against what nginx serves and Docker reports (and its copies
    on the nginx hosts reconciled)."""
    s = ctx.settings
    return releases.load(record_store(ctx), run_history(ctx).entries,
                         facts.choice.live, facts.containers, s.image_ref, copies)


def record_store(ctx: Context) -> ReleaseStore:
    """The release record, on every nginx host."""
    return ReleaseStore(ctx.hosts[0], str(ctx.settings.releases_path()), ctx.hosts[1:])


def run_history(ctx: Context) -> History:
    """The history, on every nginx host."""
    return History(ctx.hosts[0], str(ctx.settings.history_path()), ctx.hosts[1:])


# -- steps -----------------------------------------------------------------------------------------

def check_version_is_new(ctx: Context, facts: Facts, record: ReleaseRecord) -> None:
    """A version on record (live, staged, a rollback target) is never built over: exit 2 here,
    before anything is built or changed."""
    version = ctx.settings.app_version or ""
    images = ctx.engine.release_images()
    build.check_new_version(version, record, facts.choice.live, facts.containers, images)
    if ctx.settings.image_ref(version) in images:
        log.info("    image %s is left from a run that never went live: it is built again",
                 ctx.settings.image_ref(version))


def build_release(ctx: Context, color: str) -> Release:
    """The build command, the image, the registry round trip: the release, not started yet."""
    s = ctx.settings
    version = s.app_version or ""
    image = s.image_ref(version)
    with timed(ctx, "build"):
        if s.build_command:
            phase("building: %s", " ".join(s.build_command))
            build.run_build(s.build_command, ctx.cwd, ctx.environ)
        build.warn_secret_build_args(s.build_args)
        phase("building image %s", image)
        digest, digest_of = ctx.engine.build_image(ctx.cwd, image, version), releases.DIGEST_IMAGE_ID
    if s.registry:
        phase("pushing %s to %s and pulling it back", image, s.registry)
        with timed(ctx, "push"):
            pushed = ctx.engine.push_and_pull(image)
        if pushed:   # what every node pulls: status and history show it
            digest, digest_of = pushed, releases.DIGEST_REGISTRY
    return Release(version, color, image, digest, digest_of)


def run_release_phase(ctx: Context, release: Release) -> None:
    """RELEASE_COMMAND (the migrations' expand step), once, in a one-off container of the new
    release's image, after it is built and pushed and before its color starts: a non-zero exit or
    RELEASE_TIMEOUT fails the run here (exit 1), with nothing started or switched and the one-off
    container removed. Its output goes to the log as it comes (masked there, as every line)."""
    if ctx.settings.release_command:
        with timed(ctx, "release phase"):
            _release_phase(ctx, release)


def _release_phase(ctx: Context, release: Release) -> None:
    s = ctx.settings
    command = shlex.join(s.release_command)
    phase("release phase: %s in a one-off container of %s (up to RELEASE_TIMEOUT=%gs)", command, release.image,
          s.release_timeout)
    ended = ctx.engine.run_once(release.image, release.version, release.color, s.release_command,
                                s.release_timeout, lambda line: log.info("    | %s", line))
    if ended.timed_out:
        why = f"did not end within RELEASE_TIMEOUT={s.release_timeout:g}s (stopped)"
    elif ended.exit_code is None:
        why = f"did not run: {ended.problem}"
    elif ended.exit_code != 0:
        why = f"exited with {ended.exit_code}"
    else:
        log.info("    release phase done")
        return
    raise ReleasePhaseFailed(f"release phase `{command}` of {release.version} {why}; nothing was started or "
                             f"switched", [f"release phase: {line}" for line in ended.last_lines])


def start(ctx: Context, release: Release) -> None:
    s = ctx.settings
    phase("starting %s (%s) at %s", s.container_name(release.color), release.version,
          ctx.engine.placement(release.color))
    with timed(ctx, "start"), ctx.guard.critical():
        ctx.engine.run(release.color, release.image, release.version)


def wait_healthy(ctx: Context, color: str) -> None:
    """The health gate: every endpoint of the color answers 200 (one container, or REPLICAS
    tasks each on its own node), or the run fails here with nothing switched."""
    s = ctx.settings
    gate = ctx.engine.gate(color, ctx.prober)
    phase("waiting for %s (every %gs, up to %gs)", gate.awaited, s.health_interval, s.health_timeout)
    with timed(ctx, "health"):
        ctx.health_gate(gate, s.health_interval, s.health_timeout, ctx.clock)


def smoke_test(ctx: Context, color: str) -> None:
    s = ctx.settings
    if s.smoke_command:
        url = preview_route(ctx, color)[0].url
        phase("smoke test: %s (SMOKE_URL=%s)", s.smoke_command, url)
        with timed(ctx, "smoke"):
            smoke.run_smoke(s.smoke_command, url, ctx.environ, s.health_timeout)


def hold_ready(ctx: Context, color: str) -> None:
    """MIN_READY_SECONDS after the health gate (and the smoke test), before any switch: the new
    release keeps running and answering health that long, or it fails as a failed gate does
    (nothing switched; the caller removes it). A release that dies right after its first 200
    then costs no request. 0 (the default) skips it."""
    s = ctx.settings
    if s.min_ready_seconds <= 0:
        return
    name = s.container_name(color)
    problem, probe_all = ready_checks(ctx, color)
    phase("holding %s for MIN_READY_SECONDS=%gs: it must keep running and answering %s (every %gs)", name,
          s.min_ready_seconds, s.health_path, min(s.health_interval, gate.READY_PROBE_EVERY_MAX))
    started = ctx.clock.now()
    with timed(ctx, "min ready"):
        reason = gate.stay_ready(s.min_ready_seconds, s.health_interval, problem, probe_all, ctx.clock)
    if reason is not None:
        raise DeployFailed(f"{name} did not stay ready for MIN_READY_SECONDS={s.min_ready_seconds:g}: {reason} "
                           f"{ctx.clock.now() - started:.1f}s after it was healthy; nothing was switched",
                           [f"container log: {line}" for line in ctx.engine.logs_tail(color)])
    log.info("    %s stayed ready for %gs", name, s.min_ready_seconds)


def ready_checks(ctx: Context, color: str) -> Tuple[Callable[[], Optional[str]], Callable[[float], None]]:
    """For gate.stay_ready, on a color that passed its gate: why it is not serving (None if it
    is), and a probe of every endpoint it answers at (failures naming the endpoint). On a swarm
    any watched task failing, restarting or moved, or fewer than REPLICAS running, is a problem.
    Probes go only where the check just found ours."""
    watch = ctx.engine.watch(color)
    path = ctx.settings.health_path
    return watch.problem, lambda timeout: probe_endpoints(ctx.prober, watch.endpoints(), path, timeout)


def _verified(verdict: Optional[verify.Verdict]) -> str:
    return f"; {verdict.summary()}" if verdict else ""


def switch_live(ctx: Context, release: Release, record: ReleaseRecord) -> ReleaseRecord:
    """Move live traffic to `release` and record it, in one step no signal cuts in half."""
    route = ctx.engine.addresses(release.color)
    phase("switching nginx to %s (%s) [%s]", release.color, shown(route), ctx.switch.mode)
    switched = False
    try:
        with timed(ctx, "switch"), ctx.guard.critical():
            ctx.switch.route_to(LIVE, route)
            switched = True
            record = record.made_live(release)
            record_store(ctx).write(record)
    except Interrupted as exc:
        if switched:   # the signal was held through the switch: the release is live now
            raise InterruptedAfterSwitch(exc.signum) from exc
        raise
    return record


def verified(ctx: Context, mark: Optional[verify.Baseline], before: ReleaseRecord) -> Optional[verify.Verdict]:
    """The verification window after the switch. On a switch back, the record is put back as it
    was before the switch: the failed release is live nowhere and no rollback target. When the
    switch back failed (LiveUnverified), the record stays as the switch wrote it: that release
    is live."""
    if mark is None:
        return None
    try:
        with timed(ctx, "verify") as step:
            try:
                return verify.verify(ctx, mark)
            finally:
                step.counts = {"requests": mark.tally.requests, "errors": mark.tally.errors, "probes": mark.probes}
    except (SwitchedBack, SwitchedBackOnSignal, SwitchedBackAfterBug):
        assert mark is not None
        with ctx.guard.critical():
            record_store(ctx).write(before.without_color(mark.color))
        raise


def _left_running(ctx: Context, old: Optional[str]) -> None:
    if old is not None:
        log.warning("==> the new release is live; %s left running, so `rollback` is instant",
                    ctx.settings.container_name(old))


def point_preview(ctx: Context, color: str) -> None:
    route = preview_route(ctx, color)
    phase("pointing the preview at %s (%s)", color, shown(route))
    with timed(ctx, "preview"), ctx.guard.critical():
        ctx.switch.route_to(PREVIEW, route)


def preview_follows(ctx: Context, color: str, old: Optional[str]) -> None:
    """After the live switch, so the preview's own test + reload never delays live traffic."""
    if not ctx.settings.nginx_preview_include:
        return
    try:
        point_preview(ctx, color)
    except Interrupted:
        _left_running(ctx, old)
        raise
    except PipelineError as exc:
        log.warning("    the preview still points at the previous release: %s", exc)


def retire(ctx: Context, old: Optional[str], new: str, before: ReleaseRecord,
           preview_before: Optional[Route] = None) -> None:
    """Drain, take one last look at the new color, then stop the old color gracefully. It is kept
    (stopped) for rollback.

    The wait is at least the switch's settle time, so "done" means nginx serves the new color.
    The last look: the old color is never left out of traffic while the new one is not running
    and answering health (a release that died right after its gate, with nothing else watching
    it, e.g. VERIFY_SECONDS=0). If it is not, traffic goes back to the old color and the run
    ends as a failed verification does (`before`: the record as it was before the switch).
    """
    s = ctx.settings
    wait = max(s.drain_seconds, ctx.switch.settle_seconds)
    try:
        old_fact = ctx.engine.container(old) if old is not None else None
    except OutsideFailure as exc:
        # The new release is live: an engine that fails now must not fail the deploy.
        log.warning("==> the new release is live, but %s: the old one may be left running", exc)
        return
    if old is None or old_fact is None:
        ctx.clock.sleep(ctx.switch.settle_seconds)
        return
    try:
        if s.keep_previous_running:
            ctx.clock.sleep(ctx.switch.settle_seconds)
        else:
            phase("draining %s for %gs", s.container_name(old), wait)
            with timed(ctx, "drain"):
                ctx.clock.sleep(wait)
        with timed(ctx, "last look"):
            serving, reason = last_look(ctx, new, old) if old_fact.running else (True, "")
    except Interrupted:
        _left_running(ctx, old)
        raise
    if serving is False:
        _back_after_last_look(ctx, new, old, before, preview_before, reason)
    if serving is None:
        return   # cannot tell: the old color keeps running
    if s.keep_previous_running:
        phase("%s kept running out of traffic (KEEP_PREVIOUS_RUNNING): `rollback` is a switch only",
              s.container_name(old))
        return
    phase("stopping %s (grace %gs); kept for rollback", s.container_name(old), s.stop_timeout)
    with timed(ctx, "stop old"), ctx.guard.critical():
        try:
            ctx.engine.stop(old)
        except OutsideFailure as exc:
            log.warning("==> the new release is live, but %s; it keeps running (the next deploy replaces it)", exc)


def last_look(ctx: Context, new: str, old: str) -> Tuple[Optional[bool], str]:
    """Right before the old color (running) is stopped or left out of traffic for good: is the new
    one still running and answering health (a probe, retried once)? (True, ""): go on.
    (False, why): it is not. (None, why): it cannot be told (the engine or the probe's route
    failed), so the old color must keep running."""
    s = ctx.settings
    try:
        problem, probe_all = ready_checks(ctx, new)
        reason = gate.stay_ready(0, s.health_interval, problem, probe_all, ctx.clock)
    except (OutsideFailure, PreflightError) as exc:
        log.warning("==> cannot look at %s before stopping %s (%s): %s left running", s.container_name(new),
                    s.container_name(old), exc, s.container_name(old))
        return None, str(exc)
    return (True, "") if reason is None else (False, reason)


def _back_after_last_look(ctx: Context, new: str, old: str, before: ReleaseRecord,
                          preview_before: Optional[Route], reason: str) -> None:
    """The new release stopped serving after the switch: the old color (still running) takes
    traffic back through the same switch as after a failed verification, the new one is removed
    (scaled to 0), and the record is put back as before the switch. Raises SwitchedBack (exit 1)."""
    s = ctx.settings
    log.error("==> %s is not serving (%s); %s still runs", s.container_name(new), reason, s.container_name(old))
    why = f"{reason}, in the last look before stopping {s.container_name(old)}"
    message = f"switched back to {old}: {why}"
    try:
        with ctx.guard.critical():
            verify.switch_back(ctx, new, old, why)
            record_store(ctx).write(before.without_color(new))
    except Interrupted as exc:   # held through the switch back, which is done
        raise SwitchedBackOnSignal(exc.signum, message) from exc
    _preview_back(ctx, new, preview_before)
    raise SwitchedBack(message)


def clean_images(ctx: Context, record: ReleaseRecord) -> None:
    """Release images past the newest KEEP_RELEASES, never one a container uses, nor the live,
    previous or staged release's: rollback recreates from them when their container is gone."""
    s = ctx.settings
    try:
        protected = {fact.image for fact in ctx.engine.containers().values()}
        images = ctx.engine.release_images()
    except OutsideFailure as exc:
        log.warning("    old release images not cleaned up: %s", exc)
        return
    protected |= {r.image for r in (record.live, record.previous, record.staged) if r is not None}
    for ref in decide.images_to_remove(images, s.keep_releases, protected):
        log.info("    removing old release image %s", ref)
        ctx.engine.remove_image(ref)
    ctx.engine.prune_dangling()


@contextmanager
def abandoned_on_failure(ctx: Context, color: str, facts: Facts, record: ReleaseRecord) -> Iterator[None]:
    """Around everything from starting the new container to the live switch."""
    try:
        yield
    except InterruptedAfterSwitch:
        # Not a failure of the release: it serves now. The old one is left running (not drained,
        # not stopped), and the record says so: `rollback` is a switch only.
        _left_running(ctx, facts.choice.live)
        raise
    except SwitchIncomplete:
        # The switch could not be undone: nginx may serve the new release (or will, once it
        # reloads). Its message says what to run; the container stays meanwhile.
        log.error("==> leaving %s running: nginx may serve it", ctx.settings.container_name(color))
        raise
    except BaseException:
        with ctx.guard.critical():
            _abandon(ctx, color, facts.preview_address, record)
        raise


def _abandon(ctx: Context, color: str, preview_before: Optional[Route], record: ReleaseRecord) -> None:
    """After a failed deploy: no container of the failed release left running, unless nginx may
    serve it, so nginx always has something to serve."""
    s = ctx.settings
    if _nginx_may_serve(ctx, color):
        return
    log.error("==> %s; nginx still serves what it served before", ctx.engine.discarding(color))
    try:
        ctx.engine.discard(color)
    except OutsideFailure as exc:
        log.error("    could not remove %s (%s); the next deploy replaces it", s.container_name(color), exc)
    if record.without_color(color) != record:
        try:
            record_store(ctx).write(record.without_color(color))
        except OutsideFailure as exc:
            log.warning("    the release record still names %s as staged (%s); the next run rebuilds it",
                        s.container_name(color), exc)
    _preview_back(ctx, color, preview_before)


def _preview_back(ctx: Context, color: str, preview_before: Optional[Route]) -> None:
    """The preview, if it points at `color` (removed), back where it pointed before."""
    try:
        if ctx.settings.nginx_preview_include and ctx.engine.color_at(ctx.switch.current(PREVIEW)) == color \
                and preview_before:
            ctx.switch.route_to(PREVIEW, preview_before)
    except PipelineError as exc:
        log.warning("    could not point the preview back at %s: %s", shown(preview_before), exc)


def _nginx_may_serve(ctx: Context, color: str) -> bool:
    """True (and said) when the switch says the live route goes to this color, or cannot say:
    its container must then stay. A switch that failed half-way raises SwitchIncomplete, which
    the flows honour first; this is the last look before removing anything (in live mode it asks
    nginx's admin, not the include, which nginx may not serve)."""
    try:
        serving = ctx.engine.color_at(ctx.switch.current(LIVE)) == color
    except PipelineError as exc:
        log.error("==> leaving %s running: cannot tell whether nginx serves it (%s)",
                  ctx.settings.container_name(color), exc)
        return True
    if serving:
        log.error("==> leaving %s running: nginx's live route goes to it", ctx.settings.container_name(color))
    return serving


# -- flows -----------------------------------------------------------------------------------------

def new_release(ctx: Context, run: Run, doing: str) -> Tuple[Facts, ReleaseRecord, Release]:
    """What a run that releases does first: pick the idle color from the facts, refuse a version
    on record, [the pre-deploy hook,] build the release for that color (not started yet)."""
    facts, record = facts_and_record(ctx)
    log.info("    live: %s; %s %s (%s)", facts.choice.live or "none", doing, facts.choice.target,
             facts.choice.reason)
    check_version_is_new(ctx, facts, record)
    before_changes(ctx, run, ctx.settings.app_version or "", record.live, facts.choice.target)
    return facts, record, build_release(ctx, facts.choice.target)


def proven_ready(ctx: Context, color: str) -> None:
    """Health, [smoke,] [min ready]: the color may take traffic now."""
    wait_healthy(ctx, color)
    smoke_test(ctx, color)
    hold_ready(ctx, color)


def brought_up(ctx: Context, release: Release) -> None:
    """Start the new release on its color, then prove it ready (nothing switched yet)."""
    start(ctx, release)
    proven_ready(ctx, release.color)


def deploy(ctx: Context) -> Outcome:
    """Release `APP_VERSION` (settled before the run: git sha or UTC time) and make it live."""
    with preflight(ctx, "deploy") as run:
        facts, record, release = new_release(ctx, run, "deploying to")
        run_release_phase(ctx, release)
        live, target = facts.choice.live, release.color
        with abandoned_on_failure(ctx, target, facts, record):
            brought_up(ctx, release)
            mark = verify.baseline(ctx, target, live)
            before = record
            record = switch_live(ctx, release, record)
        verdict = verified(ctx, mark, before)
        preview_follows(ctx, target, live)
        retire(ctx, live, target, before, facts.preview_address)
        clean_images(ctx, record)
        return run.done(Outcome("deploy", release.version, target,
                                f"{release.version} live on {target}" + _verified(verdict), release))


def stage(ctx: Context) -> Outcome:
    """`deploy --no-promote`: build, start, health, the preview route; live traffic untouched.
    The release is recorded as staged: `promote` makes it live, nothing else does."""
    s = ctx.settings
    with preflight(ctx, "stage") as run:
        facts, record, release = new_release(ctx, run, "staging on")
        run_release_phase(ctx, release)
        live, target = facts.choice.live, release.color
        with abandoned_on_failure(ctx, target, facts, record):
            brought_up(ctx, release)
            if s.nginx_preview_include:
                point_preview(ctx, target)
            with ctx.guard.critical():
                record_store(ctx).write(record.with_staged(release))
        if s.nginx_preview_include:
            ctx.clock.sleep(ctx.switch.settle_seconds)   # "staged" means the preview serves it
        phase("%s staged on %s; live traffic still on %s. Run `promote` to switch.", release.version, target,
              live or "nothing")
        return run.done(Outcome("stage", release.version, target, f"staged on {target}", release))


def promote(ctx: Context) -> Outcome:
    """Make the staged release live: health again, [smoke,] switch, verify, drain and stop the old one."""
    with preflight(ctx, "promote") as run:
        facts, record = facts_and_record(ctx)
        live = facts.choice.live
        staged = releases.staged_release(record, live, facts.containers)
        log.info("    promoting %s from %s", staged, live or "nothing")
        before_changes(ctx, run, staged.version, record.live, staged.color)
        proven_ready(ctx, staged.color)
        mark = verify.baseline(ctx, staged.color, live)
        before = record
        record = switch_live(ctx, staged, record)
        verdict = verified(ctx, mark, before)
        retire(ctx, live, staged.color, before)
        clean_images(ctx, record)
        return run.done(Outcome("promote", staged.version, staged.color,
                                f"{staged.version} live on {staged.color}" + _verified(verdict), staged))


def rollback(ctx: Context, to_version: Optional[str] = None) -> Outcome:
    """Make the previously live release (or `to_version`) live again on the idle color: its kept
    container if it is still there, else a new one from its kept image."""
    s = ctx.settings
    with preflight(ctx, "rollback") as run:
        facts, record = facts_and_record(ctx)
        live = facts.choice.live
        plan = releases.plan_rollback(record, live, facts.containers, ctx.engine.release_images, to_version)
        target = plan.release
        log.info("    rolling back from %s to %s", record.live, target)
        before_changes(ctx, run, target.version, record.live, target.color)
        try:
            if plan.how == "start":
                phase("starting kept container %s", s.container_name(target.color))
                with timed(ctx, "start"), ctx.guard.critical():
                    ctx.engine.start(target.color)
            elif plan.how == "recreate":
                replaced = f", replacing {plan.replaces}" if plan.replaces else ""
                phase("recreating %s from its kept image %s%s", s.container_name(target.color), target.image,
                      replaced)
                with timed(ctx, "start"), ctx.guard.critical():
                    ctx.engine.run(target.color, target.image, target.version)
            wait_healthy(ctx, target.color)
            if plan.how != "running":   # one found running has been up since before this run
                hold_ready(ctx, target.color)
            before = record
            record = switch_live(ctx, target, record)
        except InterruptedAfterSwitch:
            _left_running(ctx, live)   # the release brought back serves now
            raise
        except SwitchIncomplete:
            # The switch could not be undone: nginx may serve the release brought back, which
            # stays as it is; the message says what to run.
            log.error("==> leaving %s running: nginx may serve it", s.container_name(target.color))
            raise
        except BaseException:
            with ctx.guard.critical():
                _undo_bring_back(ctx, plan, live, record)
            raise
        retire(ctx, live, target.color, before)
        return run.done(Outcome("rollback", target.version, target.color,
                                 f"{target.version} live on {target.color} again", target))


def release_phase(ctx: Context, version: Optional[str] = None) -> Outcome:
    """`release-phase [--version V]`: RELEASE_COMMAND again, by hand, for the live release (or a
    release on record whose image is kept), as a deploy runs it; nothing is started or switched.
    `promote` and `rollback` never run it: code goes back, a schema does not."""
    with preflight(ctx, "release-phase") as run:
        facts, record = facts_and_record(ctx)
        known = [r for r in (record.live, record.staged, record.previous) if r is not None]
        wanted = [r for r in known if r.version == version] if version else known[:1] if record.live else []
        if not wanted:
            on_record = ", ".join(str(r) for r in known) or "none"
            raise NothingToDo(f"no release {version} on record (live, staged or previous: {on_record})" if version
                              else "nothing is live: name the release with --version")
        release = wanted[0]
        if release.image not in ctx.engine.release_images():
            raise NothingToDo(f"the image of {release} ({release.image}) is no longer kept")
        run_release_phase(ctx, release)
        return run.done(Outcome("release-phase", release.version, release.color,
                                f"release phase of {release.version} done"))


def _undo_bring_back(ctx: Context, plan: releases.RollbackPlan, live: Optional[str], record: ReleaseRecord) -> None:
    name = ctx.settings.container_name(plan.color)
    if plan.how not in ("start", "recreate") or _nginx_may_serve(ctx, plan.color):
        return
    try:
        if plan.how == "start":
            log.error("==> stopping %s again; nginx still serves %s", name, live)
            ctx.engine.stop(plan.color)
        else:
            log.error("==> removing %s; nginx still serves %s", name, live)
            ctx.engine.discard(plan.color)
            if record.without_color(plan.color) != record:
                record_store(ctx).write(record.without_color(plan.color))
    except OutsideFailure as exc:
        log.error("    could not put %s back as it was (%s); the next deploy replaces it", name, exc)


def history(ctx: Context) -> List[Report]:
    """Every history entry, marked: `live` (its release serves now) and `rollback_target`
    (`rollback --to` its version works: it was live, and its container or image is kept)."""
    entries = run_history(ctx).entries()
    facts = _settled(ctx, _report_facts(ctx))
    record = recorded(ctx, facts)
    targets = {r.version for r in releases.rollback_targets(record, facts.choice.live, facts.containers,
                                                            ctx.engine.release_images())}
    live_version = record.live.version if record.live else None
    out = []
    for entry in entries:
        # "live unverified": it failed verification and could not be switched back, so it went live.
        release = entry.result in ("ok", LiveUnverified.history_result) and entry.action in releases.LIVE_ACTIONS
        out.append({**asdict(entry), "live": release and entry.version == live_version,
                    "rollback_target": release and entry.version in targets})
    return out


def lock_command(hosts: Sequence[NginxHost], settings: Settings, command: str) -> str:
    """`lock status` / `lock release`: who holds the deploy lock (on each nginx host, when there
    are several); release it by hand (on every one)."""
    lock = LockSet.on(hosts, str(settings.lock_path()))
    return lock.status() if command == "status" else lock.force_release()


def _report_facts(ctx: Context) -> Facts:
    """For reports: when nginx's admin does not answer, what the include files say. Nothing is
    probed: the record, not blue's health, tells a staged first release from a live one."""
    includes = IncludeFiles(ctx.host, ctx.settings.switch)
    try:
        return gather(ctx, probe=False)
    except SwitchUnavailable as exc:
        log.warning("%s; reporting what the include files say", exc)
        return gather(ctx, lambda route: decide.parse_include(includes.read(route)) or None, probe=False)


def describe_failure(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, (PipelineError, Interrupted)) else f"{type(exc).__name__}: {exc}"


def status(ctx: Context, probe: bool = True) -> Report:
    """What nginx serves, what runs of each color and how it answers, what the record says.
    Changes nothing. `probe=False` (or routes the probes may not take): nothing is probed."""
    s = ctx.settings
    includes = IncludeFiles(ctx.host, s.switch)
    probe_problem = _probe_problem(ctx) if probe else None
    probe = probe and probe_problem is None
    facts, switch_problem, unknown = _status_facts(ctx, includes, probe)
    include_address = _written(includes, LIVE)
    live = facts.choice.live if facts.live_address and not unknown else None
    colors = _color_rows(ctx, facts, probe_problem, _health_report(ctx) if probe else None)
    hosts = _host_rows(ctx, facts, switch_problem, colors)
    return {
        "app": s.app_name,
        "live_color": live,
        "live_version": colors[live]["version"] if live else None,
        "include": {"path": str(s.nginx_include), "points_at": shown(include_address) if include_address else None},
        "preview": shown(facts.preview_address) if facts.preview_address else None,
        **_with_maintenance_since(ctx, status_fields(ctx.switch)),
        "switch_problem": switch_problem,
        "probe_problem": probe_problem,
        "colors": colors,
        "nginx_host": ctx.host.description,
        "nginx_hosts": hosts,   # what each nginx host serves (NGINX_HOSTS, in order)
        "hosts_disagree": _disagree(hosts),
        "settings": s.public(),   # the effective settings, secrets masked
        "releases": _status_record(ctx, facts, unknown),
    }


def _with_maintenance_since(ctx: Context, fields: Dict[str, Any]) -> Dict[str, Any]:
    """While maintenance mode is on: since when, by whom and with what message (the history's
    last `maintenance on`)."""
    state = fields["maintenance"]
    if state.get("on"):
        entries = History(ctx.host, str(ctx.settings.history_path())).entries()
        last = next((e for e in reversed(entries) if e.action == "maintenance on" and e.result == "ok"), None)
        if last is not None:
            fields = {**fields, "maintenance": {**state, "since": last.time, "by": last.who, "message": last.message}}
    return fields


def _host_rows(ctx: Context, facts: Facts, switch_problem: Optional[str],
               colors: Dict[str, Dict[str, object]]) -> List[Report]:
    """What each nginx host serves, asked of its own switch; with one host, what `facts` say."""
    rows = []
    for host, switch in zip(ctx.hosts, ctx.switches):
        route: Optional[Route]
        if len(ctx.hosts) == 1:
            route, problem = facts.live_address, switch_problem
        else:
            try:
                route, problem = switch.current(LIVE), None
            except PipelineError as exc:   # its admin, its include not loaded, the host itself
                route, problem = getattr(exc, "address", None), str(exc)
        color = ctx.engine.color_at(route) if route else None
        rows.append({"host": host.description, "points_at": shown(route) if route else None, "color": color,
                     "version": colors[color]["version"] if color else None, "problem": problem})
    return rows


def _disagree(hosts: Sequence[Report]) -> bool:
    """Whether the nginx hosts serve different colors (or one cannot say what it serves)."""
    return len({(row["color"], row["problem"] is None) for row in hosts}) > 1


def _written(includes: IncludeFiles, route: str) -> Optional[Route]:
    """Where a route's include file points, if anywhere."""
    return decide.parse_include(includes.read(route)) or None


def _probe_problem(ctx: Context) -> Optional[str]:
    """Why nothing may be probed (a route to a color's address the probes may not take), if so."""
    if not ctx.engine.network_exists():
        return None
    try:
        check_probe_routes(ctx)
    except RouteRefused as exc:
        log.warning("%s", exc)
        return str(exc)
    return None


def _status_facts(ctx: Context, includes: IncludeFiles, probe: bool) -> Tuple[Facts, Optional[str], bool]:
    """The facts; why nginx did not say what it serves (None if it did); and whether which color
    it serves is unknown."""
    try:
        return gather(ctx, probe=probe), None, False
    except SwitchUnavailable as exc:
        # Status is what an operator runs when something is wrong: say what the include says
        # rather than nothing at all, and say plainly that nginx itself did not answer.
        # Except when the include was written and nginx not seen loading it (a run killed between
        # the two): nginx serves what it names or what it loaded before, and nothing here tells
        # which. No live color then, rather than a guess; the next deploy settles it.
        unknown = isinstance(exc, IncludeNotLoaded)
        log.warning("%s; %s", exc, "which color nginx serves is not known" if unknown
                    else "reporting what the include files say")
        return gather(ctx, lambda route: _written(includes, route), probe=probe), str(exc), unknown


def _color_rows(ctx: Context, facts: Facts, probe_problem: Optional[str],
                report: Optional[HealthReport]) -> Dict[str, Dict[str, object]]:
    """Each color: its container, state and version, and the target's own fields (where it
    answers, its health)."""
    s = ctx.settings
    colors = {}
    for color in COLORS:
        fact = facts.containers.get(color)
        entry: Dict[str, object] = {"container": s.container_name(color), "ip": None, "state": "absent",
                                    "version": None, "health": None}
        entry.update(ctx.engine.status_row(color, None if probe_problem else fact, report,
                                           ctx.prober.route_to if report is not None else None))
        if fact is not None:
            entry.update(state=fact.status, version=fact.version)
            if probe_problem:
                entry["health"] = "not probed (see probe_problem)"
        colors[color] = entry
    return colors


def _status_record(ctx: Context, facts: Facts, unknown: bool) -> Dict[str, Optional[Report]]:
    """The release record checked against the facts; with no known live color, as written
    (checking it needs what nginx serves)."""
    if unknown:
        return _record_report(record_store(ctx).read()[0] or releases.ReleaseRecord())
    return _record_report(recorded(ctx, _settled(ctx, facts)))


def _health_report(ctx: Context) -> HealthReport:
    """How `status` says a health URL answers: one probe, through the context's prober."""
    def report(url: str) -> str:
        try:
            return gate.probe(ctx.prober, url, 2.0)
        except gate.NotHealthyYet as exc:
            return f"unhealthy: {exc.last}"
    return report


def _record_report(record: ReleaseRecord) -> Dict[str, Optional[Report]]:
    return {name: asdict(release) if release else None
            for name, release in (("live", record.live), ("previous", record.previous), ("staged", record.staged))}
