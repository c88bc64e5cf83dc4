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
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union, cast

import paramiko
import pytest

from pipeline.flows import deploy as flows
from pipeline.core.answers import AccessLogReader, AnswerReader, Tally
from pipeline.core.clock import Clock
from pipeline.core.decide import ContainerFact, color_at, render_include, render_route
from pipeline.core.route import Address, Route, shown
from pipeline.adapters.engine import ContainerWatch, Engine
from pipeline.adapters.nginx_host import LocalHost
from pipeline.adapters.swarm import SwarmEngine, TaskAddress, TaskFact
from pipeline.core.target import HealthReport, RouteReport, Watch
from pipeline.core.errors import (AdminUnavailable, DeployFailed, EngineFailed, RouteRefused, HealthCheckFailed,
                                  IncludeNotLoaded, Interrupted, NginxHostFailed, NotText, NotEnoughNodes,
                                  PipelineError, TaskFailed)
from pipeline.core.gate import Gate, NotHealthyYet, Transport, wait_ready
from pipeline.core.host import CommandResult
from pipeline.core.settings import AppSettings, NetworkSettings, RuntimeSettings, Settings, SwarmSettings
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
    """The fake `pipeline.core.clock.Clock`: time moves only when something sleeps; every sleep is kept.
    `max_sleep`: no single sleep may be longer (a wait that must keep checking fails the test);
    `spins`: whether a sleep of 0 is allowed (False: a loop that spins fails the test);
    `before_sleep`: called with each sleep first (where a signal may arrive: what it raises, the
    sleep that was to come never happens)."""

    def __init__(self, start: float = 1000.0, max_sleep: Optional[float] = None, spins: bool = True,
                 before_sleep: Optional[Callable[[float], None]] = None) -> None:
        self.time = start
        self.sleeps: List[float] = []
        self.max_sleep = max_sleep
        self.spins = spins
        self.before_sleep = before_sleep

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"a negative sleep: {seconds}"
        assert self.max_sleep is None or seconds <= self.max_sleep + 1e-9, f"slept {seconds}s in one go"
        assert self.spins or seconds > 0, "never spins"
        if self.before_sleep is not None:
            self.before_sleep(seconds)
        self.sleeps.append(seconds)
        self.time += seconds


