"""The deploy, as the runbook tells it.

    preflight -> build -> pick the idle color -> start it -> health -> switch -> drain -> stop old

Facts are gathered first, the decision is made by pure functions (decide.py), then the world is
touched. Every failure before the switch leaves traffic where it was and removes the new container;
a failed switch restores the include (switch.py). `promote` and `rollback` reuse the same steps.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

from . import build, decide, health
from .decide import Address, ContainerFact
from .engine import Engine
from .errors import ContainerExited, Interrupted, NothingToDo, OutsideFailure, PipelineError
from .nginx_host import NginxHost
from .settings import Settings
from .signals import SignalGuard
from .switch import LIVE, PREVIEW, IncludeFiles, SwitchUnavailable, TrafficSwitch

log = logging.getLogger("pipeline")


@dataclass
class Context:
    """The outside things a flow works with, handed in (never globals)."""

    settings: Settings
    engine: Engine
    host: NginxHost
    switch: TrafficSwitch
    cwd: Path
    environ: Mapping[str, str]
    guard: SignalGuard = field(default_factory=SignalGuard)
    sleep: Callable[[float], None] = time.sleep
    # Where health probes run (the nginx host's side); None: built from `host` and the settings.
    prober: Optional[health.Prober] = None

    def __post_init__(self) -> None:
        if self.prober is None:
            self.prober = make_prober(self.host, self.settings)


def make_prober(host: NginxHost, s: Settings) -> health.Prober:
    hint = (f"DEPLOY_NETWORK={s.deploy_network} (DEPLOY_SUBNET={s.deploy_subnet}) must be a docker"
            f" bridge on the machine nginx runs on: point DOCKER_HOST at that machine's engine")
    return health.Prober.for_host(host, s.remote, hint)


@dataclass(frozen=True)
class Facts:
    live_address: Optional[Address]
    preview_address: Optional[Address]
    containers: Dict[str, ContainerFact]
    choice: decide.ColorChoice


@dataclass(frozen=True)
class Outcome:
    action: str
    version: str
    color: str
    message: str


def phase(message: str, *args: object) -> None:
    log.info("==> " + message, *args)


# -- facts -----------------------------------------------------------------------------------------

def gather(ctx: Context, current: Optional[Callable[[str], Optional[Address]]] = None,
           probe: bool = True) -> Facts:
    """What the flows decide from. `current` says where a route points (default: the switch).
    `probe=False`: blue is not probed (status, when probes are refused), so it counts as not alive."""
    s = ctx.settings
    current = current or ctx.switch.current
    live_address = current(LIVE)
    preview_address = current(PREVIEW) if s.nginx_preview_include else None
    containers = ctx.engine.containers()
    include_color = decide.color_at(live_address, s.color_ips)
    blue_alive = None
    if probe and include_color is None and ctx.engine.holds_address("blue"):
        # The seed's rule, kept for a host with no include yet: probe blue, but only because a
        # container of ours holds its address (checked just above).
        try:
            health.probe(ctx.prober, health_url(s, "blue"), 2.0)
            blue_alive = True
        except health.NotHealthyYet:
            blue_alive = False
    running = frozenset(color for color, fact in containers.items() if fact.running)
    choice = decide.choose_colors(include_color, blue_alive, running)
    return Facts(live_address, preview_address, containers, choice)


def preflight(ctx: Context) -> None:
    phase("preflight")
    ctx.switch.check()
    if ctx.engine.network_exists():
        check_probe_routes(ctx)


def check_probe_routes(ctx: Context) -> None:
    """Before any probe: both colors' addresses are reached from where probes run (the nginx
    host's side) over a local interface, never through a gateway (exit 3 otherwise)."""
    for color in ("blue", "green"):
        ctx.prober.check_route(ctx.settings.ip_of(color))


def health_url(s: Settings, color: str) -> str:
    return f"http://{s.ip_of(color)}:{s.app_port}{s.health_path}"


