"""The composition root: where the program's parts are chosen and put together.

Only here are the implementations of an interface named (the switches, the targets), so no module imports its
own implementations back; and only here are the nginx host and the docker engine connected and
handed to a flow as its Context.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional

from .deploy import Context
from .engine import Engine
from .live_switch import LiveSwitch
from .nginx_host import Connecting, NginxHost, connect
from .reload_switch import ReloadSwitch
from .settings import Settings
from .switch import TrafficSwitch
from .target import Target


def make_switch(host: NginxHost, settings: Settings) -> TrafficSwitch:
    if settings.switch_mode == "live":
        return LiveSwitch(host, settings)
    return ReloadSwitch(host, settings)


def make_target(settings: Settings, environ: Mapping[str, str]) -> Target:
    """Where releases run: TARGET=swarm, a swarm manager; else the one docker engine."""
    if settings.target == "swarm":
        # Imported here: the one engine's runs (a rollback: a switch) start without it.
        from .swarm import SwarmEngine

        return SwarmEngine.connect(settings, environ)
    return Engine.connect(settings, environ)


@contextmanager
def nginx_host(settings: Settings, connecting: Optional[Connecting] = None) -> Iterator[NginxHost]:
    """The nginx host, connected (or, `connecting`, the connection cli.py started early)."""
    host = connecting.result() if connecting is not None else connect(settings)
    try:
        yield host
    finally:
        host.close()


@contextmanager
def context(settings: Settings, environ: Mapping[str, str], cwd: Path, lock_wait: float = 0.0,
            started: Optional[float] = None, connecting: Optional[Connecting] = None) -> Iterator[Context]:
    """Every part a flow works with, connected; closed again on the way out."""
    with nginx_host(settings, connecting) as host:
        engine = make_target(settings, environ)
        ctx = Context(settings, engine, host, make_switch(host, settings), cwd, environ, lock_wait=lock_wait,
                      started=time.monotonic() if started is None else started)
        if threading.current_thread() is threading.main_thread():
            ctx.guard.install()   # SIGINT/SIGTERM become Interrupted, so every cleanup runs
        yield ctx
