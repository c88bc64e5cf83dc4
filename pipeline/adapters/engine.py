"""The Docker engine, through the docker SDK: network, images, the two color containers."""
from __future__ import annotations

import http.client
import logging
import re
from collections import deque
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple, Type

import docker
import docker.client
import docker.errors
import docker.types
import requests.exceptions
import urllib3.exceptions

from pipeline.adapters import layered
from pipeline.core.decide import ContainerFact, color_at
from pipeline.core.route import Address, Route, health_url
from pipeline.core.errors import ContainerExited, DeployFailed, EngineFailed, OutsideFailure, PreflightError, RegistryFailed
from pipeline.core.clock import SYSTEM, Clock
from pipeline.core.gate import Gate, Transport, connect_check, probe
from pipeline.core.settings import (COLORS, AppSettings, BuildSettings, NetworkSettings, RegistrySettings,
                                     RuntimeSettings, SwarmSettings)
from pipeline.core.target import Endpoint, HealthReport, OneOff, OutputLine, RouteReport

log = logging.getLogger("pipeline")

LABEL_APP = "pipeline.app"
LABEL_COLOR = "pipeline.color"
LABEL_VERSION = "pipeline.version"
# A one-off container (the release phase) carries this label besides the app's and the version's.
LABEL_ROLE = "pipeline.role"
RELEASE_PHASE_ROLE = "release-phase"
# How often a one-off container's state and new output are read.
ONE_OFF_POLL = 0.5

# What the docker SDK raises when the engine errs, goes away or does not answer: its own errors,
# requests' (the HTTP client under it) and urllib3's (read straight from a stream), the socket's.
LIBRARY_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException,
                  urllib3.exceptions.HTTPError, OSError)


