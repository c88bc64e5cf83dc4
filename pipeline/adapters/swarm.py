"""The swarm target: each color is a replicated service on a Docker Swarm, through the docker SDK.

`SwarmEngine` offers the operations of `engine.Engine` that make sense on a cluster, with the same
names, so the deploy flow can drive either. A color is the service `APP_NAME-<color>` with
`REPLICAS` tasks, at most one per node, publishing `APP_PORT` in host mode on the color's own node
port (`BLUE_PORT`, `GREEN_PORT`) with endpoint mode dnsrr: no routing mesh and no VIP (they need
IPVS), so every task is reached directly at its node's address. Stopping a color scales it to 0 and
keeps its spec, so a rollback scales it back up.

What a flow does with the tasks (probe each at `task_addresses`, wait, switch nginx to all of them)
is not decided here; this module reads the cluster, acts on it, and says which task on which node
went wrong.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Sequence, Set, TypeVar, Union

import docker
import docker.client
import docker.errors
import requests.exceptions
from docker.types import EndpointSpec, RestartPolicy, ServiceMode
from tenacity import RetryError, Retrying, retry_if_result, wait_fixed

from pipeline.core.decide import ContainerFact, color_at
from pipeline.core.route import Address, Route, health_url
from pipeline.adapters.engine import (LABEL_APP, LABEL_COLOR, LABEL_VERSION, LIBRARY_ERRORS, Images, _read_env_file,
                                      _reason, engine_environment, registry_login)
from pipeline.core.clock import SYSTEM, Clock
from pipeline.core.errors import DeployFailed, EngineFailed, NotEnoughNodes, PreflightError, TaskFailed
from pipeline.core.gate import Gate, NotHealthyYet, Transport, probe
from pipeline.core.settings import (COLORS, AppSettings, BuildSettings, RegistrySettings, RuntimeSettings,
                                     SwarmSettings)
from pipeline.core.target import Endpoint, HealthReport, RouteReport

log = logging.getLogger("pipeline")

# Task states (swarmkit api/types.proto), in the order a task goes through them.
STARTING_STATES = ("new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting")
# Desired states of a task swarm wants to run ("ready": a replacement waiting out the restart delay).
WANTED_STATES = ("ready", "running")
# A task of a long-running service that reaches one of these stopped on its own (or never ran).
FAILED_STATES = ("complete", "failed", "rejected")
# How long a log request may take: a manager asks every node, and one that is down never answers.
LOGS_TIMEOUT = 10.0
# Extra time, beyond STOP_TIMEOUT, for swarm to report a scaled-down task as stopped.
STOP_SLACK = 15.0

T = TypeVar("T")


@dataclass(frozen=True)
class NodeFact:
    """One swarm node, as the manager sees it."""

    node_id: str
    name: str                   # its host name
    addr: str                   # the address it advertises: where its host-mode ports are
    state: str                  # ready, down, unknown, disconnected
    availability: str           # active, pause, drain
    manager: bool

    @property
    def ready(self) -> bool:
        """Can take a new task."""
        return self.state == "ready" and self.availability == "active"


@dataclass(frozen=True)
class TaskFact:
    """One task of a color's service."""

    task_id: str
    color: str
    slot: int
    node_id: str                # "" while the task is not assigned to a node
    node: str                   # the node's name, or "" / the id when unknown
    node_addr: Optional[str]
    port: int                   # the node port it publishes APP_PORT on
    state: str                  # Status.State: pending, running, failed, shutdown, ...
    desired_state: str          # running, or shutdown/remove once swarm is stopping or replacing it
    version: Optional[str]
    image: str
    message: str                # Status.Err, else Status.Message
    exit_code: Optional[int]
    node_up: bool = True        # its node is ready (the manager reports a down node's tasks as before)

    @property
    def running(self) -> bool:
        return self.state == "running" and self.desired_state == "running"


class TaskAddress(NamedTuple):
    """Where a running task answers: `node_addr:port`."""

    node_addr: str
    port: int
    task_id: str
    node: str
    state: str

    def __str__(self) -> str:
        """How the health gate names it: which task, on which node, where."""
        return task_where(self)


