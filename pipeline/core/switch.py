"""How traffic is moved from one color to the other: the route names, the include files and
the one small interface every way of switching implements.

The deploy flow only calls `current(route_name)` and `route_to(route_name, route)`, a route being
the addresses traffic is spread over (route.Route). `route_to` either succeeds or raises with
traffic left exactly where it was, except SwitchIncomplete: the switch could not be undone and
nginx may serve (or, after a reload, will serve) the new addresses, so the flows keep that release
running.

- ReloadSwitch (SWITCH_MODE=reload, reload_switch.py): rewrite the include, `nginx -t`, reload.
- LiveSwitch (SWITCH_MODE=live, live_switch.py): rewrite the include, then tell nginx's Lua
  balancer the new address over its admin port; no reload, so no client connection is reset.

Maintenance mode (maintenance.py) is the switch's too: `maintenance()` says whether nginx answers
503 on the public port, `set_maintenance(flag)` turns it on (a Maintenance) or off (None), and
`route_to` keeps it as it is (a deploy during maintenance stays behind the 503 page).

The implementations import this module, never the other way round; `compose.make_switch` picks one.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Protocol

from pipeline.core.answers import AnswerReader
from pipeline.core.decide import render_include
from pipeline.core.route import Route
from pipeline.core.errors import SwitchUnavailable
from pipeline.core.host import NginxHost
from pipeline.core.maintenance import Maintenance, carry, parse_flag
from pipeline.core.settings import SwitchSettings

LIVE = "live"
PREVIEW = "preview"

log = logging.getLogger("pipeline")


class TrafficSwitch(Protocol):
    mode: str
    # How long after route_to returns until every nginx worker uses the new address.
    settle_seconds: float

    def check(self) -> None:
        """Raise a PreflightError if this switch cannot work as configured. Flows call it before
        they change anything."""

    def current(self, route_name: str, /) -> Optional[Route]:
        """Where the route sends traffic now (one address, or a swarm color's several); raises
        SwitchUnavailable when it cannot tell."""

    def route_to(self, route_name: str, route: Route, /) -> None:
        """Send the route's traffic to `route` (one address, or several to spread over); on
        failure raise, leaving the route as it was, or SwitchIncomplete when that could not be
        done."""

    def describe(self) -> Dict[str, Optional[str]]:
        """What the switch reports, for `status`."""

    def maintenance(self) -> Optional[Maintenance]:
        """Whether nginx answers the public port with the maintenance page (and which), or None;
        raises SwitchUnavailable when it cannot tell."""

    def set_maintenance(self, flag: Optional[Maintenance], /) -> None:
        """Turn maintenance mode on (`flag`) or off (None), with no container touched and the
        preview route left alone; on failure raise with nginx left as it was."""

    def check_answers(self) -> None:
        """Preflight of a run that verifies: nginx's answers can be read where `answers` reads
        them (PreflightError, AdminUnavailable: exit 3). Nothing is changed."""

    def answers(self, route: Route, /) -> AnswerReader:
        """From now on: what nginx answers for requests it sends to `route`'s addresses (the
        verification window's reader)."""


class Prepared(Protocol):
    """One host's switch made ready and not yet done (TwoPhaseSwitch.prepare): the include is
    written and tested (reload mode) or the admin answered (live mode), while nginx still serves
    what it served before (`before`)."""

    before: Optional[Route]

    def commit(self) -> None:
        """Move the traffic (the reload, or the PUT); on failure raise, the host put back as it
        was (or SwitchIncomplete when that could not be done)."""

    def undo(self) -> None:
        """Back to `before`, committed or not (the include, and nginx when it was moved);
        SwitchIncomplete when that could not be done."""


class TwoPhaseSwitch(TrafficSwitch, Protocol):
    """A switch on one nginx host that can be prepared on every host before any host commits
    (fleet.FleetSwitch, NGINX_HOSTS)."""

    def prepare(self, route_name: str, route: Route, /) -> Prepared:
        """Everything of `route_to` short of moving the traffic; on failure raise, the host put
        back (or SwitchIncomplete)."""


def status_fields(switch: TrafficSwitch) -> Dict[str, object]:
    """The switch's fields in `status`."""
    return {"switch_mode": switch.mode, "switch": switch.describe(), "maintenance": maintenance_status(switch)}


def maintenance_status(switch: TrafficSwitch) -> Dict[str, object]:
    """`status`'s maintenance field: {"on": true, "retry_after": N} or {"on": false}; "on" is
    null (and "problem" says why) when the switch cannot tell."""
    try:
        flag = switch.maintenance()
    except SwitchUnavailable as exc:
        return {"on": None, "problem": str(exc)}
    return {"on": True, "retry_after": flag.retry_after} if flag else {"on": False}


class IncludeFiles:
    """The include files on the nginx host: the persistent truth of where each route points."""

    def __init__(self, host: NginxHost, switch: SwitchSettings) -> None:
        self.host = host
        self.settings = switch

    def path(self, route: str) -> Optional[str]:
        if route == LIVE:
            return str(self.settings.nginx_include)
        preview = self.settings.nginx_preview_include
        return str(preview) if preview is not None else None

    def read(self, route: str) -> Optional[str]:
        path = self.path(route)
        return self.host.read_text(path) if path else None

    def render(self, route: str, address: Route, before: Optional[str] = None) -> str:
        """The include for `address`; the live one keeps the maintenance lines of `before` (the
        include it replaces), and says so."""
        s = self.settings
        if route == LIVE:
            text = render_include(address, s.nginx_include_form, "service_url", s.nginx_upstream)
            if parse_flag(before) is not None:
                log.warning("    maintenance mode is on and stays on: nginx keeps answering 503 on the public "
                            "port (`python -m pipeline maintenance off` ends it)")
            return carry(before, text, s.nginx_include_form)
        # The preview include is always the one-line form: it serves a tester, not the load.
        return render_include(address, "set", "preview_url")

    def write(self, route: str, text: Optional[str]) -> None:
        path = self.path(route)
        assert path is not None, f"no include configured for the {route} route"
        if text is None:
            self.host.remove(path)
        else:
            self.host.write_text_atomic(path, text)