def address_of(s: Settings, color: str) -> Address:
    return Address(s.ip_of(color), s.app_port)


# -- steps -----------------------------------------------------------------------------------------

def wait_healthy(ctx: Context, color: str) -> None:
    s = ctx.settings
    name = s.container_name(color)

    def check_alive() -> None:
        fact = ctx.engine.container(color)
        if fact is None:
            raise ContainerExited(name, "removed")
        if not fact.running or fact.restart_count > 0:
            state = fact.status if fact.restart_count == 0 else f"{fact.status}, restarted {fact.restart_count}x"
            raise ContainerExited(name, state, ctx.engine.logs_tail(color))
        if not ctx.engine.at_fixed_ip(fact):
            raise ContainerExited(name, f"does not hold {s.ip_of(color)} on {s.deploy_network}")

    url = health_url(s, color)
    phase("waiting for %s to answer %s (every %gs, up to %gs)", name, url, s.health_interval, s.health_timeout)
    health.wait_healthy(url, s.health_interval, s.health_timeout, check_alive, ctx.prober,
                        logs=lambda: ctx.engine.logs_tail(color))


def switch_live(ctx: Context, color: str) -> None:
    s = ctx.settings
    phase("switching nginx to %s (%s) [%s]", color, address_of(s, color), ctx.switch.mode)
    with ctx.guard.critical():
        ctx.switch.route_to(LIVE, address_of(s, color))


def _left_running(ctx: Context, old: Optional[str]) -> None:
    if old is not None:
        log.warning("==> the new release is live; %s left running, so `rollback` is instant",
                    ctx.settings.container_name(old))


def point_preview(ctx: Context, color: str) -> None:
    address = address_of(ctx.settings, color)
    phase("pointing the preview at %s (%s)", color, address)
    with ctx.guard.critical():
        ctx.switch.route_to(PREVIEW, address)


def retire(ctx: Context, old: Optional[str]) -> None:
    """Drain, then stop the old color gracefully. It is kept (stopped) for rollback.

    The wait is at least the switch's settle time, so "done" means nginx serves the new color.
    """
    s = ctx.settings
    wait = max(s.drain_seconds, ctx.switch.settle_seconds)
    try:
        old_exists = old is not None and ctx.engine.container(old) is not None
    except OutsideFailure as exc:
        # The new release is live: an engine that fails now must not fail the deploy.
        log.warning("==> the new release is live, but %s: the old one may be left running", exc)
        return
    if old is None or not old_exists:
        ctx.sleep(ctx.switch.settle_seconds)
        return
    phase("draining %s for %gs", s.container_name(old), wait)
    try:
        ctx.sleep(wait)
    except Interrupted:
        _left_running(ctx, old)
        raise
    phase("stopping %s (grace %gs); kept for rollback", s.container_name(old), s.stop_timeout)
    with ctx.guard.critical():
        try:
            ctx.engine.stop(old)
        except OutsideFailure as exc:
            log.warning("==> the new release is live, but %s; it keeps running (the next deploy replaces it)", exc)


def clean_images(ctx: Context) -> None:
    s = ctx.settings
    try:
        protected = {fact.image for fact in ctx.engine.containers().values()}
        images = ctx.engine.release_images()
    except OutsideFailure as exc:
        log.warning("    old release images not cleaned up: %s", exc)
        return
    for ref in decide.images_to_remove(images, s.keep_releases, protected):
        log.info("    removing old release image %s", ref)
        ctx.engine.remove_image(ref)
    ctx.engine.prune_dangling()


# -- flows -----------------------------------------------------------------------------------------

