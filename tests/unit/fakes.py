"""Strict fakes at the flows' seam (deploy.Context): the nginx host's files, the docker engine,
the traffic switch and the health gate. Like invoke's MockContext they fail on any call they were
not told about: every method a flow may call is written out here, anything else is an
AssertionError naming the call. They keep just enough state to act like the real parts."""
from __future__ import annotations

import itertools
import signal
import socket
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Set, Tuple, Union

import pytest

from pipeline.flows import deploy as flows
from pipeline.core.answers import AnswerReader
from pipeline.core.clock import Clock
from pipeline.core.decide import Address, ContainerFact, Route, color_at
from pipeline.adapters.engine import Engine
from pipeline.core.errors import (DeployFailed, HealthCheckFailed, IncludeNotLoaded, Interrupted, NginxHostFailed, NotText,
                             PipelineError)
from pipeline.core.gate import Gate, NotHealthyYet
from pipeline.core.settings import AppSettings, NetworkSettings, Settings
from pipeline.core.switch import LIVE, PREVIEW


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flows under test reach nothing: any connection attempt fails the test. Autouse in every
    module that imports it."""
    def refuse(sock: socket.socket, address: object, *args: object) -> None:
        raise AssertionError(f"a flow under test tried to connect to {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)

INCLUDE = PurePosixPath("/nginx/service-url.inc")
PREVIEW_INCLUDE = PurePosixPath("/nginx/service-url-preview.inc")


class FakeClock:
    """The fake `pipeline.core.clock.Clock`: time moves only when something sleeps; every sleep is kept."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.sleeps: List[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"a negative sleep: {seconds}"
        self.sleeps.append(seconds)
        self.time += seconds


class Strict:
    def __getattr__(self, name: str):
        raise AssertionError(f"{type(self).__name__}.{name} was used, but this fake was not told about it")


class FakeHost(Strict):
    """The nginx host's files, in memory. No command runs and no channel opens on it.

    A file's content is text, or bytes for one that is not UTF-8 text (read_text then raises
    NotText, as the real hosts do); `directories` and `unreadable` (opened: Permission denied,
    looked at: fine) hold what else a path can be. tests/integration/test_nginx_host.py runs the
    same cases against this fake and the real hosts."""

    description = "fake nginx host"
    part = "nginx host (fake)"

    def __init__(self) -> None:
        self.files: Dict[str, Union[str, bytes]] = {}
        self.directories: Set[str] = set()
        self.unreadable: Set[str] = set()

    def read_text(self, path: str) -> Optional[str]:
        self._open(path)
        data = self.files.get(path)
        if isinstance(data, bytes):
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NotText(self.part, path, data, exc) from exc
        return data

    def write_text_atomic(self, path: str, text: str) -> None:
        self.files[path] = text

    def create_exclusive(self, path: str, text: str) -> bool:
        if path in self.files:
            return False
        self.files[path] = text
        return True

    def append_text(self, path: str, text: str) -> None:
        data = self.files.get(path, "")
        self.files[path] = data + text.encode() if isinstance(data, bytes) else data + text

    def remove(self, path: str) -> None:
        self.files.pop(path, None)

    def size(self, path: str) -> Optional[int]:
        if path in self.directories:
            raise NginxHostFailed(self.part, f"looking at {path}", "it is a directory, not a file")
        data = self.files.get(path)
        return None if data is None else len(_raw(data))

    def read_bytes(self, path: str, offset: int, limit: int) -> bytes:
        self._open(path)
        if path not in self.files:
            raise NginxHostFailed(self.part, f"reading {path}", "No such file or directory") \
                from FileNotFoundError(2, "No such file or directory")
        return _raw(self.files[path])[offset:offset + limit]

    def _open(self, path: str) -> None:
        if path in self.directories:
            raise NginxHostFailed(self.part, f"reading {path}", "Is a directory") \
                from IsADirectoryError(21, "Is a directory")
        if path in self.unreadable:
            raise NginxHostFailed(self.part, f"reading {path}", "Permission denied") \
                from PermissionError(13, "Permission denied")


def _raw(data: Union[str, bytes]) -> bytes:
    return data if isinstance(data, bytes) else data.encode()