@dataclass(frozen=True)
class TaskEvent:
    """A task of the current run that stopped counting: `kind` is "failed" (it failed, exited,
    restarted or was shut down by swarm on a node that is up) or "node-lost" (its node is not ready,
    so swarm moves it to another node)."""

    task: TaskFact
    kind: str
    reason: str


def classify(task: TaskFact, node_ready: bool) -> Optional[TaskEvent]:
    """Whether a task of the current run failed, was lost with its node, or is fine (None)."""
    where = task.node or task.node_id
    if task.node_id and not node_ready:
        return TaskEvent(task, "node-lost", f"node {where} is not ready (task {task.state})")
    if task.state in FAILED_STATES:
        why = task.state
        if task.exit_code:
            why += f", exit code {task.exit_code}"
        if task.message and task.message not in (task.state, "started", "finished"):
            why += f": {task.message}"
        return TaskEvent(task, "failed", why)
    if task.desired_state in WANTED_STATES:
        return None  # pending, starting, running, or a replacement waiting out the restart delay
    # Swarm stops or replaces it though it did not fail: its node was lost or drained, or came
    # back after the task was rescheduled elsewhere.
    return TaskEvent(task, "node-lost", f"moved off node {where} ({task.state}, desired {task.desired_state})")


def task_where(task: Union[TaskFact, TaskAddress]) -> str:
    """A task as the health gate names it: which task, on which node, where."""
    at = f" ({task.node_addr}:{task.port})" if task.node_addr else ""
    return f"task {task.task_id[:12]} on {task.node or '(no node)'}{at}"


def serving_problem(tasks: Sequence[TaskFact], watched: FrozenSet[str], replicas: int) -> Optional[str]:
    """After the switch (verification): why the color no longer serves as it did when nginx was
    switched to it, or None. This is the swarm's "the container exited".

    `watched` are the tasks that passed the health gate and that nginx was switched to. One of
    them that failed, exited or was moved off its node (or whose node is not ready), a task swarm
    started since (a restart or a reschedule), or fewer than `replicas` of them running fails the
    release.
    """
    by_id = {t.task_id: t for t in tasks}
    for task_id in sorted(watched):
        task = by_id.get(task_id)
        if task is None:
            return f"task {task_id[:12]} is gone from the service"
        if not (task.running and task.node_up):
            event = classify(task, task.node_up)
            why = event.reason if event is not None else f"{task.state}, desired {task.desired_state}"
            return f"{task_where(task)} stopped serving ({why})"
    for task in tasks:
        if task.task_id not in watched and task.desired_state in WANTED_STATES:
            return (f"swarm started {task_where(task)} ({task.state}) after the switch: a task was restarted "
                    f"or rescheduled")
    running = sum(1 for task_id in watched if by_id[task_id].running)
    if running < replicas:
        return f"only {running} of REPLICAS={replicas} task(s) running"
    return None


class TaskWatch:
    """The tasks of a color that passed its gate (the ones nginx is switched to): each must keep
    running on its node, no new task may start, and REPLICAS must run (`serving_problem`)."""

    def __init__(self, tasks: Callable[[], List[TaskFact]], watched: FrozenSet[str], replicas: int,
                 name: str) -> None:
        self.tasks, self.watched, self.replicas, self.name = tasks, watched, replicas, name
        self.seen: List[TaskFact] = []

    def problem(self) -> Optional[str]:
        self.seen = self.tasks()
        found = serving_problem(self.seen, self.watched, self.replicas)
        return f"{self.name}: {found}" if found else None

    def endpoints(self) -> List[Endpoint]:
        # Network safety: only the watched tasks, running on a node that is up, at their node's address.
        return [Endpoint(Address(t.node_addr, t.port), task_where(t)) for t in self.seen
                if t.task_id in self.watched and t.running and t.node_up and t.node_addr]