def deploy(ctx: Context, promote: bool = True) -> Outcome:
    """Release `APP_VERSION`; the caller settles its default first (cli: git sha or UTC time),
    so that the lock and history name the release as well."""
    s = ctx.settings
    assert s.app_version, "the caller settles the version before the deploy"

    preflight(ctx)
    if s.registry:
        ctx.engine.check_registry()
    if ctx.engine.ensure_network():
        log.info("    created docker network %s (%s, gateway %s)", s.deploy_network, s.deploy_subnet, s.deploy_gateway)
        try:
            check_probe_routes(ctx)
        except health.RouteRefused:
            ctx.engine.remove_network()   # ours, just made, empty: nothing changed
            raise
    facts = gather(ctx)
    live, target = facts.choice.live, facts.choice.target
    log.info("    live: %s; deploying to %s (%s)", live or "none", target, facts.choice.reason)

    version = s.app_version
    image = s.image_ref(version)
    if s.build_command:
        phase("building: %s", " ".join(s.build_command))
        build.run_build(s.build_command, ctx.cwd, ctx.environ)
    phase("building image %s", image)
    ctx.engine.build_image(ctx.cwd, image, version)
    if s.registry:
        phase("pushing %s to %s and pulling it back", image, s.registry)
        ctx.engine.push_and_pull(image)

    phase("starting %s (%s) at %s", s.container_name(target), version, s.ip_of(target))
    preview_before = facts.preview_address
    try:
        with ctx.guard.critical():
            ctx.engine.run(target, image, version)
        wait_healthy(ctx, target)
        if promote:
            switch_live(ctx, target)
        elif s.nginx_preview_include:
            point_preview(ctx, target)
    except BaseException:
        with ctx.guard.critical():
            _abandon(ctx, target, preview_before)
        raise

    if not promote:
        if s.nginx_preview_include:
            ctx.sleep(ctx.switch.settle_seconds)   # "staged" means the preview serves it
        phase("%s staged on %s; live traffic still on %s. Run `promote` to switch.", version, target, live or "nothing")
        return Outcome("stage", version, target, f"staged on {target}")
    if s.nginx_preview_include:
        # After the live switch, so the preview's own test + reload never delays live traffic.
        try:
            point_preview(ctx, target)
        except Interrupted:
            _left_running(ctx, live)
            raise
        except PipelineError as exc:
            log.warning("    the preview still points at the previous release: %s", exc)
    retire(ctx, live)
    clean_images(ctx)
    return Outcome("deploy", version, target, f"{version} live on {target}")


def _abandon(ctx: Context, color: str, preview_before: Optional[Address]) -> None:
    """After a failed deploy: no container of the failed release left running, unless the include
    may name it (a switch that could not be undone), so nginx always has something to serve."""
    s = ctx.settings
    if _include_may_name(ctx, color):
        return
    log.error("==> removing %s; nginx still serves what it served before", s.container_name(color))
    try:
        ctx.engine.remove(color)
    except OutsideFailure as exc:
        log.error("    could not remove %s (%s); the next deploy replaces it", s.container_name(color), exc)
    try:
        if s.nginx_preview_include and ctx.switch.current(PREVIEW) == address_of(s, color) and preview_before:
            ctx.switch.route_to(PREVIEW, preview_before)
    except PipelineError as exc:
        log.warning("    could not point the preview back at %s: %s", preview_before, exc)


def _include_may_name(ctx: Context, color: str) -> bool:
    """True (and said) when the live include names this color or cannot be read: its container
    must then stay, or nginx's next reload would send traffic nowhere."""
    try:
        named = decide.parse_include(IncludeFiles(ctx.host, ctx.settings).read(LIVE)) == address_of(ctx.settings, color)
    except OutsideFailure as exc:
        log.error("==> leaving %s running: cannot read the live include (%s)", ctx.settings.container_name(color), exc)
        return True
    if named:
        log.error("==> leaving %s running: the live include names it", ctx.settings.container_name(color))
    return named


