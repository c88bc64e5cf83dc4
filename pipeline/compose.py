"""The composition root: where the program's parts are chosen and put together.

Only here are the implementations of an interface named (the switches, the targets), so no module imports its
own implementations back; and only here are the nginx host and the docker engine connected and
handed to a flow as its Context.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

from pipeline.flows.build import default_version
from pipeline.core.clock import SYSTEM, Clock
from pipeline.flows.deploy import Context
from pipeline.adapters.health import Prober
from pipeline.adapters.engine import Engine
from pipeline.adapters.live_switch import LiveSwitch
from pipeline.adapters.nginx_host import Connecting, connect
from pipeline.core.host import NginxHost
from pipeline.core.runlog import RunLog
from pipeline.adapters.reload_switch import ReloadSwitch
from pipeline.core.settings import COLORS, Settings
from pipeline.core.fleet import FleetProber, FleetSwitch
from pipeline.core.gate import Probing
from pipeline.core.switch import TrafficSwitch, TwoPhaseSwitch
from pipeline.core.target import Target


def make_prober(host: NginxHost, settings: Settings, target: Target) -> Prober:
    """Where health probes run: the nginx host's side (over its SSH connection when it is remote).

    TARGET=swarm: only to the nodes' addresses the manager reports, on a color's port, by any
    route the nginx host has to them (nginx proxies to the tasks that way); else over a local
    bridge only (health.py)."""
    if settings.target == "swarm":
        hint = ("nginx proxies to each task at its node's address: the nginx host needs a route to every "
                "swarm node")
        return Prober.for_host(host, settings.nginx.remote, hint, nodes=target.probe_ips,
                               ports={settings.swarm.port_of(color) for color in COLORS})
    network = settings.network
    if network.publish_address is not None:
        # The colors' published ports on that one address, over a route the nginx host has
        # directly on one of its interfaces: never through a gateway.
        hint = (f"PUBLISH_ADDRESS={network.publish_address} must be on a subnet of one of the nginx host's own "
                f"interfaces (no gateway)")
        return Prober.for_host(host, settings.nginx.remote, hint, nodes=lambda: [str(network.publish_address)],
                               ports={settings.swarm.port_of(color) for color in COLORS}, gateway_ok=False)
    hint = (f"DEPLOY_NETWORK={network.deploy_network} (DEPLOY_SUBNET={network.deploy_subnet}) must be a docker"
            f" bridge on the machine nginx runs on: point DOCKER_HOST at that machine's engine")
    return Prober.for_host(host, settings.nginx.remote, hint)


def make_switch(host: NginxHost, settings: Settings) -> TwoPhaseSwitch:
    """SWITCH_MODE's switch, handed its sections: the switch's own, and NETWORK_TIMEOUT."""
    if settings.switch_mode == "live":
        return LiveSwitch(host, settings.switch, settings.network_timeout)
    return ReloadSwitch(host, settings.switch, settings.nginx, settings.network_timeout)


def make_target(settings: Settings, environ: Mapping[str, str], clock: Clock = SYSTEM) -> Target:
    """Where releases run: TARGET=swarm, a swarm manager; else the one docker engine."""
    if settings.target == "swarm":
        # Imported here: the one engine's runs (a rollback: a switch) start without it.
        from pipeline.adapters.swarm import SwarmEngine

        return SwarmEngine.connect(settings.app, settings.swarm, settings.build, settings.runtime,
                                   settings.registry_access, environ, clock)
    return Engine.connect(settings.app, settings.build, settings.network, settings.runtime,
                          settings.registry_access, environ, ports=settings.swarm)


def fleet_switch(hosts: Sequence[NginxHost], switches: Sequence[TwoPhaseSwitch], clock: Clock = SYSTEM) -> TrafficSwitch:
    """What the flows switch with: the one host's switch, or (NGINX_HOSTS) every host's as one."""
    if len(switches) == 1:
        return switches[0]
    return FleetSwitch([(host.description, switch) for host, switch in zip(hosts, switches)], clock)


def fleet_prober(hosts: Sequence[NginxHost], settings: Settings, target: Target) -> Probing:
    """Where health probes run: from the one nginx host, or (NGINX_HOSTS) from every one."""
    if len(hosts) == 1:
        return make_prober(hosts[0], settings, target)
    return FleetProber([make_prober(host, settings, target) for host in hosts])


@contextmanager
def nginx_hosts(settings: Settings, connecting: Optional[Connecting] = None) -> Iterator[Tuple[NginxHost, ...]]:
    """Every nginx host (NGINX_HOSTS, in order), connected at the same time; the first may be the
    connection cli.py started early. One that cannot be reached fails the whole (its own error,
    naming it: exit 3), and the others are closed again."""
    sections = settings.nginx.each()
    pending = [Connecting(section, settings.network_timeout) for section in sections[1:]]
    hosts: List[NginxHost] = []
    try:
        hosts.append(connecting.result() if connecting is not None else connect(sections[0], settings.network_timeout))
        for other in pending:
            hosts.append(other.result())
        yield tuple(hosts)
    finally:
        for other in pending:
            other.close()   # those nobody took (an earlier one failed)
        for host in hosts:
            host.close()


def settled(settings: Settings, cwd: Path, releasing: bool) -> Settings:
    """The settings a run works with, settled before anything is composed: a run that releases
    (deploy, deploy --no-promote) without APP_VERSION gets the git sha or the UTC time, once, so
    the lock, the image tag and the history (even of a failure) all name the same release."""
    if releasing and not settings.app_version:
        return replace(settings, app_version=default_version(cwd))
    return settings


@contextmanager
def context(settings: Settings, environ: Mapping[str, str], cwd: Path, lock_wait: float = 0.0,
            started: Optional[float] = None, connecting: Optional[Connecting] = None,
            releasing: bool = False, runlog: Optional[RunLog] = None) -> Iterator[Context]:
    """Every part a flow works with, connected; closed again on the way out. `releasing`: the
    run builds a release (its version is settled here, before any part gets the settings).
    `runlog`: where the run records what it decided and its phases (cli.py reports it)."""
    settings = settled(settings, cwd, releasing)
    engine = _engine_while_connecting(settings, environ, connecting)
    with nginx_hosts(settings, connecting) as hosts:
        if engine is None:
            engine = make_target(settings, environ)
        host = hosts[0]
        switches = tuple(make_switch(each, settings) for each in hosts)
        ctx = Context(settings, engine, host, fleet_switch(hosts, switches), cwd, environ,
                      fleet_prober(hosts, settings, engine), SYSTEM.now() if started is None else started,
                      lock_wait=lock_wait, clock=SYSTEM, hosts=hosts, switches=switches,
                      runlog=runlog if runlog is not None else RunLog())
        if threading.current_thread() is threading.main_thread():
            ctx.guard.install()   # SIGINT/SIGTERM become Interrupted, so every cleanup runs
        yield ctx


def _engine_while_connecting(settings: Settings, environ: Mapping[str, str],
                             connecting: Optional[Connecting]) -> Optional[Target]:
    """The one docker engine, connected while the nginx host's connection is still under way
    (cli.py started it): its round trip (GET /version) then overlaps the wait for the nginx
    host's SFTP subsystem, which on a saturated machine is most of a second (issue 15). Errors
    come in the same order as before: the nginx host's first, then the engine's. None: connect
    the target after the nginx host, as without `connecting` (and for a swarm)."""
    if connecting is None or settings.target != "docker":
        return None
    try:
        return make_target(settings, environ)
    except BaseException:
        connecting.result().close()   # raises the nginx host's error, if it had one, instead
        raise