class FakeEngine(Strict):
    """Containers by color (status, version, image) and release images; mutations are logged."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.boxes: Dict[str, Dict[str, str]] = {}
        self.images: Dict[str, int] = {}
        self.unhealthy: Set[str] = set()     # versions whose health check never passes
        self.sick: Set[str] = set()          # colors whose health answers 503 (the container runs on)
        self.mutations: List[Tuple[str, ...]] = []
        self._clock = itertools.count(1)
        self.has_network = False
        self.holding = False   # whether a running container holds its color's address (holds_address)

    def answer(self, url: str) -> Tuple[int, str]:
        """What the color at the URL's address answers its health probe, if it runs."""
        color = next(c for c in ("blue", "green") if f"//{self.settings.ip_of(c)}:" in url)
        box = self.boxes.get(color)
        if box is None or box["status"] != "running":
            raise NotHealthyYet("connection refused or unreachable")
        return (503, '{"status":"DOWN"}') if color in self.sick else (200, '{"status":"UP"}')

    def ensure_network(self) -> bool:
        created, self.has_network = not self.has_network, True
        return created

    def network_exists(self) -> bool:
        return self.has_network

    def remove_network(self) -> None:
        self.mutations.append(("remove_network",))
        self.has_network = False

    def container(self, color: str) -> Optional[ContainerFact]:
        box = self.boxes.get(color)
        if box is None:
            return None
        return ContainerFact(color, self.settings.container_name(color), box["status"], box["version"],
                             box["image"], self.settings.ip_of(color))

    def containers(self) -> Dict[str, ContainerFact]:
        return {color: fact for color in ("blue", "green") if (fact := self.container(color))}

    def holds_address(self, color: str) -> bool:
        # The gate before any probe of a color's address. Unless a test says the colors hold their
        # addresses (`holding`), none does, so nothing is probed outside the gate; a probe never
        # leaves anyway (FakeProber answers from `answer`).
        box = self.boxes.get(color)
        return self.holding and box is not None and box["status"] == "running"

    def at_fixed_ip(self, fact: ContainerFact) -> bool:
        return True

    def probe_ips(self) -> List[str]:
        return [self.settings.ip_of(color) for color in ("blue", "green")]

    def addresses(self, color: str) -> Route:
        return (Address(self.settings.ip_of(color), self.settings.app_port),)

    def color_at(self, route: Optional[Route]) -> Optional[str]:
        return color_at(route, lambda a: a.ip, self.settings.color_ips)

    def check_capacity(self) -> None:
        pass

    # The sections the one engine's methods below read (World.context settles `settings`).
    @property
    def app(self) -> AppSettings:
        return self.settings.app

    @property
    def network(self) -> NetworkSettings:
        return self.settings.network

    # What the one engine decides from its facts, run over this fake's facts: the gate, the
    # watch after it, its rows in `status`, how a failed release goes.
    placement = Engine.placement
    gate = Engine.gate
    watch = Engine.watch
    status_row = Engine.status_row
    discard = Engine.discard
    discarding = Engine.discarding

    def build_image(self, cwd: Path, tag: str, version: str) -> str:
        self.mutations.append(("build_image", tag))
        self.images[tag] = next(self._clock)
        return f"sha256:{tag}"

    def check_registry(self) -> None:
        pass   # the registry takes the login (with REGISTRY set)

    def push_and_pull(self, tag: str) -> None:
        self.mutations.append(("push_and_pull", tag))
        assert tag in self.images, f"pushed {tag}, which was never built"

    def run(self, color: str, image: str, version: str) -> None:
        self.mutations.append(("run", color, version))
        self.boxes.pop(color, None)
        self.sick.discard(color)
        if image not in self.images:
            raise DeployFailed(f"cannot start {self.settings.container_name(color)}: no such image {image}")
        self.boxes[color] = {"status": "running", "version": version, "image": image}

    def start(self, color: str) -> None:
        self.mutations.append(("start", color))
        assert color in self.boxes, f"start of a container that does not exist: {color}"
        self.boxes[color]["status"] = "running"

    def stop(self, color: str) -> None:
        self.mutations.append(("stop", color))
        if color in self.boxes:
            self.boxes[color]["status"] = "exited"

    def remove(self, color: str) -> None:
        self.mutations.append(("remove", color))
        self.boxes.pop(color, None)

    def logs_tail(self, color: str, lines: int = 20) -> List[str]:
        return []

    def release_images(self) -> Dict[str, float]:
        return {ref: float(created) for ref, created in self.images.items()}

    def remove_image(self, ref: str) -> None:
        self.mutations.append(("remove_image", ref))
        assert all(box["image"] != ref for box in self.boxes.values()), f"removed {ref}, which a container uses"
        del self.images[ref]

    def prune_dangling(self) -> None:
        pass


