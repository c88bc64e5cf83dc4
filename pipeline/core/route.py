"""Where traffic goes: an address, and a route (the addresses nginx spreads a route's traffic over).

Pure values with no other pipeline import, so every layer (decisions, errors, adapters, flows)
can name them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Address:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Optional["Address"]:
        """`IP:PORT` as used by the live-switch admin protocol; None if it is anything else."""
        match = re.fullmatch(r"(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})", text.strip())
        if not match or not 1 <= int(match.group(2)) <= 65535:
            return None
        if any(int(octet) > 255 for octet in match.group(1).split(".")):
            return None
        return cls(match.group(1), int(match.group(2)))


# Where a route sends traffic: the addresses nginx spreads it over, in order (one on one engine,
# every task of a color on a swarm). The one shape a route has everywhere: switches read it back,
# targets say where a color answers with it, messages show it.
Route = Tuple[Address, ...]


def shown(route: Optional[Route]) -> str:
    """For messages: `IP:PORT` or `IP:PORT, IP:PORT, ...`; `nothing` for no address."""
    return ", ".join(str(a) for a in route) if route else "nothing"


def health_url(address: Address, path: str) -> str:
    """Where an address answers its health check: the one place a health URL is built."""
    return f"{address.url}{path}"