class Images:
    """Release images on one engine (build, push and pull, retention), with errors turned into
    pipeline's own: the single engine's, and a swarm manager's own (swarm.py builds there)."""

    def __init__(self, client: Any, app: AppSettings, build: BuildSettings, runtime: RuntimeSettings,
                 registry: RegistrySettings, where: str = "the local socket") -> None:
        self.client = client
        self.api = client.api
        self.app, self.build, self.runtime, self.registry = app, build, runtime, registry
        self.part = f"docker engine at {where}"

    @contextmanager
    def _calling(self, action: str, error: Type[OutsideFailure] = EngineFailed,
                 part: Optional[str] = None) -> Iterator[None]:
        """Turn whatever the docker SDK raises inside into `error`, naming the part and the action."""
        try:
            yield
        except LIBRARY_ERRORS as exc:
            raise error(part or self.part, action, _reason(exc, self.runtime.network_timeout)) from exc

    def check_registry(self) -> None:
        """Preflight, with REGISTRY_USERNAME set: the registry takes the login (through the engine)."""
        refused = registry_login(self.client, self.registry, self.runtime.network_timeout, reauth=True)
        if refused is not None:
            raise PreflightError(f"registry {self.registry.registry}: login as {self.registry.registry_username} "
                                 f"failed: {refused}")


    # -- images --------------------------------------------------------------------------------

    def build_image(self, cwd: Path, tag: str, version: str) -> str:
        """Build the release image, streaming the build's output; returns the image id."""
        build = self.build
        context = build.build_context if build.build_context.is_absolute() else cwd / build.build_context
        dockerfile = build.dockerfile if build.dockerfile.is_absolute() else cwd / build.dockerfile
        labels = {LABEL_APP: self.app.app_name, LABEL_VERSION: version}
        if build.image_build == "layered":   # from the jar alone, no Dockerfile: layered.py
            with self._calling(f"building image {tag} from the jar on {build.base_image}"):
                return layered.build_image(self.api, cwd, tag, labels, build, self.app.app_port)
        image_id = None
        last: List[str] = []
        try:
            for chunk in self.api.build(path=str(context), dockerfile=str(dockerfile.resolve()), tag=tag,
                                        buildargs=dict(build.build_args), labels=labels, rm=True,
                                        forcerm=True, decode=True):
                if "stream" in chunk:
                    for line in chunk["stream"].splitlines():
                        if line.strip():
                            log.info("    | %s", line.rstrip())
                            last = (last + [line.rstrip()])[-20:]
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    raise DeployFailed(f"docker build of {tag} failed: {chunk['error'].strip()}", last)
        except LIBRARY_ERRORS as exc:
            raise EngineFailed(self.part, f"building image {tag}", _reason(exc, self.runtime.network_timeout), last) from exc
        if image_id is None:
            with self._calling(f"inspecting image {tag}"):
                image_id = self.api.inspect_image(tag)["Id"]
        return str(image_id)

    def push_and_pull(self, tag: str) -> str:
        """Push the release to the registry, then pull it back as the target engine would; the
        registry's digest of the manifest it took (what `repository@digest` pulls, on any node)."""
        registry = self.registry
        auth = None
        if registry.registry_username:
            # Checked by check_registry in preflight; the engine takes the credentials per request.
            auth = {"username": registry.registry_username, "password": registry.registry_password.reveal()}
        repository, _, version = tag.rpartition(":")
        part = f"registry {registry.registry}"
        digests: List[str] = []
        for verb, stream in (("push", self.api.push), ("pull", self.api.pull)):
            # NETWORK_TIMEOUT bounds each wait for the engine's next progress line: a registry that
            # never answers leaves the engine silent, and the push fails instead of hanging.
            with self._calling(f"docker {verb} {tag}", RegistryFailed, part):
                for chunk in stream(repository, tag=version, stream=True, decode=True, auth_config=auth):
                    if "error" in chunk:
                        raise RegistryFailed(part, f"docker {verb} {tag}", str(chunk["error"]).strip())
                    digests += _digest_in(chunk)
            log.info("    docker %s %s: done", verb, tag)
        if not digests:   # an engine that did not say: what it recorded for the repository
            with self._calling(f"inspecting image {tag}"):
                found = self.api.inspect_image(tag).get("RepoDigests") or []
            digests = [ref.partition("@")[2] for ref in found if ref.partition("@")[0] == repository]
        if not digests:
            log.warning("    the registry named no digest for %s: its image id stands for it", tag)
            return ""
        log.info("    %s is %s@%s", tag, repository, digests[0])
        return digests[0]

    def release_images(self) -> Dict[str, float]:
        """This app's release images: reference -> creation time (for retention)."""
        images = {}
        with self._calling("listing release images"):
            found = self.api.images(filters={"label": f"{LABEL_APP}={self.app.app_name}"})
        for image in found:
            for ref in image.get("RepoTags") or []:
                if ref != "<none>:<none>":
                    images[ref] = float(image.get("Created", 0))
        return images

    def remove_image(self, ref: str) -> None:
        try:
            self.api.remove_image(ref)
        except LIBRARY_ERRORS as exc:
            log.warning("    could not remove image %s: %s", ref, _reason(exc, self.runtime.network_timeout))

    def prune_dangling(self) -> None:
        try:
            # Only this app's: another app's build in progress on the same engine has dangling
            # layers too, and pruning them makes its build fail.
            self.api.prune_images(filters={"dangling": True, "label": f"{LABEL_APP}={self.app.app_name}"})
        except LIBRARY_ERRORS as exc:
            log.warning("    could not prune dangling images: %s", _reason(exc, self.runtime.network_timeout))