class Strict:
    """The base of every fake here: any member it does not define fails the test, naming it.
    `__getattr__` is typed to return `object`, not Any, so mypy still sees a member a fake lacks
    as missing from the Protocol it is assigned to (the end of this module)."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"{type(self).__name__}.{name} was used, but this fake was not told about it")


class Allowing(Strict):
    """A part of which a test allows a few calls by name, each answering a fixed value
    (`Allowing(check=None, network_exists=False)`); `calls` lists the names called, in order."""

    def __init__(self, **allowed: object) -> None:
        self.__dict__["_allowed"] = allowed
        self.__dict__["calls"] = []

    def __getattr__(self, name: str) -> object:
        if name not in self.__dict__["_allowed"]:
            raise AssertionError(f"unexpected call to {name}")

        def call(*args: object, **kwargs: object) -> object:
            self.__dict__["calls"].append(name)
            return self.__dict__["_allowed"][name]
        return call


class FakeHost(Strict):
    """The nginx host's files, in memory; commands and channels only as a test allows them.

    A file's content is text, or bytes for one that is not UTF-8 text (read_text then raises
    NotText, as the real hosts do); `directories` and `unreadable` (opened: Permission denied,
    looked at: fine) hold what else a path can be. tests/integration/test_nginx_host.py runs the
    same cases against this fake and the real hosts.

    Commands, for the route check of health probes: `routes` (IP -> (exit code, output) of
    `ip -4 route get IP`; any other command fails the test) and `bridges` (the devices that are
    bridges: /sys/class/net/DEV/bridge/bridge_id reads as a bridge's); `runs_commands=False` is an
    SFTP-only account (`true` fails). `route_asks` lists the IPs asked, `batches` the commands of
    each run_steps call (one session each over SSH), `reads` every path read. Channels (health
    probes and the live admin over the nginx host): `channels` "connect" opens a plain socket on
    this machine, "refuse" is the SSH server refusing; `opened` lists (host, port) asked.
    `write_fails`: every atomic write raises it instead (e.g. a signal arriving mid-write).

    `script`: a list of (call, outcome) that every file access and command must follow, in order
    ("read", "write", "run", "run_steps", ...); any call it does not expect fails the test. An
    outcome that is an exception is raised; for a command, the outcome is its result, or a
    function of the call's arguments giving it; `done` says every scripted call was made."""

    description = "fake nginx host"
    part = "nginx host (fake)"

    def __init__(self, routes: Optional[Dict[str, Tuple[int, str]]] = None, bridges: Sequence[str] = (),
                 runs_commands: bool = True, channels: Optional[str] = None,
                 description: str = "fake nginx host", script: Optional[List[Tuple[str, object]]] = None) -> None:
        self.files: Dict[str, Union[str, bytes]] = {}
        self.directories: Set[str] = set()
        self.unreadable: Set[str] = set()
        self.description = description
        self.routes = routes
        self.runs_commands = runs_commands
        self.channels = channels
        self.route_asks: List[str] = []
        self.batches: List[List[List[str]]] = []
        self.reads: List[str] = []
        self.opened: List[Tuple[str, int]] = []
        self.write_fails: Optional[BaseException] = None
        self.script = script
        for device in bridges:
            self.files[f"/sys/class/net/{device}/bridge/bridge_id"] = "8000.0242ac1d0501\n"

    def _step(self, call: str, *args: object) -> object:
        """The script's next call, which must be this one: its outcome (None without a script)."""
        if self.script is None:
            return None
        assert self.script, f"unexpected call {call}{args}"
        expected, outcome = self.script.pop(0)
        assert expected == call, f"expected {expected}, got {call}{args}"
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome(*args) if callable(outcome) else outcome

    def done(self) -> None:
        assert not self.script, f"calls expected but not made: {self.script}"

    def run(self, argv: Sequence[str]) -> CommandResult:
        if self.script is not None:
            return cast(CommandResult, self._step("run", argv))
        argv = list(argv)
        assert self.routes is not None, f"FakeHost.run was used, but this fake was not told about it: {argv}"
        assert argv[:4] == ["ip", "-4", "route", "get"] and len(argv) == 5, f"unexpected command {argv}"
        assert argv[4] in self.routes, f"no answer prepared for {argv}"
        self.route_asks.append(argv[4])
        code, output = self.routes[argv[4]]
        return CommandResult(argv, code, output)

    def run_steps(self, steps: Sequence[Sequence[str]]) -> List[CommandResult]:
        """In order, until one fails; `true` answers as a host that runs commands (or not)."""
        if self.script is not None:
            return cast(List[CommandResult], self._step("run_steps", steps))
        self.batches.append([list(argv) for argv in steps])
        results: List[CommandResult] = []
        for argv in steps:
            if list(argv) == ["true"]:
                results.append(CommandResult(argv, 0 if self.runs_commands else 1,
                                             "" if self.runs_commands else "This service allows sftp connections only."))
            else:
                results.append(self.run(argv))
            if results[-1].code != 0:
                break
        return results

    def open_channel(self, host: str, port: int, timeout: float) -> socket.socket:
        assert self.channels is not None, f"FakeHost.open_channel was used, but this fake was not told about it: {host}:{port}"
        self.opened.append((host, port))
        if self.channels == "refuse":
            raise paramiko.ChannelException(2, "Connect failed")
        assert host == "127.0.0.1", f"a channel to {host}: this fake opens them on this machine only"
        return socket.create_connection((host, port), timeout=timeout)

    def close(self) -> None:
        pass

    def read_text(self, path: str) -> Optional[str]:
        self._step("read", path)
        self.reads.append(path)
        self._open(path)
        data = self.files.get(path)
        if isinstance(data, bytes):
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NotText(self.part, path, data, exc) from exc
        return data

    def write_text_atomic(self, path: str, text: str) -> None:
        self._step("write", path)
        if self.write_fails is not None:
            raise self.write_fails
        self.files[path] = text

    def create_exclusive(self, path: str, text: str) -> bool:
        self._step("create", path)
        if path in self.files:
            return False
        self.files[path] = text
        return True

    def append_text(self, path: str, text: str) -> None:
        self._step("append", path)
        data = self.files.get(path, "")
        self.files[path] = data + text.encode() if isinstance(data, bytes) else data + text

    def remove(self, path: str) -> None:
        self._step("remove", path)
        self.files.pop(path, None)

    def size(self, path: str) -> Optional[int]:
        self._step("size", path)
        if path in self.directories:
            raise NginxHostFailed(self.part, f"looking at {path}", "it is a directory, not a file")
        data = self.files.get(path)
        return None if data is None else len(_raw(data))

    def read_bytes(self, path: str, offset: int, limit: int) -> bytes:
        self._step("read_bytes", path)
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
    """Containers by color (status, version, image) and release images; mutations are logged.

    `calls`: the list mutations are logged to (a test may share it with FakeSwitch to see the
    order of both). A swarm is FakeSwarm. `gone`: the engine stops answering: every `container`
    after the first `looks_before_gone` fails with it, and every stop and remove (logged first)."""

    def __init__(self, settings: Settings, calls: Optional[List[Tuple[object, ...]]] = None) -> None:
        self.settings = settings
        self.boxes: Dict[str, Dict[str, str]] = {}
        self.images: Dict[str, int] = {}
        self.unhealthy: Set[str] = set()     # versions whose health check never passes
        self.sick: Set[str] = set()          # colors whose health answers 503 (the container runs on)
        self.mutations: List[Tuple[object, ...]] = calls if calls is not None else []
        self.logs: List[str] = []
        self._clock = itertools.count(1)
        self.has_network = False
        self.holding = False   # whether a running container holds its color's address (holds_address)
        self.gone: Optional[BaseException] = None
        self.looks_before_gone = 0
        self._looks = 0

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
        self._looks += 1
        if self.gone is not None and self._looks > self.looks_before_gone:
            raise self.gone
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

    @property
    def swarm(self) -> SwarmSettings:
        return self.settings.swarm

    @property
    def runtime(self) -> RuntimeSettings:
        return self.settings.runtime

    # What the real target decides from its facts, run over this fake's facts: the gate, the
    # watch after it, its rows in `status`, how a failed release goes. They only call members
    # this fake has (the `cast` says so to mypy).
    def placement(self, color: str) -> str:
        return Engine.placement(cast(Engine, self), color)

    def gate(self, color: str, prober: Transport) -> Gate:
        return Engine.gate(cast(Engine, self), color, prober)

    def watch(self, color: str) -> Watch:
        return ContainerWatch(cast(Engine, self), color)

    def status_row(self, color: str, fact: Optional[ContainerFact],
                   report: Optional[HealthReport], route: Optional[RouteReport] = None) -> Dict[str, object]:
        return Engine.status_row(cast(Engine, self), color, fact, report, route)

    def discard(self, color: str, graceful: bool = False) -> None:
        Engine.discard(cast(Engine, self), color, graceful)

    def discarding(self, color: str, graceful: bool = False) -> str:
        return Engine.discarding(cast(Engine, self), color, graceful)

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
        if color not in self.boxes:   # as the engine answers: No such container
            raise EngineFailed("docker engine (fake)", f"starting {self.settings.container_name(color)}",
                               f"No such container: {self.settings.container_name(color)}")
        self.boxes[color]["status"] = "running"

    def stop(self, color: str) -> None:
        self.mutations.append(("stop", color))
        if self.gone is not None:
            raise self.gone
        if color in self.boxes:
            self.boxes[color]["status"] = "exited"

    def remove(self, color: str) -> None:
        self.mutations.append(("remove", color))
        if self.gone is not None:
            raise self.gone
        self.boxes.pop(color, None)

    def logs_tail(self, color: str, lines: int = 20) -> List[str]:
        return list(self.logs)

    def release_images(self) -> Dict[str, float]:
        return {ref: float(created) for ref, created in self.images.items()}

    def remove_image(self, ref: str) -> None:
        self.mutations.append(("remove_image", ref))
        assert all(box["image"] != ref for box in self.boxes.values()), f"removed {ref}, which a container uses"
        del self.images[ref]

    def prune_dangling(self) -> None:
        pass


class FakeSwitch(Strict):
    """Where each route points, as ReloadSwitch keeps it. `calls`: a list each route_to is also
    logged to, as ("route_to", route, addresses) (shared with FakeEngine's to see the order);
    `access_log`: nginx's answers are read from this file on this machine, as the reload switch
    reads its access log (else a test sets `reader`). `preview`: whether a preview include is
    configured (NGINX_PREVIEW_INCLUDE); `form`: the live include's form (NGINX_INCLUDE_FORM), which
    decides, as it does for the real switch, whether a route may have several addresses.
    tests/integration/test_contracts.py runs the same cases against this fake and ReloadSwitch."""

    mode = "reload"
    settle_seconds = 0.0   # ReloadSwitch waits 0.3 s for the workers; on a fake clock, nothing to wait for

    def __init__(self, calls: Optional[List[Tuple[object, ...]]] = None, access_log: Optional[str] = None,
                 preview: bool = True, form: str = "set") -> None:
        self.preview = preview
        self.form = form
        self.routes: Dict[str, Optional[Route]] = {LIVE: None, PREVIEW: None}
        self.moves: List[Tuple[str, Route]] = []
        self.calls = calls
        self.access_log = access_log
        # False: the include was written but nginx was not seen loading it (reload mode, a run
        # killed in between): current() raises IncludeNotLoaded, as ReloadSwitch does.
        self.loaded: Dict[str, bool] = {LIVE: True, PREVIEW: True}
        # What nginx answers during a verification window (a test that verifies sets it).
        self.reader: Optional[AnswerReader] = None

    @classmethod
    def configured(cls, settings: Settings, calls: Optional[List[Tuple[object, ...]]] = None,
                   access_log: Optional[str] = None) -> "FakeSwitch":
        """The fake as these settings make the real switch: the include form, a preview include or none."""
        return cls(calls, access_log, preview=settings.nginx_preview_include is not None,
                   form=settings.nginx_include_form)

    def check(self) -> None:
        pass

    def check_answers(self) -> None:
        pass

    def answers(self, route: Route, /) -> AnswerReader:
        if self.access_log is not None:
            return AccessLogReader(LocalHost(), self.access_log, route)
        assert self.reader is not None, "the test verifies, but did not say what nginx answers"
        return self.reader

    def current(self, route: str, /) -> Optional[Route]:
        if not self.loaded[route]:
            raise IncludeNotLoaded(f"nginx was not seen loading the {route} include", self.routes[route])
        return self.routes[route]

    def route_to(self, route: str, address: Route, /) -> None:
        assert isinstance(address, tuple), f"a route is a tuple of addresses, not {address!r}"
        assert route == LIVE or self.preview, f"no include configured for the {route} route"
        # What the include could not say raises as rendering it does (the preview's is one line).
        render_include(address, self.form if route == LIVE else "set")
        if self.calls is not None:
            self.calls.append(("route_to", route, address))
        self.moves.append((route, address))
        self.routes[route] = address
        self.loaded[route] = True

    def describe(self) -> Dict[str, Optional[str]]:
        return {route: str(a[0]) if a else None for route, a in self.routes.items()
                if route == LIVE or self.preview}


class FakeAdmin(Strict):
    """nginx's admin server as a live switch uses it (live_switch.NginxAdmin): what nginx serves
    per route, and what goes wrong. `script`: what the next calls do, each step (call, exception
    or None[, "lands"]); the call must be the one named; it raises the exception instead of
    answering, after storing the address when the step says "lands" (the answer was lost, not the
    request). Once the script is spent, calls just answer. `down_after_put`: the admin takes the
    next PUT, answers it, and from then on every request fails with this exception."""

    url = "http://127.0.0.1:8091"

    def __init__(self, routes: Optional[Dict[str, Route]] = None, stats: Sequence[str] = ()) -> None:
        self.routes: Dict[str, Route] = dict(routes or {})
        self.stats_answers = list(stats)   # what `GET /pipeline/stats` answers, one per call
        self.script: List[Tuple[object, ...]] = []
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
        failure = step[1]
        assert failure is None or isinstance(failure, BaseException), f"a script step that is no failure: {step}"
        return failure, len(step) > 2 and step[2] == "lands"

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
        try:
            render_route(targets)
        except ValueError as exc:   # as the real admin: more than nginx takes is said before sending
            raise AdminUnavailable(self.url, f"cannot set the {route} route to {shown(targets)}: {exc}") from exc
        if self.down is not None:
            raise self.down
        failure, lands = self._step("put")
        if failure is None or lands:
            self.routes[route] = targets
        if failure is not None:
            raise failure
        self.down, self.down_after_put = self.down_after_put, None


    def stats(self) -> str:
        assert self.stats_answers, "nginx's stats were read, but the test did not say what they are"
        return self.stats_answers.pop(0)


class FakeAnswers:
    """The fake `pipeline.core.answers.AnswerReader` (nginx's answers for the new release): each
    read gives the next of `turns`, the last one again and again: a tally (status -> count), or an
    exception it raises. `on_read` runs first at each read; `reads` counts them."""

    unparsed = 0

    def __init__(self, *turns: Union[Dict[int, int], BaseException]) -> None:
        assert turns, "a reader with nothing to answer"
        self.turns = list(turns)
        self.reads = 0
        self.on_read: Callable[[], None] = lambda: None

    def read(self) -> Tally:
        self.reads += 1
        self.on_read()
        turn = self.turns.pop(0) if len(self.turns) > 1 else self.turns[0]
        if isinstance(turn, BaseException):
            raise turn
        return Tally(turn)


class FakeProber(Strict):
    """Where probes run: every color's address is reached over a local bridge. It sends nothing:
    the World's health gate stands in for the gate's probes, and a probe after the gate (while
    holding MIN_READY_SECONDS, the last look before the old color stops) gets the engine's answer."""

    def __init__(self, engine: Optional[FakeEngine] = None, answers: Optional[Dict[str, List[int]]] = None,
                 refuse: Optional[str] = None, where: str = "this machine (fake)",
                 otherwise: Optional[int] = 200, service: Optional[Tuple[str, float, float]] = None,
                 clock: Optional[FakeClock] = None) -> None:
        """`answers`: a table instead (URL -> statuses, one per probe, the last repeated; a URL
        not in it answers `otherwise`, or fails the test if that is None; every address listens); `refuse`: every probe is refused by the
        route check, for this reason. `service` (url, listen_at, healthy_at) on `clock`: one
        service, and only its URL and address may be asked: it refuses connections before
        listen_at, answers 503 before healthy_at and 200 from then on; a connection attempt costs
        1 ms of the clock's time, a GET 2 ms, and `seen` keeps ("connect" | "probe", time) in order
        (a test may add its own marks). With neither an engine nor a table nor a service, any
        probe or connection fails the test (a transport that must not be reached)."""
        self.engine = engine
        self.answers = answers
        self.refuse = refuse
        self.where = where
        self.otherwise = otherwise
        self.service = service
        self.clock = clock
        assert service is None or clock is not None, "a service's times are read on a clock"
        self.asked: List[str] = []   # every URL probed, in order
        self.seen: List[Tuple[str, float]] = []

    def check_route(self, ip: str) -> None:
        pass

    def check_routes(self, ips: Sequence[str]) -> None:
        pass

    def route_to(self, ip: str) -> str:
        if self.refuse is not None:
            raise RouteRefused(f"not probing {ip}: {self.refuse}")
        return "directly on br-fake"

    def get(self, url: str, timeout: float) -> Tuple[int, str]:
        self.asked.append(url)
        if self.refuse is not None:
            raise RouteRefused(f"not probing {url}: {self.refuse}")
        if self.service is not None and self.clock is not None:
            at, listen_at, healthy_at = self.service
            assert url == at, f"a probe of {url}, not of the service at {at}"
            self.seen.append(("probe", self.clock.time))
            self.clock.time += 0.002
            if self.clock.time < listen_at:
                raise NotHealthyYet("connection refused or unreachable")
            return (503, '{"status":"DOWN"}') if self.clock.time < healthy_at else (200, '{"status":"UP"}')
        if self.answers is not None:
            assert url in self.answers or self.otherwise is not None, f"a probe of {url}, which the test did not expect"
            statuses = self.answers.get(url, [self.otherwise or 200])
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            return status, "UP" if status == 200 else "DOWN"
        assert self.engine is not None, f"a probe left for {url} although it should not have"
        return self.engine.answer(url)

    def can_connect(self, ip: str, port: int, timeout: float) -> bool:
        if self.service is not None and self.clock is not None:
            at, listen_at, _ = self.service
            assert f"//{ip}:{port}/" in at and 0 < timeout <= 1, f"a connection to {ip}:{port} ({timeout}s)"
            self.seen.append(("connect", self.clock.time))
            self.clock.time += 0.001   # a refused or accepted connect on a local bridge
            return self.clock.time >= listen_at
        if self.answers is not None:
            return True
        assert self.engine is not None, f"a connection to {ip}:{port} was tried although it should not have"
        return any(self.engine.holds_address(c) for c in ("blue", "green") if self.settings_ip(c) == ip)

    def settings_ip(self, color: str) -> str:
        assert self.engine is not None
        return self.engine.settings.ip_of(color)


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

    def __init__(self, preview: bool = True, keep_releases: int = 5, verify_seconds: float = 0,
                 swarm_nodes: int = 0, **settings: object) -> None:
        """`verify_seconds`: the window after the switch (nginx's answers: `NginxAnswers`);
        `swarm_nodes`: TARGET=swarm on that many nodes (`FakeSwarm`; REPLICAS given or 2)."""
        if swarm_nodes:
            settings = {"target": "swarm", "registry": "r:5001", "nginx_include_form": "upstream", **settings}
        self.settings = Settings(app_name="app", build_command=(), nginx_include=INCLUDE,
                                 nginx_preview_include=PREVIEW_INCLUDE if preview else None,
                                 drain_seconds=1.0, keep_releases=keep_releases,
                                 verify_seconds=verify_seconds,
                                 **settings)         # type: ignore[arg-type]
        self.host = FakeHost()
        self.engine = FakeSwarm(self.settings, swarm_nodes) if swarm_nodes else FakeEngine(self.settings)
        self.switch = FakeSwitch.configured(self.settings)
        self.switch.reader = NginxAnswers(self)
        self.bad_answers: Set[str] = set()   # versions nginx gets 5xx from (their health answers 200)
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
        health_gate = self._swarm_gate if isinstance(self.engine, FakeSwarm) else self._health_gate
        return flows.Context(settings, self.engine, self.host, self.switch, Path("/work"), {"BUILD_TAG": "unit"},
                             FakeProber(self.engine), self.now, clock=self.clock, health_gate=health_gate)

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

    def _swarm_gate(self, gate: Gate, interval: float, timeout: float, clock: Clock) -> int:
        """A swarm color's gate is the real one (wait_ready) over the fake's tasks, on the fake
        clock; then `!dies` fails the color's first task, `!sickens` makes every task answer 503."""
        assert isinstance(self.engine, FakeSwarm)
        attempts = wait_ready(gate, interval, timeout, clock)
        color = next(str(m[1]) for m in reversed(self.engine.mutations) if m[0] in ("run", "start"))
        if self.after_gate == "dies":
            self.engine.failing.add(self.engine.boxes[color]["version"])
        elif self.after_gate == "sickens":
            self.engine.sick.add(color)
        self.after_gate = ""
        return attempts

    # -- steps ---------------------------------------------------------------------------------

    def step(self, command: str) -> Tuple[int, str]:
        """`deploy v1`, `stage v2`, `promote`, `rollback`, `rollback --to v1`; a trailing
        `!unhealthy` makes that release fail its health check, `!interrupt-drain` sends SIGTERM
        at the first wait after the switch (the drain; the window with `verify_seconds`), `!dies` /
        `!sickens` make the release this step brings up exit / answer 503 right after it passed its
        health gate, `!5xx` makes nginx get 5xx from it (its health
        answers 200), `!task-fails` fails one of its swarm tasks right after it starts. Returns the
        exit code and the error's message."""
        words = command.split()
        if "!unhealthy" in words:
            self.engine.unhealthy.add(words[1])
        if "!5xx" in words:
            self.bad_answers.add(words[1])
        if "!task-fails" in words:
            assert isinstance(self.engine, FakeSwarm), "!task-fails is for a swarm World"
            self.engine.failing.add(words[1])
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
        color = self.engine.color_at(address)
        assert color is not None, f"nginx points at {address}, no color's address"
        box = self.engine.boxes.get(color)
        assert box is not None and box["status"] == "running", f"nginx points at {color}, which is not running"
        return box["version"], color

    @property
    def record_path(self) -> str:
        return str(self.settings.releases_path())


class NginxAnswers:
    """What nginx answered for the live route during a verification window (FakeSwitch.reader):
    100 requests, 30 of them 5xx when the release serving live is one of the World's `bad_answers`."""

    unparsed = 0

    def __init__(self, world: World) -> None:
        self.world = world

    def read(self) -> Tally:
        serving = self.world.serving()
        bad = serving is not None and serving[0] in self.world.bad_answers
        return Tally({200: 70, 502: 30} if bad else {200: 100})


class FakeSwarm(FakeEngine):
    """The swarm target (TARGET=swarm) over FakeEngine's containers by color: a color that runs is
    REPLICAS tasks, one on each of the first nodes that are up, answering at its node's address on
    the color's port. `down`: nodes that are not ready; `failing`: versions whose first task fails
    right after it starts. What the swarm decides from its tasks (the gate, the watch, `status`
    rows, its addresses) is SwarmEngine's own code over these tasks.

    A test may script a color's tasks instead: `tasks_of[color]` is then what the manager reports
    for it (the color's service runs while one of them does), and `events` ((time, (color, slot,
    TaskFact)), read on `clock`) replace a scripted task once the clock reaches the time, so tasks
    change while a flow waits. Discarding a color (scaled to 0) drops its script. `gone`: the
    manager stops answering: besides FakeEngine's, every look at the tasks (so at the addresses)
    and every discard (logged first) fails with it."""

    def __init__(self, settings: Settings, nodes: int = 3, calls: Optional[List[Tuple[object, ...]]] = None,
                 clock: Optional[Clock] = None) -> None:
        super().__init__(settings, calls)
        self.nodes = [(f"node-{i}", f"10.99.0.{10 + i}") for i in range(1, nodes + 1)]
        self.down: Set[str] = set()
        self.failing: Set[str] = set()
        self.tasks_of: Dict[str, List[TaskFact]] = {}
        self.task_clock = clock
        self.events: List[Tuple[float, Tuple[str, int, TaskFact]]] = []

    def tasks(self, color: str) -> List[TaskFact]:
        if self.gone is not None:
            raise self.gone
        if self.task_clock is not None:
            for at, (c, slot, fact) in list(self.events):
                if self.task_clock.now() >= at:
                    self.tasks_of[c][slot] = fact
                    self.events.remove((at, (c, slot, fact)))
        if color in self.tasks_of:
            return list(self.tasks_of[color])
        box = self.boxes.get(color)
        if box is None or box["status"] != "running":
            return []
        up = [node for node in self.nodes if node[0] not in self.down][:self.settings.replicas]
        return [self._task(color, box, i, node, addr, failed=i == 0 and box["version"] in self.failing)
                for i, (node, addr) in enumerate(up)]

    def _task(self, color: str, box: Dict[str, str], i: int, node: str, addr: str, failed: bool) -> TaskFact:
        return TaskFact(task_id=f"{color}-{box['version']}-{i + 1}", color=color, slot=i + 1, node_id=node, node=node,
                        node_addr=addr, port=self.settings.port_of(color),
                        state="failed" if failed else "running", desired_state="shutdown" if failed else "running",
                        version=box["version"], image=box["image"],
                        message="task: non-zero exit (1)" if failed else "started", exit_code=1 if failed else None)

    def answer(self, url: str) -> Tuple[int, str]:
        here = next((t for c in ("blue", "green") for t in self.task_addresses(c)
                     if f"//{t.node_addr}:{t.port}/" in url), None)
        if here is None:
            raise NotHealthyYet("connection refused or unreachable")
        color = next(c for c in ("blue", "green") if self.settings.port_of(c) == here.port)
        if self.boxes[color]["version"] in self.unhealthy or color in self.sick:
            return 503, '{"status":"DOWN"}'
        return 200, '{"status":"UP"}'

    def converged(self, color: str) -> bool:
        return len(self.task_addresses(color)) >= self.settings.replicas

    def check_tasks(self, color: str) -> None:
        for task in self.tasks(color):
            if task.state == "failed":
                raise TaskFailed(self.settings.container_name(color), task.task_id, task.node, task.message)

    def check_capacity(self) -> None:
        ready = [node for node, _ in self.nodes if node not in self.down]
        if len(ready) < self.settings.replicas:
            raise NotEnoughNodes(self.settings.replicas, ready, [f"{node} (down, active)" for node in sorted(self.down)])

    def probe_ips(self) -> List[str]:
        return [addr for _, addr in self.nodes]

    def container(self, color: str) -> Optional[ContainerFact]:
        if color in self.tasks_of:   # the scripted service: running while a task of it runs
            tasks = self.tasks(color)
            first = tasks[0] if tasks else None
            return ContainerFact(color, self.settings.container_name(color),
                                 "running" if any(t.running for t in tasks) else "stopped",
                                 first.version if first else "", first.image if first else "", None)
        fact = super().container(color)
        return None if fact is None else replace(fact, ip=None)

    ensure_network = SwarmEngine.ensure_network   # nothing to create: tasks publish their node's port
    network_exists = SwarmEngine.network_exists
    remove_network = SwarmEngine.remove_network

    def task_addresses(self, color: str) -> List[TaskAddress]:
        return SwarmEngine.task_addresses(cast(SwarmEngine, self), color)   # the swarm's own, over these tasks

    addresses = SwarmEngine.addresses
    color_at = SwarmEngine.color_at
    holds_address = SwarmEngine.holds_address
    placement = SwarmEngine.placement
    gate = SwarmEngine.gate
    watch = SwarmEngine.watch
    status_row = SwarmEngine.status_row
    discarding = SwarmEngine.discarding

    def discard(self, color: str, graceful: bool = False) -> None:
        """Scaled to 0, its spec kept (as SwarmEngine's): its tasks are gone, scripted or not."""
        self.mutations.append(("discard", color))
        if self.gone is not None:
            raise self.gone
        self.tasks_of.pop(color, None)
        if color in self.boxes:
            self.boxes[color]["status"] = "exited"


if TYPE_CHECKING:
    # Every fake is what it stands for, as mypy sees it (pyproject's [tool.mypy] checks this
    # module): a fake that drifts from its Protocol's signatures fails the type check.
    from pipeline.core.answers import Stats
    from pipeline.core.gate import Probing
    from pipeline.core.host import NginxHost
    from pipeline.core.switch import TrafficSwitch
    from pipeline.core.target import Target

    _settings = Settings()
    _target: Target = FakeEngine(_settings)
    _swarm: Target = FakeSwarm(_settings, 3)
    _switch: TrafficSwitch = FakeSwitch()
    _host: NginxHost = FakeHost()
    _clock: Clock = FakeClock()
    _world_clock: Clock = WorldClock(World())
    _probing: Probing = FakeProber()
    _transport: Transport = FakeProber()
    _stats: Stats = FakeAdmin()
    _answers: AnswerReader = FakeAnswers({200: 1})
    _world_answers: AnswerReader = NginxAnswers(World())
