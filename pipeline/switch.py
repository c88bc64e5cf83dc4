"""How traffic is moved from one color to the other: one small interface, several ways.

The deploy flow only calls `current(route)` and `route_to(route, address)`. `route_to` either
succeeds or raises with traffic left exactly where it was.

- ReloadSwitch (SWITCH_MODE=reload): rewrite the include, `nginx -t`, `nginx -s reload`.
- LiveSwitch (SWITCH_MODE=live, in live_switch.py): rewrite the include, then tell nginx's Lua
  balancer the new address over its admin port; no reload, so no client connection is reset.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Protocol

from .decide import Address, parse_include, render_include
from .errors import PreflightError, RemoteCommandFailed, tail
from .nginx_host import NginxHost
from .settings import Settings

log = logging.getLogger("pipeline")

LIVE = "live"
PREVIEW = "preview"


class SwitchUnavailable(PreflightError):
    """The switch cannot say where traffic goes now (e.g. nginx's admin port does not answer)."""


class TrafficSwitch(Protocol):
    mode: str
    # How long after route_to returns until every nginx worker uses the new address.
    settle_seconds: float

    def check(self) -> None:
        """Raise a PreflightError if this switch cannot work as configured. Flows call it before
        they change anything."""

    def current(self, route: str) -> Optional[Address]:
        """Where the route sends traffic now; raises SwitchUnavailable when it cannot tell."""

    def route_to(self, route: str, address: Address) -> None:
        """Send the route's traffic to `address`; on failure raise, leaving the route as it was."""

    def describe(self) -> Dict[str, Optional[str]]:
        """What the switch reports, for `status`."""


class IncludeFiles:
    """The include files on the nginx host: the persistent truth of where each route points."""

    def __init__(self, host: NginxHost, settings: Settings) -> None:
        self.host = host
        self.settings = settings

    def path(self, route: str) -> Optional[str]:
        if route == LIVE:
            return str(self.settings.nginx_include)
        preview = self.settings.nginx_preview_include
        return str(preview) if preview is not None else None

    def read(self, route: str) -> Optional[str]:
        path = self.path(route)
        return self.host.read_text(path) if path else None

    def render(self, route: str, address: Address) -> str:
        s = self.settings
        if route == LIVE:
            return render_include(address, s.nginx_include_form, "service_url", s.nginx_upstream)
        # The preview include is always the one-line form: it serves a tester, not the load.
        return render_include(address, "set", "preview_url")

    def write(self, route: str, text: Optional[str]) -> None:
        path = self.path(route)
        assert path is not None, f"no include configured for the {route} route"
        if text is None:
            self.host.remove(path)
        else:
            self.host.write_text_atomic(path, text)


class ReloadSwitch:
    """Rewrite the include atomically, test the config, reload nginx; undo on any failure."""

    mode = "reload"
    # `nginx -s reload` only signals the master; new workers take over ~0.1 s later (measured
    # 70-130 ms here), old workers serve meanwhile.
    settle_seconds = 0.3

    def __init__(self, host: NginxHost, settings: Settings) -> None:
        self.host = host
        self.settings = settings
        self.includes = IncludeFiles(host, settings)

    def check(self) -> None:
        """Nothing to check ahead: `nginx -t` runs on the real include at every switch."""

    def current(self, route: str) -> Optional[Address]:
        return parse_include(self.includes.read(route))

    def route_to(self, route: str, address: Address) -> None:
        before = self.includes.read(route)
        self.includes.write(route, self.includes.render(route, address))
        # One round trip for both over SSH: they stand between "healthy" and "served".
        results = self.host.run_steps([self.settings.nginx_test_command, self.settings.nginx_reload_command])
        test = results[0]
        if test.code != 0:
            self.includes.write(route, before)
            raise RemoteCommandFailed(test.command, test.code, tail(test.output),
                                      f"nginx rejected the new {route} include; put the old one back")
        reload = results[1]
        if reload.code != 0:
            self.includes.write(route, before)
            again = self.host.run(self.settings.nginx_reload_command)
            note = "" if again.code == 0 else f" (reload after restoring also failed: {again.code})"
            raise RemoteCommandFailed(reload.command, reload.code, tail(reload.output),
                                      f"nginx reload failed; put the old {route} include back{note}")

    def describe(self) -> Dict[str, Optional[str]]:
        return {route: _text(self.current(route)) for route in (LIVE, PREVIEW) if self.includes.path(route)}


def _text(address: Optional[Address]) -> Optional[str]:
    return str(address) if address else None


def make_switch(host: NginxHost, settings: Settings) -> TrafficSwitch:
    if settings.switch_mode == "live":
        from .live_switch import LiveSwitch

        return LiveSwitch(host, settings)
    return ReloadSwitch(host, settings)