class Engine(Images):
    """The few engine operations a deploy needs, with errors turned into pipeline's own."""

    def __init__(self, client: Any, app: AppSettings, build: BuildSettings, network: NetworkSettings,
                 runtime: RuntimeSettings, registry: RegistrySettings, where: str = "the local socket",
                 ports: Optional[SwarmSettings] = None, clock: Clock = SYSTEM) -> None:
        super().__init__(client, app, build, runtime, registry, where)
        self.network = network
        self.clock = clock   # the release phase's wait
        # PUBLISH_ADDRESS (nginx hosts on other machines): where each color is also published
        # (BLUE_PORT / GREEN_PORT, the `ports` section's), and what nginx and the probes use.
        self.published: Dict[str, Address] = {}
        if network.publish_address is not None:
            assert ports is not None, "PUBLISH_ADDRESS needs the colors' ports"
            self.published = {color: Address(str(network.publish_address), ports.port_of(color))
                              for color in COLORS}

    @classmethod
    def connect(cls, app: AppSettings, build: BuildSettings, network: NetworkSettings, runtime: RuntimeSettings,
                registry: RegistrySettings, environ: Mapping[str, str],
                ports: Optional[SwarmSettings] = None) -> "Engine":
        env, where = engine_environment(runtime, environ)
        try:
            # The default for every API call; the image build alone sets none (it takes as long
            # as it takes), and `stop` adds its grace period.
            # No version given, so the SDK asks the engine for it (GET /version) here: that
            # answer is the proof the engine is reachable; a ping after it was a second round trip.
            client = docker.client.from_env(environment=env, timeout=runtime.network_timeout)
        except LIBRARY_ERRORS as exc:
            raise PreflightError(f"cannot reach the docker engine at {where}: "
                                 f"{_reason(exc, runtime.network_timeout)}") from exc
        return cls(client, app, build, network, runtime, registry, where, ports)

    # -- network -------------------------------------------------------------------------------

    def ensure_network(self) -> bool:
        """Create the deploy network if missing; refuse one with another subnet. True if created."""
        network = self.network
        try:
            found = self.api.networks(names=[network.deploy_network])
        except LIBRARY_ERRORS as exc:
            raise PreflightError(f"{self.part}: listing networks named {network.deploy_network}: "
                                 f"{_reason(exc, self.runtime.network_timeout)}") from exc
        found = [n for n in found if n["Name"] == network.deploy_network]
        if found:
            configs = (found[0].get("IPAM") or {}).get("Config") or []
            subnets = {c.get("Subnet") for c in configs}
            if str(network.deploy_subnet) not in subnets:
                raise PreflightError(
                    f"docker network {network.deploy_network} exists with subnet "
                    f"{', '.join(sorted(x for x in subnets if x)) or 'none'}, not DEPLOY_SUBNET={network.deploy_subnet}"
                )
            return False
        ipam = docker.types.IPAMConfig(pool_configs=[
            docker.types.IPAMPool(subnet=str(network.deploy_subnet), gateway=str(network.deploy_gateway))
        ])
        try:
            self.api.create_network(network.deploy_network, driver="bridge", ipam=ipam,
                                    labels={LABEL_APP: self.app.app_name})
        except LIBRARY_ERRORS as exc:
            raise PreflightError(f"cannot create docker network {network.deploy_network} "
                                 f"({network.deploy_subnet}): {_reason(exc, self.runtime.network_timeout)}") from exc
        return True

    def network_exists(self) -> bool:
        name = self.network.deploy_network
        with self._calling(f"listing networks named {name}"):
            return any(n["Name"] == name for n in self.api.networks(names=[name]))

    def remove_network(self) -> None:
        """Remove the deploy network again (only right after this run created it, still empty)."""
        try:
            self.api.remove_network(self.network.deploy_network)
        except LIBRARY_ERRORS as exc:
            log.warning("    could not remove docker network %s again: %s", self.network.deploy_network,
                        _reason(exc, self.runtime.network_timeout))

    # -- containers ----------------------------------------------------------------------------

    def container(self, color: str) -> Optional[ContainerFact]:
        name = self.app.container_name(color)
        with self._calling(f"inspecting container {name}"):
            try:
                info = self.api.inspect_container(name)
            except docker.errors.NotFound:
                return None
        labels = info["Config"].get("Labels") or {}
        if labels.get(LABEL_APP) != self.app.app_name:
            # Not one of ours: never touch, never probe it.
            raise PreflightError(f"container {name} exists but was not started by pipeline "
                                 f"(no label {LABEL_APP}={self.app.app_name}); remove or rename it")
        networks = info["NetworkSettings"].get("Networks") or {}
        endpoint = networks.get(self.network.deploy_network) or {}
        ip = endpoint.get("IPAddress") or (endpoint.get("IPAMConfig") or {}).get("IPv4Address") or None
        return ContainerFact(
            color=color, name=name, status=info["State"]["Status"], version=labels.get(LABEL_VERSION),
            image=info["Config"].get("Image", ""), ip=ip, restart_count=int(info.get("RestartCount", 0)),
        )

    def containers(self) -> Dict[str, ContainerFact]:
        return {c: fact for c in COLORS if (fact := self.container(c)) is not None}

    def holds_address(self, color: str) -> bool:
        """True only if our container of this color is running and holds the color's fixed IP.

        The only gate before any probe of a container address: an address no container of ours
        holds may route off this machine.
        """
        fact = self.container(color)
        return fact is not None and fact.running and self.at_fixed_ip(fact)

    def addresses(self, color: str) -> Route:
        """The color's one fixed address, whether or not its container runs now; with
        PUBLISH_ADDRESS, its published one (what nginx hosts on other machines reach)."""
        if self.published:
            return (self.published[color],)
        return (Address(self.network.ip_of(color), self.app.app_port),)

    def color_at(self, route: Optional[Route]) -> Optional[str]:
        """By the address: each color has its own fixed IP (published: its own port)."""
        if self.published:
            return color_at(route, lambda a: a, self.published)
        return color_at(route, lambda a: a.ip, self.network.color_ips)

    def probe_ips(self) -> List[str]:
        if self.published:
            return [str(self.network.publish_address)]
        return [self.network.ip_of(color) for color in COLORS]

    def placement(self, color: str) -> str:
        ip, address = self.network.ip_of(color), self.addresses(color)[0]
        return ip if address.ip == ip else f"{ip}, published on {address}"

    def discard(self, color: str, graceful: bool = False) -> None:
        """Removed; `graceful`: stopped first (SIGTERM, STOP_TIMEOUT), so requests in flight finish."""
        if graceful:
            self.stop(color)
        self.remove(color)

    def discarding(self, color: str, graceful: bool = False) -> str:
        return f"removing {self.app.container_name(color)}"

    def gate(self, color: str, prober: Transport) -> Gate:
        """The one container at its fixed address: its health URL answers 200. The port check
        runs between probes; the container exiting, restarting or losing its address ends the wait."""
        app = self.app
        url = health_url(self.addresses(color)[0], app.health_path)

        def check_alive() -> None:
            trouble, fact = container_trouble(self, color)
            if trouble is not None:
                raise ContainerExited(app.container_name(color), _while_starting(trouble, fact, self.network),
                                      self.logs_tail(color) if trouble == "stopped" else [])

        return Gate(what=url, awaited=f"{app.container_name(color)} to answer {url}", check_alive=check_alive,
                    probe_all=lambda timeout: probe(prober, url, timeout), logs=lambda: self.logs_tail(color),
                    can_connect=connect_check(prober, self.addresses(color)[0].ip, self.addresses(color)[0].port))

    def watch(self, color: str) -> "ContainerWatch":
        return ContainerWatch(self, color)

    def status_row(self, color: str, fact: Optional[ContainerFact],
                   report: Optional[HealthReport], route: Optional[RouteReport] = None) -> Dict[str, object]:
        """Its fixed IP; its health only while a container of ours holds it. (Its route is a
        local bridge: the only one its probes may take.)"""
        healthy = None
        if fact is not None and report is not None and self.holds_address(color):
            healthy = report(health_url(self.addresses(color)[0], self.app.health_path))
        return {"ip": self.network.ip_of(color), "health": healthy}

    def check_capacity(self) -> None:
        """One engine always has room for the one container of a color."""

    def at_fixed_ip(self, fact: ContainerFact) -> bool:
        """The container holds its color's address on a deploy network that exists now."""
        return fact.ip == self.network.ip_of(fact.color) and self.network_exists()

    def run(self, color: str, image: str, version: str) -> None:
        """Start the release as this color's container at its fixed IP (no host port published)."""
        app, network = self.app, self.network
        name = app.container_name(color)
        self.remove(color)
        environment = release_environment(app, version, color)
        published = self.published.get(color)
        host_config = self.api.create_host_config(
            network_mode=network.deploy_network,
            port_bindings={app.app_port: (published.ip, published.port)} if published else None,
            binds=list(app.volumes_for(color)) or None,
            # Back after a daemon or host restart; a container we stopped stays stopped.
            restart_policy={"Name": "unless-stopped"},
        )
        networking = self.api.create_networking_config({
            network.deploy_network: self.api.create_endpoint_config(ipv4_address=network.ip_of(color)),
        })
        try:
            created = self.api.create_container(
                image, name=name, detach=True, environment=environment, host_config=host_config,
                networking_config=networking, stop_signal="SIGTERM", ports=[app.app_port] if published else None,
                labels={LABEL_APP: app.app_name, LABEL_COLOR: color, LABEL_VERSION: version},
            )
            self.api.start(created["Id"])
        except LIBRARY_ERRORS as exc:
            failure = EngineFailed(self.part, f"starting {name} from {image} at {network.ip_of(color)}",
                                   _reason(exc, self.runtime.network_timeout))
            try:
                self.remove(color)
            except EngineFailed as again:
                log.warning("    could not remove %s after it failed to start: %s", name, again.cause)
            raise failure from exc

    def start(self, color: str) -> None:
        name = self.app.container_name(color)
        with self._calling(f"starting {name}"):
            self.api.start(name)

    def stop(self, color: str) -> None:
        """Stop gracefully: SIGTERM, then SIGKILL after STOP_TIMEOUT. Kept for rollback."""
        name = self.app.container_name(color)
        with self._calling(f"stopping {name}"):
            try:
                # docker-py waits NETWORK_TIMEOUT plus this grace period for the answer.
                self.api.stop(name, timeout=int(round(self.app.stop_timeout)))
            except docker.errors.NotFound:
                pass

    def remove(self, color: str) -> None:
        name = self.app.container_name(color)
        with self._calling(f"removing {name}"):
            try:
                self.api.remove_container(name, force=True)
            except docker.errors.NotFound:
                pass

    def run_once(self, image: str, version: str, color: str, command: Sequence[str], timeout: float,
                 output: OutputLine) -> OneOff:
        """The release phase in a one-off container `APP_NAME-release-phase` on the deploy network
        (an address from its pool, none of the colors' fixed ones: they are not running or not
        ours to take while this runs before the new color starts). Removed however it ends."""
        app, network = self.app, self.network
        name = one_off_name(app)
        self._remove_one_off(name)   # one left by a run that was killed while it ran
        host_config = self.api.create_host_config(network_mode=network.deploy_network,
                                                  binds=list(app.volumes_for(color)) or None)
        labels = {LABEL_APP: app.app_name, LABEL_VERSION: version, LABEL_ROLE: RELEASE_PHASE_ROLE}
        try:
            with self._calling(f"starting the release phase {name} from {image}"):
                created = self.api.create_container(image, name=name, command=list(command), detach=True,
                                                    environment=release_environment(app, version, color),
                                                    host_config=host_config, labels=labels, stop_signal="SIGTERM")
                self.api.start(created["Id"])

            def state() -> Tuple[bool, Optional[int]]:
                with self._calling(f"inspecting the release phase {name}"):
                    info = self.api.inspect_container(name)["State"]
                if info.get("Status") in ("exited", "dead"):
                    return True, int(info.get("ExitCode", -1))
                return False, None

            def logs(since: Optional[int]) -> bytes:
                with self._calling(f"reading the output of the release phase {name}"):
                    return bytes(self.api.logs(name, stdout=True, stderr=True, timestamps=True, since=since))

            return follow_one_off(state, logs, timeout, self.clock, output)
        finally:
            self._remove_one_off(name)

    def _remove_one_off(self, name: str) -> None:
        """Remove the one-off container (stopping it at once if it still runs); a failure is a warning."""
        try:
            self.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass
        except LIBRARY_ERRORS as exc:
            log.warning("    could not remove the release phase container %s: %s", name,
                        _reason(exc, self.runtime.network_timeout))

    def logs_tail(self, color: str, lines: int = 20) -> List[str]:
        """The container's last log lines for an error's detail; none if the engine cannot say."""
        try:
            raw = self.api.logs(self.app.container_name(color), tail=lines, stdout=True, stderr=True)
        except LIBRARY_ERRORS:
            return []
        return [line for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]


