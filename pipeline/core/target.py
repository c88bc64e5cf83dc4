"""Where the release runs: the one interface every target implements, whole.

- Engine (TARGET=docker, engine.py): one engine, one container per color at its fixed IP.
- SwarmEngine (TARGET=swarm, swarm.py): a swarm manager, one replicated service per color whose
  tasks publish the color's port on their nodes.

A target owns everything that differs between them: starting a color, the health gate's view of
it (`gate`: one gate over N endpoints, N=1 on one engine), why a color is not serving any more
(`watch`), its endpoints named for messages, its rows in `status`. The flows (deploy.py,
verify.py) only call what is named here and never ask which target they hold; `compose.make_target`
picks one. The implementations import this module's names, never the other way round.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Protocol

from pipeline.core.decide import ContainerFact
from pipeline.core.route import Address, Route, health_url
from pipeline.core.gate import Gate, NotHealthyYet, Transport, probe


class Endpoint(NamedTuple):
    """One place a color answers: its address, and how a message names it ("" for the one
    container of a color; on a swarm "task ID on NODE (IP:PORT)")."""

    address: Address
    name: str


class Watch(Protocol):
    """A color that passed its health gate, watched from then on (MIN_READY_SECONDS, the
    verification window, the last look): the endpoints it had when watching began are the ones
    that count."""

    def problem(self) -> Optional[str]:
        """Why the color is not serving as it was when watching began (exited, restarted, lost its
        address, a task moved), as a whole sentence; None while it is. Asked before each probe:
        an endpoint is probed only right after this found ours there."""

    def endpoints(self) -> List[Endpoint]:
        """Where to probe now: what the last `problem()` found ours and serving."""


# What `status` reports of a color's health, given a health URL ("HTTP 200 ..." or "unhealthy: ...").
HealthReport = Callable[[str], str]
# How `status` says the nginx host reaches an address ("via 10.0.0.1 on eth0", "directly on eth0").
RouteReport = Callable[[str], str]


class Target(Protocol):
    def network_exists(self) -> bool:
        """The network probes reach the colors over exists (a swarm's nodes' bridge: always)."""

    def ensure_network(self) -> bool:
        """Create what the colors need to be reached; True if this call created something."""

    def remove_network(self) -> None:
        """Undo `ensure_network` right after it created something nothing uses yet."""

    def probe_ips(self) -> List[str]:
        """Every address a health probe of either color may go to (their routes are checked first)."""

    def check_capacity(self) -> None:
        """Raise NotEnoughNodes (exit 3) before anything changes if a color cannot get REPLICAS
        tasks (one per node); one engine always can."""

    def check_registry(self) -> None:
        """Preflight, with REGISTRY_USERNAME set: the registry takes the login."""

    def build_image(self, cwd: Path, tag: str, version: str) -> str: ...

    def push_and_pull(self, tag: str) -> None: ...

    def release_images(self) -> Dict[str, float]: ...

    def remove_image(self, ref: str) -> None: ...

    def prune_dangling(self) -> None: ...

    def container(self, color: str) -> Optional[ContainerFact]:
        """The color's container (or service) as a fact; None if there is none."""

    def containers(self) -> Dict[str, ContainerFact]: ...

    def holds_address(self, color: str) -> bool:
        """True only if something of ours of this color runs where `addresses` points."""

    def addresses(self, color: str) -> Route:
        """Where the color answers: what nginx is switched to and what the health gate probes."""

    def color_at(self, route: Optional[Route]) -> Optional[str]:
        """The color a route nginx sends traffic over belongs to, if any."""

    def placement(self, color: str) -> str:
        """Where a color starts, for the phase line: its IP, or "3 task(s) on port 8082"."""

    def run(self, color: str, image: str, version: str) -> None: ...

    def start(self, color: str) -> None:
        """Bring the kept (stopped) color back with the release it had."""

    def gate(self, color: str, prober: Transport) -> Gate:
        """What the health gate (gate.wait_ready) waits on for a color just started: every
        endpoint answering 200 through `prober`, the color failing (stops the wait at once)."""

    def watch(self, color: str) -> Watch:
        """Watch a color that passed its gate, from now on."""

    def status_row(self, color: str, fact: Optional[ContainerFact],
                   report: Optional[HealthReport], route: Optional[RouteReport] = None) -> Dict[str, object]:
        """The color's fields in `status` besides its container, state and version: where it
        answers and its health (`report` each health URL when probing; None: not probed); a
        swarm's tasks also the route the nginx host reaches each by (`route`, when probing)."""

    def stop(self, color: str) -> None:
        """Stop gracefully, kept for rollback."""

    def discard(self, color: str, graceful: bool = False) -> None:
        """A failed release: nothing of the color left running (removed, or scaled to 0).
        `graceful`: requests in flight finish first (after a switch back)."""

    def discarding(self, color: str, graceful: bool = False) -> str:
        """How a log line says `discard` ("removing app-green")."""

    def remove(self, color: str) -> None: ...

    def logs_tail(self, color: str, lines: int = 20) -> List[str]: ...


def probe_endpoints(prober: Transport, endpoints: List[Endpoint], path: str, timeout: float) -> None:
    """Probe each endpoint's health URL; NotHealthyYet naming the endpoint (if it has a name) of
    the first that does not answer 200."""
    for endpoint in endpoints:
        try:
            probe(prober, health_url(endpoint.address, path), timeout)
        except NotHealthyYet as exc:
            raise NotHealthyYet(f"{endpoint.name}: {exc.last}" if endpoint.name else exc.last) from exc
