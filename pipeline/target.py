"""Where the release runs: the one small interface every target implements.

- Engine (TARGET=docker, engine.py): one engine, one container per color at its fixed IP.
- SwarmEngine (TARGET=swarm, swarm.py): a swarm manager, one replicated service per color whose
  tasks publish the color's port on their nodes.

The deploy flow only calls what is named here, so deploy.py reads the same runbook for both;
`compose.make_target` picks one. The implementations import this module's names, never the
other way round.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Protocol

from .decide import ContainerFact, Route


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

    def run(self, color: str, image: str, version: str) -> None: ...

    def start(self, color: str) -> None:
        """Bring the kept (stopped) color back with the release it had."""

    def stop(self, color: str) -> None:
        """Stop gracefully, kept for rollback."""

    def discard(self, color: str) -> None:
        """After a failed start: nothing of the color left running (removed, or scaled to 0)."""

    def remove(self, color: str) -> None: ...

    def logs_tail(self, color: str, lines: int = 20) -> List[str]: ...