class Containers(Protocol):
    """What the container checks read: the one engine (or a fake of it, at the same seam)."""

    app: AppSettings
    network: NetworkSettings

    def container(self, color: str) -> Optional[ContainerFact]: ...

    def at_fixed_ip(self, fact: ContainerFact) -> bool: ...

    def addresses(self, color: str) -> Route: ...


def container_trouble(engine: Containers, color: str) -> Tuple[Optional[str], Optional[ContainerFact]]:
    """The one "is it still alive" check of a color's container: "removed", "stopped" (exited or
    restarted) or "moved" (it does not hold its fixed IP on the deploy network), else None; with
    the fact it read."""
    fact = engine.container(color)
    if fact is None:
        return "removed", None
    if not fact.running or fact.restart_count > 0:
        return "stopped", fact
    if not engine.at_fixed_ip(fact):
        return "moved", fact
    return None, fact


def _while_starting(trouble: str, fact: Optional[ContainerFact], network: NetworkSettings) -> str:
    """The trouble as the health gate's ContainerExited says it."""
    if trouble == "removed" or fact is None:
        return "removed"
    if trouble == "stopped":
        return fact.status if fact.restart_count == 0 else f"{fact.status}, restarted {fact.restart_count}x"
    return f"does not hold {network.ip_of(fact.color)} on {network.deploy_network}"


