"""SWITCH_MODE=reload: rewrite the include, test the config, reload nginx gracefully."""
from __future__ import annotations

from typing import Dict, Optional

from .decide import Address, parse_include
from .errors import RemoteCommandFailed, tail
from .nginx_host import NginxHost
from .settings import Settings
from .switch import LIVE, PREVIEW, IncludeFiles


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