def promote(ctx: Context) -> Outcome:
    s = ctx.settings
    preflight(ctx)
    facts = gather(ctx)
    preview_color = decide.color_at(facts.preview_address, s.color_ips)
    staged = decide.staged_release(facts.choice.live, facts.containers, preview_color)
    if staged is None:
        raise NothingToDo("nothing is staged: run `deploy --no-promote` first"
                          f" (live: {facts.choice.live or 'none'})")
    log.info("    promoting %s (%s) from %s", staged.version, staged.color, facts.choice.live or "nothing")
    wait_healthy(ctx, staged.color)
    switch_live(ctx, staged.color)
    retire(ctx, facts.choice.live)
    clean_images(ctx)
    return Outcome("promote", staged.version or "", staged.color, f"{staged.version} live on {staged.color}")


def rollback(ctx: Context) -> Outcome:
    s = ctx.settings
    preflight(ctx)
    facts = gather(ctx)
    live = facts.choice.live
    target = decide.rollback_target(live, facts.containers)
    if live is None or target is None:
        raise NothingToDo(f"no previous release to roll back to (live: {live or 'none'}, "
                          f"no {s.container_name(decide.other(live)) if live else 'kept'} container)")
    live_version = facts.containers[live].version if live in facts.containers else "?"
    log.info("    rolling back from %s (%s) to %s (%s)", live_version, live, target.version, target.color)
    was_running = target.running
    try:
        if not was_running:
            phase("starting kept container %s", target.name)
            with ctx.guard.critical():
                ctx.engine.start(target.color)
        wait_healthy(ctx, target.color)
        switch_live(ctx, target.color)
    except BaseException:
        if not was_running and not _include_may_name(ctx, target.color):
            with ctx.guard.critical():
                log.error("==> stopping %s again; nginx still serves %s", target.name, live)
                try:
                    ctx.engine.stop(target.color)
                except OutsideFailure as exc:
                    log.error("    could not stop %s (%s)", target.name, exc)
        raise
    retire(ctx, live)
    return Outcome("rollback", target.version or "", target.color, f"{target.version} live on {target.color} again")


def describe_failure(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"


def status(ctx: Context, probe: bool = True) -> dict:
    s = ctx.settings
    includes = IncludeFiles(ctx.host, s)

    def written(route: str) -> Optional[Address]:
        return decide.parse_include(includes.read(route))

    switch_problem = probe_problem = None
    if probe and ctx.engine.network_exists():
        try:
            check_probe_routes(ctx)
        except health.RouteRefused as exc:
            probe, probe_problem = False, str(exc)
            log.warning("%s", exc)
    try:
        facts = gather(ctx, probe=probe)
    except SwitchUnavailable as exc:
        # Status is what an operator runs when something is wrong: say what the include says
        # rather than nothing at all, and say plainly that nginx itself did not answer.
        switch_problem = str(exc)
        log.warning("%s; reporting what the include files say", exc)
        facts = gather(ctx, written, probe=probe)
    include_address = written(LIVE)
    live = facts.choice.live if facts.live_address else None
    colors = {}
    for color in ("blue", "green"):
        fact = facts.containers.get(color)
        entry: dict = {"container": s.container_name(color), "ip": s.ip_of(color), "state": "absent",
                       "version": None, "health": None}
        if fact is not None:
            entry.update(state=fact.status, version=fact.version)
            if probe_problem:
                entry["health"] = "not probed (see probe_problem)"
            elif probe and ctx.engine.holds_address(color):
                try:
                    entry["health"] = health.probe(ctx.prober, health_url(s, color), 2.0)
                except health.NotHealthyYet as exc:
                    entry["health"] = f"unhealthy: {exc.last}"
        colors[color] = entry
    return {
        "app": s.app_name,
        "live_color": live,
        "live_version": colors[live]["version"] if live else None,
        "include": {"path": str(s.nginx_include), "points_at": str(include_address) if include_address else None},
        "preview": str(facts.preview_address) if facts.preview_address else None,
        "switch_mode": ctx.switch.mode,
        "switch": ctx.switch.describe(),
        "switch_problem": switch_problem,
        "probe_problem": probe_problem,
        "colors": colors,
        "nginx_host": ctx.host.description,
        "settings": s.public(),   # the effective settings, secrets masked
    }