class ContainerWatch:
    """The one container of a color after its gate: it must keep running at its fixed IP."""

    def __init__(self, engine: Containers, color: str) -> None:
        self.engine, self.color = engine, color

    def problem(self) -> Optional[str]:
        app, network = self.engine.app, self.engine.network
        name = app.container_name(self.color)
        trouble, fact = container_trouble(self.engine, self.color)
        if trouble is None:
            return None
        if fact is None:
            return f"container {name} was removed"
        if trouble == "stopped":
            return f"container {name} stopped ({fact.status}, restarted {fact.restart_count}x)"
        return f"container {name} no longer holds {network.ip_of(self.color)} on {network.deploy_network}"

    def endpoints(self) -> List[Endpoint]:
        return [Endpoint(self.engine.addresses(self.color)[0], "")]


def one_off_name(app: AppSettings) -> str:
    """The release phase's one-off container (or swarm service): one at a time, under the deploy lock."""
    return f"{app.app_name}-release-phase"


def release_environment(app: AppSettings, version: str, color: str) -> Dict[str, str]:
    """What a release's container gets in its environment: CONTAINER_ENV_FILE, then APP_VERSION
    and APP_COLOR (the release phase's one-off container gets the same)."""
    environment = {"APP_VERSION": version, "APP_COLOR": color}
    if app.container_env_file is not None:
        environment = {**_read_env_file(app.container_env_file), **environment}
    return environment


