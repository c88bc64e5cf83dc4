"""SWITCH_MODE=reload: rewrite the include, test the config, reload nginx gracefully."""
from __future__ import annotations

import shlex
from typing import Dict, Optional

from .decide import Address, parse_include
from .errors import DeployFailed, NginxHostFailed, PipelineError, RemoteCommandFailed, SwitchIncomplete, tail
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
