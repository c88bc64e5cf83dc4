"""The composition root: where the program's parts are chosen and put together.

Only here are the implementations of an interface named (the switches), so no module imports its
own implementations back.
"""
from __future__ import annotations

from .live_switch import LiveSwitch
from .nginx_host import NginxHost
from .reload_switch import ReloadSwitch
from .settings import Settings
from .switch import TrafficSwitch


def make_switch(host: NginxHost, settings: Settings) -> TrafficSwitch:
    if settings.switch_mode == "live":
        return LiveSwitch(host, settings)
    return ReloadSwitch(host, settings)