def follow_one_off(state: Callable[[], Tuple[bool, Optional[int]]], logs: Callable[[Optional[int]], bytes],
                   timeout: float, clock: Clock, output: OutputLine, problem: Callable[[], str] = lambda: "") -> OneOff:
    """Wait for a one-off container to end (`state`: (ended, exit code)), at most `timeout`
    seconds on `clock`, handing each new line of its output (`logs(since)`: its output with
    docker's timestamps, from the whole second `since` on) to `output` as it comes. Polled, so
    no stream is held open for longer than NETWORK_TIMEOUT while the command is quiet."""
    cursor = _LogCursor()
    last: Deque[str] = deque(maxlen=20)
    deadline = clock.now() + timeout
    while True:
        ended, code = state()
        for line in cursor.new(logs(cursor.since)):   # after the state: all of it once it ended
            output(line)
            last.append(line)
        if ended:
            return OneOff(code, False, tuple(last), problem() if code is None else "")
        left = deadline - clock.now()
        if left <= 0:
            return OneOff(None, True, tuple(last))
        clock.sleep(min(ONE_OFF_POLL, left))


class _LogCursor:
    """Which lines of a container's timestamped output were handed on already. Docker's `since`
    takes whole seconds here, so each read starts at the second of the last line seen and the
    lines of that second already seen are skipped."""

    def __init__(self) -> None:
        self.last: Optional[Tuple[int, int]] = None   # (unix seconds, nanoseconds) of the last line seen
        self.seen_at_last = 0                         # how many lines carried exactly that timestamp

    @property
    def since(self) -> Optional[int]:
        return self.last[0] if self.last is not None and self.last[0] > 0 else None

    def new(self, raw: bytes) -> List[str]:
        out = []
        at_last = 0
        for line in raw.decode("utf-8", "replace").splitlines():
            stamp, _, text = line.partition(" ")
            when = _timestamp(stamp)
            if when is None:   # not docker's timestamp: a line the engine split; keep it as it is
                out.append(line.rstrip())
                continue
            if self.last is not None and when < self.last:
                continue
            if self.last is not None and when == self.last:
                at_last += 1
                if at_last <= self.seen_at_last:
                    continue
                self.seen_at_last += 1
            else:
                self.last, self.seen_at_last, at_last = when, 1, 1
            out.append(text.rstrip())
        return out


