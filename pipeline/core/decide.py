"""Pure decisions: what the include says, which color is live, what to write.

Nothing here touches the network, the engine or a file; the deploy flow gathers facts, asks these
functions, then acts. Unit tests cover them with tables.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, FrozenSet, List, Mapping, Optional, Set

from pipeline.core.maintenance import without_flag
from pipeline.core.route import Address, Route, shown
from pipeline.core.settings import COLORS, MAX_ROUTE_ADDRESSES

# `set $service_url http://172.20.0.2:8080;` (the seed's form) ...
_SET_RE = re.compile(r"^\s*set\s+\$\w+\s+http://(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})/?\s*;", re.M)
# ... or `server 172.20.0.2:8080;` inside an upstream block (the keep-alive form).
_SERVER_RE = re.compile(r"(?<![\w$])server\s+(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})\b[^;]*;", re.M)

UPSTREAM_KEEPALIVE = 32


def other(color: str) -> str:
    return "green" if color == "blue" else "blue"


# What a live-mode route takes (nginx/live/app-live.conf, routes.parse_list): 1 to
# MAX_ROUTE_ADDRESSES (32) distinct addresses, `IP:PORT[,IP:PORT...]`, at most 32 * 21 bytes and
# the commas between them.
MAX_ROUTE_TEXT = MAX_ROUTE_ADDRESSES * 22 - 1


def render_route(addresses: Route) -> str:
    """The live-mode admin body for a route: `IP:PORT` or `IP:PORT,IP:PORT,...`, in order."""
    if not addresses:
        raise ValueError("no address to route to")
    if len(addresses) > MAX_ROUTE_ADDRESSES:
        raise ValueError(f"{len(addresses)} addresses; a route takes at most {MAX_ROUTE_ADDRESSES}")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"an address listed twice in {shown(addresses)}")
    return ",".join(str(a) for a in addresses)


def parse_route(text: str) -> Optional[Route]:
    """An admin answer `IP:PORT[,IP:PORT...]` (surrounding whitespace aside) -> a Route; None if
    it is anything else, by the same rules nginx stores it by (no empty item, no duplicate, no
    space inside, at most MAX_ROUTE_ADDRESSES)."""
    text = text.strip()
    if not text or len(text) > MAX_ROUTE_TEXT:
        return None
    items = text.split(",")
    if len(items) > MAX_ROUTE_ADDRESSES:
        return None
    parsed = [Address.parse(item) if item == item.strip() else None for item in items]
    addresses = tuple(a for a in parsed if a is not None)
    if len(addresses) != len(items) or len(set(addresses)) != len(addresses):
        return None
    return addresses


def render_include(addresses: Route, form: str = "set", variable: str = "service_url",
                   upstream: str = "app_live") -> str:
    """The include file's text. `set` is the seed's one-liner; `upstream` keeps connections alive
    and lists one `server` per address (nginx spreads requests over them, and tries the next
    one when a connection to one fails)."""
    if not addresses:
        raise ValueError("no address to route to")
    if form == "set":
        if len(addresses) != 1:
            raise ValueError(f"the set form takes one address, not {len(addresses)}")
        return f"set ${variable} {addresses[0].url};\n"
    if form == "upstream":
        servers = "".join(f"    server {a};\n" for a in addresses)
        return (
            f"upstream {upstream} {{\n"
            f"{servers}"
            f"    keepalive {UPSTREAM_KEEPALIVE};\n"
            f"}}\n"
        )
    raise ValueError(f"unknown include form {form!r}")


def parse_include(text: Optional[str]) -> Route:
    """Every address an include points at (the set form has one; an upstream one per server);
    () if absent or not understood. Maintenance lines (maintenance.py) are not looked at."""
    if not text:
        return ()
    text = without_flag(text)   # a maintenance page's text is never read as an address
    match = _SET_RE.search(text)
    if match:
        found = Address.parse(f"{match.group(1)}:{match.group(2)}")
        return (found,) if found else ()
    return tuple(a for m in _SERVER_RE.finditer(text) if (a := Address.parse(f"{m.group(1)}:{m.group(2)}")))


def color_at(route: Optional[Route], key: Callable[[Address], object], colors: Mapping[str, object]) -> Optional[str]:
    """The color a route goes to: the one whose `colors` entry is `key` of the route's first
    address (one engine: by the color's fixed IP; a swarm: by the node port every task of the
    color publishes), if any."""
    if not route:
        return None
    for color, value in colors.items():
        if key(route[0]) == value:
            return color
    return None


@dataclass(frozen=True)
class ColorChoice:
    live: Optional[str]   # None on a first deploy: nothing serves yet
    target: str           # the idle color the new release goes to
    reason: str
    by_probe: bool = False   # live only because blue answered the seed's probe (no usable include)
    # Not None when nginx may still serve `target`'s running container (the include was not seen
    # loaded): "reload" (load the include first, then decide again) or "refuse" (exit 3).
    settle: Optional[str] = None


def choose_colors(include_color: Optional[str], blue_alive: Optional[bool],
                  running: FrozenSet[str] = frozenset(COLORS), include_loaded: bool = True) -> ColorChoice:
    """Pick the idle color, as the seed's script meant to, never one nginx may be serving.

    The include is the truth: the live color is the one it points at, unless that color's
    container is not running while the other one is. That happens when a deploy was killed
    (SIGKILL) between writing the include and reloading nginx: nginx still serves the other color,
    and deploying over it would cut live traffic. Without a usable include we fall back on the
    seed's rule (blue healthy -> deploy green, else blue). `blue_alive` is None when it was not
    probed (no container of ours holds blue's address), which counts as not alive.

    `include_loaded` (SWITCH_MODE=reload) is False when nginx was not seen loading the include
    as it stands: see `settle_before_touching`.
    """
    choice = _choose(include_color, blue_alive, running)
    settle = settle_before_touching(choice.target, include_color, include_loaded, running)
    if settle is None:
        return choice
    return replace(choice, settle=settle,
                   reason=f"{choice.reason}, but nginx was not seen loading the include and may still "
                          f"serve {choice.target}")


def _choose(include_color: Optional[str], blue_alive: Optional[bool], running: FrozenSet[str]) -> ColorChoice:
    if include_color in COLORS:
        idle = other(include_color)
        if include_color not in running and idle in running:
            return ColorChoice(idle, include_color, f"the include points at {include_color}, which is not "
                                                    f"running; {idle} is, so it is treated as live")
        return ColorChoice(include_color, idle, f"the include points at {include_color}")
    if blue_alive:
        return ColorChoice("blue", "green", "no usable include; blue answers its health check", by_probe=True)
    return ColorChoice(None, "blue", "no usable include and blue is not serving: first deploy")


def may_serve(include_color: Optional[str], include_loaded: bool, running: FrozenSet[str]) -> FrozenSet[str]:
    """The colors whose running container nginx may be sending traffic to.

    Reload mode: the include is what nginx serves only once a reload was seen to load it (the
    switch writes a copy of it beside it when the reload has replaced nginx's workers, and moves
    that copy aside before every reload). Until then nginx serves what it loaded last, which may
    be anything an older include named: any running color.
    """
    named = frozenset({include_color}) & running if include_color in COLORS else frozenset()
    return named if include_loaded else frozenset(running)


def settle_before_touching(target: str, include_color: Optional[str], include_loaded: bool,
                           running: FrozenSet[str]) -> Optional[str]:
    """What must happen before a run may replace, stop or remove `target`'s container.

    None: nginx cannot be serving it (the include was seen loaded and names the other color, or
    `target` is not running: a stopped container serves nothing).

    "reload": nginx was not seen loading the include, `target` runs, and the include names a
    running color. Covers: a run SIGKILLed after the include was renamed and before nginx reloaded
    (include green, nginx still on blue, both running); a reload that exited 0 without applying;
    a switch whose put-back reload was cut off (include blue again, nginx maybe on green). Loading
    the include (test + reload, seen applied) makes nginx serve the include's color, a running
    container, and then `target` is idle for certain.

    "refuse": the same, but the include names no running color of ours (a placeholder, a foreign
    address, a color whose container is gone): loading it would send the traffic nginx may be
    serving from `target` nowhere. A person must say which color serves.
    """
    if target not in may_serve(include_color, include_loaded, running):
        return None
    return "reload" if include_color in running else "refuse"


@dataclass(frozen=True)
class ContainerFact:
    """What the engine says about one color's container."""

    color: str
    name: str
    status: str                 # created, running, exited, restarting, ...
    version: Optional[str]
    image: str
    ip: Optional[str]           # its address on the deploy network, if attached
    restart_count: int = 0

    @property
    def running(self) -> bool:
        return self.status == "running"


def images_to_remove(images: Mapping[str, float], keep: int, protected: Set[str]) -> List[str]:
    """Release images past the newest `keep`, never one a container still uses.

    `images` maps an image reference to its creation time.
    """
    newest_first = sorted(images, key=lambda ref: images[ref], reverse=True)
    return [ref for ref in newest_first[keep:] if ref not in protected]