class FakeSwitch(Strict):
    mode = "reload"
    settle_seconds = 0.0

    def __init__(self) -> None:
        self.routes: Dict[str, Optional[Route]] = {LIVE: None, PREVIEW: None}
        self.moves: List[Tuple[str, Route]] = []
        # False: the include was written but nginx was not seen loading it (reload mode, a run
        # killed in between): current() raises IncludeNotLoaded, as ReloadSwitch does.
        self.loaded: Dict[str, bool] = {LIVE: True, PREVIEW: True}
        # What nginx answers during a verification window (a test that verifies sets it).
        self.reader: Optional[AnswerReader] = None

    def check(self) -> None:
        pass

    def check_answers(self) -> None:
        pass

    def answers(self, route: Route) -> AnswerReader:
        assert self.reader is not None, "the test verifies, but did not say what nginx answers"
        return self.reader

    def current(self, route: str) -> Optional[Route]:
        if not self.loaded[route]:
            raise IncludeNotLoaded(f"nginx was not seen loading the {route} include", self.routes[route])
        return self.routes[route]

    def route_to(self, route: str, address: Route) -> None:
        assert isinstance(address, tuple), f"a route is a tuple of addresses, not {address!r}"
        self.moves.append((route, address))
        self.routes[route] = address
        self.loaded[route] = True

    def describe(self) -> Dict[str, Optional[str]]:
        return {route: str(a[0]) if a else None for route, a in self.routes.items()}


class FakeAdmin(Strict):
    """nginx's admin server as a live switch uses it (live_switch.NginxAdmin): what nginx serves
    per route, and what goes wrong. `script`: what the next calls do, each step (call, exception
    or None[, "lands"]); the call must be the one named; it raises the exception instead of
    answering, after storing the address when the step says "lands" (the answer was lost, not the
    request). Once the script is spent, calls just answer. `down_after_put`: the admin takes the
    next PUT, answers it, and from then on every request fails with this exception."""

    url = "http://127.0.0.1:8091"

    def __init__(self, routes: Optional[Dict[str, Route]] = None) -> None:
        self.routes: Dict[str, Route] = dict(routes or {})
        self.script: List[tuple] = []
        self.calls: List[Tuple[str, str]] = []
        self.down_after_put: Optional[BaseException] = None
        self.down: Optional[BaseException] = None

    def files(self) -> Dict[str, str]:
        """The includes nginx reads at start: the World's."""
        return {LIVE: str(INCLUDE), PREVIEW: str(PREVIEW_INCLUDE)}

    def _step(self, call: str) -> Tuple[Optional[BaseException], bool]:
        if not self.script:
            return None, False
        step = self.script.pop(0)
        assert step[0] == call, f"the admin expected {step[0]}, got {call}"
        return step[1], len(step) > 2 and step[2] == "lands"

    def get(self, route: str) -> Optional[Route]:
        self.calls.append(("get", route))
        if self.down is not None:
            raise self.down
        failure, _ = self._step("get")
        if failure is not None:
            raise failure
        return self.routes.get(route)

    def put(self, route: str, targets: Route) -> None:
        self.calls.append(("put", route))
        if self.down is not None:
            raise self.down
        failure, lands = self._step("put")
        if failure is None or lands:
            self.routes[route] = targets
        if failure is not None:
            raise failure
        self.down, self.down_after_put = self.down_after_put, None


class FakeProber(Strict):
    """Where probes run: every color's address is reached over a local bridge. It sends nothing:
    the World's health gate stands in for the gate's probes, and a probe after the gate (while
    holding MIN_READY_SECONDS, the last look before the old color stops) gets the engine's answer."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def check_route(self, ip: str) -> None:
        pass

    def check_routes(self, ips: List[str]) -> None:
        pass

    def get(self, url: str, timeout: float) -> Tuple[int, str]:
        return self.engine.answer(url)


class WorldClock(FakeClock):
    """The World's FakeClock: a sleep may be where SIGTERM arrives (`!interrupt-drain`)."""

    def __init__(self, world: "World") -> None:
        super().__init__(0.0)
        self.world = world

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.world.interrupt_drain and seconds > 0:
            self.world.interrupt_drain = False
            raise Interrupted(signal.SIGTERM)


