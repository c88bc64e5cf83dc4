"""What nginx answered, per upstream address: read for the verification window, by the switch.

Where the answers come from depends on the switch (each switch hands out its reader):

- reload mode: nginx's access log (NGINX_ACCESS_LOG, in the shipped `pipeline` format with
  `upstream=` and the status), read through the NginxHost from its size just before the switch;
  each poll reads only the bytes added since (AccessLogReader).
- live mode: counters nginx keeps per upstream address and status in its Lua log phase
  (nginx/live/app-live.conf), read through the admin's `GET /pipeline/stats`; the counts just
  before the switch are the baseline (StatsReader).
"""
from __future__ import annotations

import collections
import logging
import re
from dataclasses import dataclass, field
from typing import Counter, Dict, FrozenSet, Optional, Protocol, Tuple

from pipeline.core.route import Route
from pipeline.core.errors import NginxHostFailed, PreflightError
from pipeline.core.host import NginxHost
from pipeline.core.settings import NginxSettings, SwitchSettings

log = logging.getLogger("pipeline")

READ_LIMIT = 8 * 1024 * 1024   # access-log bytes read per poll at most (the rest at the next one)


# -- pure: parsing and judging ----------------------------------------------------------------------

# The shipped `pipeline` log format (nginx/conf.d/00-log-format.conf):
#   ... [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
#   upstream=$upstream_addr upstream_status=$upstream_status ...
# nginx writes a `"` inside a variable as \x22, so the quoted fields hold no bare quote.
_LOG_RE = re.compile(r'\] "[^"]*" (\d{3}) \S+ "[^"]*" "[^"]*" upstream=(.*?) upstream_status=')
_ADDRESS_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}:\d{1,5})\s*$")


def parse_log_line(line: str) -> Optional[Tuple[Optional[str], int]]:
    """(upstream address that answered, status) of one access-log line; None if not the format.

    The address is None when nginx answered by itself (upstream=-). After a retry
    $upstream_addr lists several ("a, b", or "a : b" after an internal redirect): the last one
    answered.
    """
    match = _LOG_RE.search(line)
    if match is None:
        return None
    address = _ADDRESS_RE.search(match.group(2))
    return (address.group(1) if address else None), int(match.group(1))


def parse_stats(text: str) -> Dict[str, Counter[int]]:
    """`GET /pipeline/stats` lines "IP:PORT STATUS COUNT" -> address -> status -> count."""
    counts: Dict[str, Counter[int]] = collections.defaultdict(collections.Counter)
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[1].isdigit() and words[2].isdigit():
            counts[words[0]][int(words[1])] += int(words[2])
    return dict(counts)


@dataclass(frozen=True)
class Tally:
    """What nginx answered for requests to the new release during the window."""

    statuses: Dict[int, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def commonest(self, n: int = 3) -> str:
        ranked = sorted(self.statuses.items(), key=lambda item: (-item[1], item[0]))[:n]
        return ", ".join(f"{status} x{count}" for status, count in ranked) or "none"

    def describe(self) -> str:
        return (f"{self.rate:.1%} 5xx of {self.requests} requests (commonest: {self.commonest()})")


# -- readers: what nginx answered for the new release's addresses -----------------------------------

def address_set(route: Route) -> FrozenSet[str]:
    """One address or several (a swarm color's tasks) as the `IP:PORT` strings nginx reports."""
    return frozenset(str(a) for a in route)


def summed(counts: Dict[str, Counter[int]], addresses: FrozenSet[str]) -> Counter[int]:
    """Status -> count over every one of `addresses` (a color of several tasks answers at each)."""
    total: Counter[int] = collections.Counter()
    for address in addresses:
        total.update(counts.get(address, {}))
    return total


class AnswerReader(Protocol):
    # Lines read that were not in the `pipeline` log format (0 where nothing is parsed).
    unparsed: int

    def read(self) -> Tally:
        """Everything counted for the addresses since the baseline, summed."""


class Stats(Protocol):
    """nginx's admin, as far as the stats go (live_switch.NginxAdmin)."""

    def stats(self) -> str: ...


class AccessLogReader:
    """Follows NGINX_ACCESS_LOG from its size at the baseline, reading only what was added."""

    def __init__(self, host: NginxHost, path: str, addresses: Route) -> None:
        self.host, self.path, self.addresses = host, path, address_set(addresses)
        size = host.size(path)
        if size is None:
            raise PreflightError(f"NGINX_ACCESS_LOG={path}: no such file on the nginx host ({host.description})")
        self.offset = size
        self.partial = b""
        self.counts: Counter[int] = collections.Counter()
        self.unparsed = 0

    def read(self) -> Tally:
        size = self.host.size(self.path)
        if size is not None and size < self.offset:
            log.warning("    %s shrank (rotated?); reading it from the start", self.path)
            self.offset, self.partial = 0, b""
        data = self.host.read_bytes(self.path, self.offset, READ_LIMIT)
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()          # an unfinished last line waits for the next read
        for raw in lines:
            parsed = parse_log_line(raw.decode("utf-8", "replace"))
            if parsed is None:
                self.unparsed += 1
            elif parsed[0] in self.addresses:
                self.counts[parsed[1]] += 1
        return Tally(dict(self.counts))


class StatsReader:
    """Live mode: nginx's counters for the addresses (one stats line per upstream address and
    status), summed, minus what they were at the baseline."""

    def __init__(self, admin: Stats, addresses: Route) -> None:
        self.admin, self.addresses = admin, address_set(addresses)
        self.before = summed(parse_stats(admin.stats()), self.addresses)
        self.unparsed = 0

    def read(self) -> Tally:
        now = summed(parse_stats(self.admin.stats()), self.addresses)
        return Tally({status: n - self.before.get(status, 0) for status, n in now.items()
                      if n - self.before.get(status, 0) > 0})




def check_access_log(host: NginxHost, s: SwitchSettings, nginx: NginxSettings) -> None:
    """Preflight, reload mode: the access log must be a file the nginx host lets us open: Debian's
    is 0640 www-data:adm, which a non-root SSH user outside `adm` cannot read; found only during
    the window, that would cost a switch back."""
    path = str(s.nginx_access_log)
    where = f"on the nginx host ({host.description})"
    then = "verification reads nginx's answers there (the `pipeline` log format), or set VERIFY_SECONDS=0"
    try:
        size = host.size(path)
        if size is not None:
            host.read_bytes(path, max(size - 1, 0), 1)   # opened, as the window will
    except NginxHostFailed as exc:
        who = f"NGINX_SSH_USER={nginx.nginx_ssh_user}" if nginx.remote else "the user running pipeline"
        hint = (f" (it is read as {who}: on Debian, make that user a member of `adm`)"
                if isinstance(exc.__cause__, PermissionError) else "")
        raise PreflightError(f"NGINX_ACCESS_LOG={path}: cannot read it {where}: {exc.cause}{hint}; "
                             f"{then}") from exc
    if size is None:
        raise PreflightError(f"NGINX_ACCESS_LOG={path}: no such file {where}; {then}")