class SwarmEngine:
    """A swarm manager, reached like the single engine (DOCKER_HOST), driving one service per color.

    Image operations (build, push, retention) run on the manager's own engine, through the single
    engine's `Images`: the release is built there and pushed to REGISTRY, where every node pulls it.
    """

    def __init__(self, client: Any, app: AppSettings, swarm: SwarmSettings, build: BuildSettings,
                 runtime: RuntimeSettings, registry: RegistrySettings, clock: Clock = SYSTEM) -> None:
        self.client = client
        self.clock = clock   # the run's clock: waiting for tasks to stop
        self.api = client.api
        self.app, self.swarm, self.runtime, self.registry = app, swarm, runtime, registry
        self.images = Images(client, app, build, runtime, registry)
        # Task ids each color had before this engine last ran or started it: the tasks that
        # came after are the current run's, whose failures fail the health gate.
        self._baseline: Dict[str, FrozenSet[str]] = {}
        # Tasks once seen lost with their node stay so when the node comes back: their state then
        # (failed, shutdown) is the node's restart, not the release's failure.
        self._lost: Set[str] = set()

    @classmethod
    def connect(cls, app: AppSettings, swarm: SwarmSettings, build: BuildSettings, runtime: RuntimeSettings,
                registry: RegistrySettings, environ: Mapping[str, str], clock: Clock = SYSTEM) -> "SwarmEngine":
        env, where = engine_environment(runtime, environ)
        try:
            client = docker.client.from_env(environment=env, timeout=runtime.network_timeout)
            state = client.info().get("Swarm") or {}
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise PreflightError(f"cannot reach the docker engine at {where}: "
                                 f"{_reason(exc, runtime.network_timeout)}") from exc
        if state.get("LocalNodeState") != "active":
            raise PreflightError(f"the docker engine at {where} is not in a swarm "
                                 f"(state {state.get('LocalNodeState') or 'unknown'}); TARGET=swarm needs "
                                 f"DOCKER_HOST to name a swarm manager")
        if not state.get("ControlAvailable"):
            raise PreflightError(f"the docker engine at {where} is a swarm worker; TARGET=swarm needs "
                                 f"DOCKER_HOST to name a swarm manager")
        return cls(client, app, swarm, build, runtime, registry, clock)

    # -- what the single engine has too ----------------------------------------------------------

    def ensure_network(self) -> bool:
        """Nothing to create: tasks publish their node's port, there is no deploy network."""
        return False

    def network_exists(self) -> bool:
        """The nodes' network is always there to check: probes go to node addresses."""
        return True

    def remove_network(self) -> None:
        """Nothing was created."""

    def probe_ips(self) -> List[str]:
        """The nodes' addresses: the only places a task of either color is ever probed."""
        return sorted({n.addr for n in self.nodes() if n.addr})

    def addresses(self, color: str) -> Route:
        """Every running task of the color on a node that is up, as `NODE_ADDR:PORT`, sorted."""
        return tuple(sorted({Address(a.node_addr, a.port) for a in self.task_addresses(color)},
                            key=lambda a: (tuple(int(x) for x in a.ip.split(".")), a.port)))

    def color_at(self, route: Optional[Route]) -> Optional[str]:
        """By the port: every task of a color publishes the color's own port."""
        return color_at(route, lambda a: a.port, {c: self.swarm.port_of(c) for c in COLORS})

    def placement(self, color: str) -> str:
        return f"{self.swarm.replicas} task(s) on port {self.swarm.port_of(color)}"

    def discard(self, color: str, graceful: bool = False) -> None:
        """A failed release: scaled to 0, its spec kept (the failed tasks' logs stay readable).
        Always graceful: each task gets SIGTERM, then SIGKILL after STOP_TIMEOUT."""
        self.stop(color)

    def discarding(self, color: str, graceful: bool = False) -> str:
        name = self.app.container_name(color)
        return f"scaling {name} to 0 (its spec kept)" if graceful else f"scaling to 0 {name}"

    def gate(self, color: str, prober: Transport) -> Gate:
        """REPLICAS tasks run, each on its own node, and every one answers 200 at its node's
        address. A task that fails or restarts ends the wait at once (TaskFailed, naming the task,
        its node and its last log lines); a task lost with its node is waited out: each attempt
        asks for the tasks anew."""
        app, swarm = self.app, self.swarm
        name = app.container_name(color)

        def probe_all(timeout: float) -> str:
            # Only tasks of a converged service count: a replacement on its way is not healthy yet.
            found = self.task_addresses(color) if self.converged(color) else []
            healthy, problems = [], []
            for task in found:
                try:
                    probe(prober, health_url(Address(task.node_addr, task.port), app.health_path), timeout)
                    healthy.append(str(task))
                except NotHealthyYet as exc:
                    problems.append(f"{task}: {exc.last}")
            if len(healthy) < swarm.replicas:
                detail = f"; {'; '.join(problems)}" if problems else ""
                raise NotHealthyYet(f"{len(healthy)} of {swarm.replicas} answer 200 ({len(found)} running){detail}")
            return ", ".join(healthy)

        return Gate(what=f"every task of {name} at {app.health_path}",
                    awaited=f"{swarm.replicas} task(s) of {name} to answer {app.health_path} "
                            f"on port {swarm.port_of(color)}",
                    check_alive=lambda: self.check_tasks(color), probe_all=probe_all,
                    logs=lambda: self.logs_tail(color))

    def watch(self, color: str) -> "TaskWatch":
        """The tasks running now (each on a node that is up) are the ones watched."""
        watched = frozenset(t.task_id for t in self.task_addresses(color))
        return TaskWatch(lambda: self.tasks(color), watched, self.swarm.replicas,
                         self.app.container_name(color))

    def status_row(self, color: str, fact: Optional[ContainerFact],
                   report: Optional[HealthReport], route: Optional[RouteReport] = None) -> Dict[str, object]:
        """Every task the manager remembers for the color: node, address, state, version, health
        and the route the nginx host reaches it by (both asked only while it runs on a node that
        is up: an address of this swarm)."""
        tasks: List[Dict[str, object]] = []
        healthy = None
        if fact is not None:
            for task in self.tasks(color):
                entry: Dict[str, object] = {
                    "task": task.task_id[:12], "node": task.node, "address": None, "state": task.state,
                    "desired": task.desired_state, "version": task.version, "health": None, "route": None}
                if task.node_addr:
                    entry["address"] = f"{task.node_addr}:{task.port}"
                if task.running and task.node_up and task.node_addr:
                    if route is not None:
                        entry["route"] = route(task.node_addr)
                    if report is not None:
                        entry["health"] = report(health_url(Address(task.node_addr, task.port), self.app.health_path))
                tasks.append(entry)
            if report is not None:
                answering = sum(1 for entry in tasks if str(entry["health"]).startswith("HTTP 200"))
                healthy = f"{answering} of {self.swarm.replicas} task(s) answer 200"
        return {"ip": None, "health": healthy, "port": self.swarm.port_of(color), "tasks": tasks}

    def check_registry(self) -> None:
        """Preflight: REGISTRY takes the login, through the manager's engine (where the release is
        built and pushed; the same login goes to the nodes with the service)."""
        self.images.check_registry()

    def build_image(self, cwd: Path, tag: str, version: str) -> str:
        return self.images.build_image(cwd, tag, version)

    def push_and_pull(self, tag: str) -> None:
        # The registry login is kept by the client: creating a service then hands the same
        # credentials to the nodes (X-Registry-Auth), so they can pull the release.
        self.images.push_and_pull(tag)

    def release_images(self) -> Dict[str, float]:
        return self.images.release_images()

    def remove_image(self, ref: str) -> None:
        self.images.remove_image(ref)

    def prune_dangling(self) -> None:
        self.images.prune_dangling()

    def container(self, color: str) -> Optional[ContainerFact]:
        """The color's service as the fact the flow decides from (status running, starting or
        stopped; `ip` is None: a service has one address per task, see `task_addresses`)."""
        service = self._service(color)
        if service is None:
            return None
        spec = service.attrs["Spec"]
        labels = spec.get("Labels") or {}
        desired = _replicas(spec)
        tasks = self.tasks(color)
        running = sum(1 for t in tasks if t.running)
        if desired == 0:
            status = "stopped"
        elif running >= desired:
            status = "running"
        else:
            status = "starting"
        failed = sum(1 for e in self.task_events(color) if e.kind == "failed")
        image = spec["TaskTemplate"]["ContainerSpec"].get("Image", "").split("@", 1)[0]
        return ContainerFact(color=color, name=self.app.container_name(color), status=status,
                             version=labels.get(LABEL_VERSION), image=image, ip=None, restart_count=failed)

    def containers(self) -> Dict[str, ContainerFact]:
        return {c: fact for c in COLORS if (fact := self.container(c)) is not None}

    def holds_address(self, color: str) -> bool:
        """True if a task of ours runs for this color: the only addresses ever probed are those
        of `task_addresses`, nodes of this swarm with a running task of this color."""
        return bool(self.task_addresses(color))

    def run(self, color: str, image: str, version: str) -> None:
        """Replace the color's service with `REPLICAS` tasks of the release, one per node at most.

        Refused before anything changes when fewer nodes are ready than REPLICAS.
        """
        app, swarm = self.app, self.swarm
        name = app.container_name(color)
        self.check_capacity()
        self.remove(color)
        environment = {"APP_VERSION": version, "APP_COLOR": color}
        if app.container_env_file is not None:
            environment = {**_read_env_file(app.container_env_file), **environment}
        labels = {LABEL_APP: app.app_name, LABEL_COLOR: color, LABEL_VERSION: version}
        port = swarm.port_of(color)
        self._login()
        self._baseline[color] = frozenset()
        self._call(f"create service {name} from {image} on port {port}", lambda: self.client.services.create(
            image, name=name, labels=labels, container_labels=labels,
            env=[f"{k}={v}" for k, v in environment.items()],
            mode=ServiceMode("replicated", replicas=swarm.replicas),
            endpoint_spec=EndpointSpec(mode="dnsrr", ports={port: (app.app_port, "tcp", "host")}),
            maxreplicas=1,
            mounts=list(app.volumes_for(color)) or None,
            stop_signal="SIGTERM",
            stop_grace_period=int(app.stop_timeout * 1e9),
            # A task that exits is replaced (after a second); the health gate counts that as a failure.
            restart_policy=RestartPolicy(condition="any", delay=int(1e9)),
        ))
        log.info("    service %s: %d task(s) of %s on port %d", name, swarm.replicas, image, port)

    def start(self, color: str) -> None:
        """Scale the kept service back up to REPLICAS (rollback, promote)."""
        service = self._service(color)
        if service is None:
            raise DeployFailed(f"cannot start {self.app.container_name(color)}: no such service")
        self.check_capacity()
        self._baseline[color] = frozenset(t.task_id for t in self.tasks(color))
        self._call(f"scale service {service.name} to {self.swarm.replicas}",
                   lambda: service.scale(self.swarm.replicas))

    def stop(self, color: str) -> None:
        """Scale to 0, keeping the service and its spec for a rollback; waits for the tasks on
        ready nodes to stop (each gets SIGTERM, then SIGKILL after STOP_TIMEOUT)."""
        service = self._service(color)
        if service is None:
            return
        self._baseline.pop(color, None)  # its tasks stop now because we asked: no failures
        if _replicas(service.attrs["Spec"]) != 0:
            self._call(f"scale service {service.name} to 0", lambda: service.scale(0))
        self._wait(lambda: not self._running_on_ready_nodes(color), self.app.stop_timeout + STOP_SLACK,
                   f"the tasks of {service.name} to stop")

    def remove(self, color: str) -> None:
        """Stop the color's tasks (so their node ports are free), then remove the service."""
        service = self._service(color)
        if service is None:
            return
        self.stop(color)
        try:
            service.remove()
        except docker.errors.NotFound:
            pass
        except LIBRARY_ERRORS as exc:
            raise EngineFailed("swarm manager", f"remove service {service.name}",
                               _reason(exc, self.runtime.network_timeout)) from exc

    def logs_tail(self, color: str, lines: int = 20) -> List[str]:
        """The last lines of the service's logs, every task's; [] if the manager cannot say."""
        service = self._service(color)
        if service is None:
            return []
        return self._log_lines(service.id, lines)

    # -- what only a swarm has --------------------------------------------------------------------

    def nodes(self) -> List[NodeFact]:
        raw = self._call("list nodes", lambda: self.api.nodes())
        return [_node_fact(n) for n in raw]

    def check_capacity(self) -> None:
        """NotEnoughNodes (exit 3) if fewer nodes can take a task than REPLICAS."""
        nodes = self.nodes()
        ready = [n for n in nodes if n.ready]
        if len(ready) < self.swarm.replicas:
            raise NotEnoughNodes(self.swarm.replicas, [n.name for n in ready],
                                 [f"{n.name} ({n.state}, {n.availability})" for n in nodes if not n.ready])

    def tasks(self, color: str) -> List[TaskFact]:
        """Every task swarm still remembers for the color's service, newest first."""
        service = self._service(color)
        if service is None:
            return []
        nodes = {n.node_id: n for n in self.nodes()}
        raw = self._call(f"list the tasks of {service.name}", lambda: service.tasks())
        facts = [_task_fact(t, color, nodes, self.swarm.port_of(color), self.app.app_port) for t in raw]
        order = {t["ID"]: t.get("CreatedAt", "") for t in raw}
        return sorted(facts, key=lambda f: order[f.task_id], reverse=True)

    def task_addresses(self, color: str) -> List[TaskAddress]:
        """Where the color's running tasks answer, one per task on a node that is up: probe
        these, and only these (a down node's task still reads "running" at the manager)."""
        return [TaskAddress(t.node_addr, t.port, t.task_id, t.node, t.state)
                for t in self.tasks(color) if t.running and t.node_up and t.node_addr]

    def converged(self, color: str) -> bool:
        """REPLICAS tasks run, each on its own ready node."""
        nodes = {n.node_id: n for n in self.nodes()}
        on = {t.node_id for t in self.tasks(color) if t.running and nodes.get(t.node_id, None) is not None
              and nodes[t.node_id].ready}
        return len(on) >= self.swarm.replicas

    def task_events(self, color: str) -> List[TaskEvent]:
        """Tasks of the current run (since this engine last ran or started the color; without
        one, the tasks swarm wants running) that failed or were lost with their node."""
        baseline = self._baseline.get(color)
        ready = {n.node_id for n in self.nodes() if n.ready}
        events = []
        for task in self.tasks(color):
            if baseline is None and task.desired_state != "running":
                continue
            if baseline is not None and task.task_id in baseline:
                continue
            event = classify(task, task.node_id in ready)
            if event is not None and event.kind == "failed" and task.task_id in self._lost:
                event = TaskEvent(task, "node-lost", f"lost with node {task.node or task.node_id}, now {task.state}")
            if event is not None and event.kind == "node-lost":
                self._lost.add(task.task_id)
            if event is not None:
                events.append(event)
        return events

    def check_tasks(self, color: str) -> None:
        """Raise TaskFailed, with that task's last log lines, if a task of the current run
        failed, exited, restarted or was shut down by swarm; tasks lost with their node are not
        failures here (swarm reschedules them; the health gate waits for REPLICAS healthy)."""
        for event in self.task_events(color):
            if event.kind == "failed":
                task = event.task
                raise TaskFailed(self.app.container_name(color), task.task_id,
                                 task.node or "(none)", event.reason, self.task_logs(color, task.task_id))

    def task_logs(self, color: str, task_id: str, lines: int = 20) -> List[str]:
        """The last lines one task wrote ([] if the manager cannot say, e.g. its node is down)."""
        service = self._service(color)
        if service is None:
            return []
        marker = f"com.docker.swarm.task.id={task_id}"
        out = []
        for line in self._log_lines(service.id, 200, details=True):
            meta, _, text = line.partition(" ")
            if marker in meta.split(","):
                out.append(text)
        return out[-lines:]

    # -- helpers ----------------------------------------------------------------------------------

    def _service(self, color: str) -> Any:
        """The color's service (a docker SDK Service), None if absent; one not labelled as ours is refused."""
        name = self.app.container_name(color)
        try:
            service = self.client.services.get(name)
        except docker.errors.NotFound:
            return None
        except LIBRARY_ERRORS as exc:
            raise EngineFailed("swarm manager", f"inspect service {name}",
                               _reason(exc, self.runtime.network_timeout)) from exc
        if service.name != name:  # get() also matches an id prefix
            return None
        labels = service.attrs["Spec"].get("Labels") or {}
        if labels.get(LABEL_APP) != self.app.app_name:
            raise PreflightError(f"service {name} exists but was not created by pipeline "
                                 f"(no label {LABEL_APP}={self.app.app_name}); remove or rename it")
        return service

    def _login(self) -> None:
        """Log the client in to REGISTRY (if it needs a login): the service is then created with
        these credentials (X-Registry-Auth), which swarm hands to every node that pulls the release."""
        refused = registry_login(self.client, self.registry, self.runtime.network_timeout)
        if refused is not None:
            raise DeployFailed(f"registry login to {self.registry.registry.split('/')[0]} as "
                               f"{self.registry.registry_username} failed: {refused}")

    def _running_on_ready_nodes(self, color: str) -> bool:
        ready = {n.node_id for n in self.nodes() if n.ready}
        return any(t.state in ("running", "starting") and t.node_id in ready for t in self.tasks(color))

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """The manager's failures as one line. DeployFailed, not PreflightError: an unreachable
        manager is found by `connect` before anything changes; one lost later may be mid-deploy."""
        try:
            return action()
        except LIBRARY_ERRORS as exc:
            raise EngineFailed("swarm manager", what, _reason(exc, self.runtime.network_timeout)) from exc

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        started = self.clock.now()
        retrying = Retrying(stop=lambda state: self.clock.now() - started >= timeout, wait=wait_fixed(0.25),
                            sleep=self.clock.sleep, retry=retry_if_result(lambda ok: not ok))
        try:
            retrying(done)
        except RetryError:
            raise DeployFailed(f"swarm: timed out after {timeout:g}s waiting for {what}") from None

    def _log_lines(self, service_id: str, lines: int, details: bool = False) -> List[str]:
        """Service logs, read in a thread so a node that never answers cannot hang the caller."""
        results: "queue.Queue[List[str]]" = queue.Queue()

        def read() -> None:
            got: List[str] = []
            try:
                for chunk in self.api.service_logs(service_id, stdout=True, stderr=True, tail=lines,
                                                   details=details, is_tty=False):
                    got.extend(chunk.decode("utf-8", "replace").splitlines())
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                pass
            results.put(got)

        threading.Thread(target=read, daemon=True, name="swarm-logs").start()
        try:
            got = results.get(timeout=LOGS_TIMEOUT)
        except queue.Empty:
            return []
        return [line for line in got if line.strip()][-lines:]