class World:
    """One app on the fakes, driven by the same steps a user types."""

    def __init__(self, preview: bool = True, keep_releases: int = 5, **settings: object) -> None:
        self.settings = Settings(app_name="app", build_command=(), nginx_include=INCLUDE,
                                 nginx_preview_include=PREVIEW_INCLUDE if preview else None,
                                 drain_seconds=1.0, keep_releases=keep_releases,
                                 verify_seconds=0,   # the window has its own tests (test_verify.py)
                                 **settings)         # type: ignore[arg-type]
        self.host = FakeHost()
        self.engine = FakeEngine(self.settings)
        self.switch = FakeSwitch()
        self.interrupt_drain = False
        self.clock = WorldClock(self)   # the fake clock: only `sleep` moves it
        self.after_gate = ""        # "dies" / "sickens": what the next release does right after its gate

    @property
    def now(self) -> float:
        return self.clock.time

    @property
    def sleeps(self) -> List[float]:
        return self.clock.sleeps

    # -- the seam ------------------------------------------------------------------------------

    def context(self, version: Optional[str] = None) -> flows.Context:
        # As compose does: the settings settled (the version) before any part is handed them.
        settings = replace(self.settings, app_version=version)
        self.engine.settings = settings
        return flows.Context(settings, self.engine, self.host, self.switch, Path("/work"), {"BUILD_TAG": "unit"},
                             FakeProber(self.engine), self.now, clock=self.clock, health_gate=self._health_gate)

    def _health_gate(self, gate: Gate, interval: float, timeout: float, clock: Clock) -> int:
        assert clock is self.clock, "the gate waits on the context's clock"
        assert callable(gate.can_connect), "the port check goes with the gate"
        gate.check_alive()
        url = gate.what
        color = next(c for c in ("blue", "green") if f"//{self.settings.ip_of(c)}:" in url)
        if self.engine.boxes[color]["version"] in self.engine.unhealthy:
            raise HealthCheckFailed(url, 3, "HTTP 503 'starting'")
        if self.after_gate == "dies":       # answered 200 once, then its process exited
            self.engine.boxes[color]["status"] = "exited"
        elif self.after_gate == "sickens":  # answered 200 once, then 503 from then on
            self.engine.sick.add(color)
        self.after_gate = ""
        return 1

    # -- steps ---------------------------------------------------------------------------------

    def step(self, command: str) -> Tuple[int, str]:
        """`deploy v1`, `stage v2`, `promote`, `rollback`, `rollback --to v1`; a trailing
        `!unhealthy` makes that release fail its health check, `!interrupt-drain` sends SIGTERM
        during the drain, `!dies` / `!sickens` make the release this step brings up exit / answer
        503 right after it passed its health gate. Returns the exit code and the error's message."""
        words = command.split()
        if "!unhealthy" in words:
            self.engine.unhealthy.add(words[1])
        self.interrupt_drain = "!interrupt-drain" in words
        self.after_gate = "dies" if "!dies" in words else "sickens" if "!sickens" in words else ""
        words = [w for w in words if not w.startswith("!")]
        try:
            if words[0] == "deploy":
                flows.deploy(self.context(words[1]))
            elif words[0] == "stage":
                flows.stage(self.context(words[1]))
            elif words[0] == "promote":
                flows.promote(self.context())
            elif words[0] == "rollback":
                flows.rollback(self.context(), words[2] if len(words) > 2 else None)
            else:
                raise AssertionError(f"unknown step {command!r}")
        except (PipelineError, Interrupted) as exc:
            return exc.exit_code, str(exc)
        return 0, ""

    # -- what a test looks at ------------------------------------------------------------------

    def serving(self) -> Optional[Tuple[str, str]]:
        """(version, color) of what nginx sends live traffic to, if anything."""
        address = self.switch.routes[LIVE]
        if address is None:
            return None
        color = next(c for c in ("blue", "green") if self.settings.ip_of(c) == address[0].ip)
        box = self.engine.boxes.get(color)
        assert box is not None and box["status"] == "running", f"nginx points at {color}, which is not running"
        return box["version"], color

    @property
    def record_path(self) -> str:
        return str(self.settings.releases_path())
