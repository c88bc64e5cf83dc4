"""How traffic is moved from one color to the other: one small interface, several ways.

The deploy flow only calls `current(route)` and `route_to(route, address)`. `route_to` either
succeeds or raises with traffic left exactly where it was.

- ReloadSwitch (SWITCH_MODE=reload): rewrite the include, `nginx -t`, `nginx -s reload`.
- LiveSwitch (SWITCH_MODE=live, in live_switch.py): rewrite the include, then tell nginx's Lua
  balancer the new address over its admin port; no reload, so no client connection is reset.
"""
from __future__ import annotations

import logging
import shlex
from typing import Dict, Optional, Protocol

from .decide import Address, parse_include, render_include
from .errors import (DeployFailed, NginxHostFailed, PipelineError, PreflightError, RemoteCommandFailed,
                     SwitchIncomplete, tail)
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
        try:
            self.includes.write(route, self.includes.render(route, address))
            # One round trip for both over SSH: they stand between "healthy" and "served".
            results = self.host.run_steps([self.settings.nginx_test_command, self.settings.nginx_reload_command])
        except NginxHostFailed as exc:
            # Cut off mid-way: the include may be either, and nginx may have reloaded. The old
            # include and a reload bring back what nginx served before.
            self._put_back(route, before, address, exc, reload=True)
            raise DeployFailed(f"{exc}; put the old {route} include back and reloaded nginx") from exc
        test = results[0]
        if test.code != 0:
            failure = RemoteCommandFailed(test.command, test.code, tail(test.output),
                                          f"nginx rejected the new {route} include; put the old one back")
            self._put_back(route, before, address, failure, reload=False)
            raise failure
        reload = results[1]
        if reload.code != 0:
            # A reload that failed left nginx on its old config: the old include is all it takes.
            failure = RemoteCommandFailed(reload.command, reload.code, tail(reload.output),
                                          f"nginx reload failed; put the old {route} include back")
            self._put_back(route, before, address, failure, reload=False)
            try:
                again = self.host.run(self.settings.nginx_reload_command)
                note = "" if again.code == 0 else f" (reload after restoring also failed: {again.code})"
            except NginxHostFailed as exc:
                note = f" (reload after restoring also failed: {exc.cause})"
            raise RemoteCommandFailed(reload.command, reload.code, tail(reload.output),
                                      f"nginx reload failed; put the old {route} include back{note}")

    def _put_back(self, route: str, before: Optional[str], address: Address, why: PipelineError,
                  reload: bool) -> None:
        """Restore the include (and reload, when nginx may have loaded the new one); if that
        fails, say exactly what is left to do."""
        problem = None
        try:
            self.includes.write(route, before)
            if reload:
                again = self.host.run(self.settings.nginx_reload_command)
                if again.code != 0:
                    problem = f"`{again.command}` after putting it back exited with {again.code}"
        except NginxHostFailed as exc:
            problem = str(exc)
        if problem is None:
            return
        s = self.settings
        raise SwitchIncomplete(
            f"{why}; then putting the old {route} include back failed ({problem}). {self.includes.path(route)} "
            f"on the nginx host may name {address} or the old address, so the new container is left running. "
            f"On the nginx host, run `{shlex.join(s.nginx_test_command)}` and "
            f"`{shlex.join(s.nginx_reload_command)}`: nginx then serves what the include names, and the next "
            f"deploy goes to the other color", list(why.detail())) from why

    def describe(self) -> Dict[str, Optional[str]]:
        return {route: _text(self.current(route)) for route in (LIVE, PREVIEW) if self.includes.path(route)}


def _text(address: Optional[Address]) -> Optional[str]:
    return str(address) if address else None


def make_switch(host: NginxHost, settings: Settings) -> TrafficSwitch:
    if settings.switch_mode == "live":
        from .live_switch import LiveSwitch

        return LiveSwitch(host, settings)
    return ReloadSwitch(host, settings)