# -- pure readers of the manager's answers ---------------------------------------------------------

def _replicas(spec: Mapping[str, Any]) -> int:
    return int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 0))


def _node_fact(raw: Mapping[str, Any]) -> NodeFact:
    status = raw.get("Status") or {}
    manager = raw.get("ManagerStatus") or {}
    addr = status.get("Addr") or ""
    if addr in ("", "0.0.0.0") and manager.get("Addr"):
        # A manager may report 0.0.0.0 here; its manager address names the node.
        addr = manager["Addr"].rsplit(":", 1)[0]
    spec = raw.get("Spec") or {}
    return NodeFact(node_id=raw["ID"], name=(raw.get("Description") or {}).get("Hostname") or raw["ID"][:12],
                    addr=addr, state=status.get("State", "unknown"),
                    availability=spec.get("Availability", "active"), manager=bool(manager))


def _task_fact(raw: Mapping[str, Any], color: str, nodes: Mapping[str, NodeFact], default_port: int,
               app_port: int) -> TaskFact:
    status = raw.get("Status") or {}
    container = (raw.get("Spec") or {}).get("ContainerSpec") or {}
    node = nodes.get(raw.get("NodeID", ""))
    port = default_port
    for published in (status.get("PortStatus") or {}).get("Ports") or []:
        if published.get("TargetPort") == app_port and published.get("PublishedPort"):
            port = int(published["PublishedPort"])
            break
    exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
    return TaskFact(
        task_id=raw["ID"], color=color, slot=int(raw.get("Slot", 0)), node_id=raw.get("NodeID", ""),
        node=node.name if node else raw.get("NodeID", "")[:12], node_addr=node.addr if node else None,
        port=port, state=status.get("State", "unknown"), desired_state=raw.get("DesiredState", "unknown"),
        version=(container.get("Labels") or {}).get(LABEL_VERSION),
        image=container.get("Image", "").split("@", 1)[0],
        message=status.get("Err") or status.get("Message") or "",
        exit_code=int(exit_code) if exit_code is not None else None,
        node_up=node is not None and node.state == "ready",
    )