def _timestamp(stamp: str) -> Optional[Tuple[int, int]]:
    """Docker's RFC 3339 timestamp with nanoseconds ("2026-12-05T02:33:01.123456789Z") as
    (unix seconds, nanoseconds); None if it is not one."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    try:
        seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    if not stamp.endswith("Z") or not fraction.isdigit() and fraction:
        return None
    return int(seconds), int((fraction or "0")[:9].ljust(9, "0"))


def registry_login(client: Any, registry: RegistrySettings, timeout: float, reauth: bool = False) -> Optional[str]:
    """Log the docker client in to REGISTRY when it needs a login (REGISTRY_USERNAME): the one
    login of both targets. None when done (or not needed); else the engine's reason, for the
    caller's own error (a preflight check, or a step of the run)."""
    if not registry.registry_username:
        return None
    try:
        client.login(username=registry.registry_username, password=registry.registry_password.reveal(),
                     registry=registry.registry.split("/")[0], reauth=reauth)
    except LIBRARY_ERRORS as exc:
        return _reason(exc, timeout)
    return None


def engine_environment(runtime: RuntimeSettings, environ: Mapping[str, str]) -> "tuple[Dict[str, str], str]":
    """The environment the docker SDK reads (DOCKER_HOST from the settings wins) and, for
    messages, where that engine is."""
    env = dict(environ)
    if runtime.docker_host:
        env["DOCKER_HOST"] = runtime.docker_host
    return env, env.get("DOCKER_HOST") or "the local socket"


_DIGEST_LINE = re.compile(r"\bDigest: (sha256:[0-9a-f]{64})\b")


def _digest_in(chunk: Mapping[str, Any]) -> List[str]:
    """The manifest digest a push (its `aux`) or a pull (its "Digest: ..." status) reports."""
    aux = chunk.get("aux")
    if isinstance(aux, dict) and isinstance(aux.get("Digest"), str) and aux["Digest"].startswith("sha256:"):
        return [aux["Digest"]]
    found = _DIGEST_LINE.search(str(chunk.get("status") or ""))
    return [found.group(1)] if found else []


def _read_env_file(path: Path) -> Dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _reason(exc: BaseException, timeout: float) -> str:
    """The engine's own words, without docker-py's request dump; the socket's for a lost
    connection; the timeout for no answer."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation.decode() if isinstance(explanation, bytes) else explanation)
    causes = list(_causes(exc))
    if any(isinstance(c, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
           for c in causes):
        return f"no answer within {timeout:g}s (NETWORK_TIMEOUT)"
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        if isinstance(cause, http.client.RemoteDisconnected):
            return "the engine closed the connection without an answer"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps: requests and urllib3 nest the socket's error in args,
    `reason` and the exception chain."""
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(x for x in (getattr(current, "reason", None), current.__cause__, current.__context__,
                                *current.args) if isinstance(x, BaseException))
