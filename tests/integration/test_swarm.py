"""The swarm target's engine on a real 3-node swarm (issue 11), started by `scripts/swarm.sh`.

Every probe goes to a node address on the bridge pswarm0, inside the network namespaces
swarm.sh created (no default route there), from this host.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import pytest
import requests

from pipeline.core.errors import NotEnoughNodes, TaskFailed
from pipeline.core.settings import Secret
from pipeline.adapters.swarm import SwarmEngine
from pipeline.compose import make_target

from teststack.realstack import REPO, wait_for
from teststack.swarmstack import CONVERGE_TIMEOUT, NODES, swarm_settings, swarm_sh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def release(swarm, demo_jar, stack) -> str:
    """The demo image, built on the manager and pushed to the swarm's registry (password auth), as
    a deploy would. The workers have it only from there: their tasks running prove the credentials
    reached them with the service."""
    settings = swarm_settings(swarm, "swarmdemo")
    engine = make_target(settings, {})
    tag = settings.image_ref("v1")
    engine.build_image(REPO, tag, "v1")
    engine.push_and_pull(tag)
    return tag


def node_addrs(swarm: Dict[str, str]) -> List[str]:
    return swarm["SWARM_NODES"].split()


def get(addr: str, port: int, path: str) -> requests.Response:
    assert addr.startswith("10.99.0."), f"{addr} is not a node of the test swarm"
    return requests.get(f"http://{addr}:{port}{path}", timeout=(2, 5), headers={"Connection": "close"})


def answers(addr: str, port: int, path: str = "/actuator/health") -> bool:
    try:
        return get(addr, port, path).status_code == 200
    except requests.RequestException:
        return False


def converge(engine: SwarmEngine, color: str, timeout: float = CONVERGE_TIMEOUT) -> None:
    def done() -> bool:
        engine.check_tasks(color)  # a failed task ends the wait at once, with its log
        return engine.converged(color)
    wait_for(done, timeout, interval=0.5, what=f"{engine.swarm.replicas} running tasks of {color}")


def all_healthy(engine: SwarmEngine, color: str, timeout: float = 60) -> list:
    """Every running task answers 200 at its node's address and the color's port."""
    def check():
        addresses = engine.task_addresses(color)
        return addresses if addresses and all(answers(a.node_addr, a.port) for a in addresses) else None
    return wait_for(check, timeout, interval=0.5, what=f"every task of {color} to answer its health check")


def test_swarm_sh_start_is_idempotent(swarm):
    def pids() -> list:
        return [Path(swarm["SWARM_DIR"], f"n{i}", "docker.pid").read_text() for i in range(1, NODES + 1)]
    before = pids()
    out = swarm_sh("start", str(NODES))
    assert f"swarm: {NODES} nodes ready" in out
    assert "starting" not in out and "joined" not in out and "initialised" not in out, out
    assert pids() == before
    assert "dockerd DOWN" not in swarm_sh("status")


def test_each_color_runs_one_task_per_node_on_its_own_port_and_scales_to_0_and_back(swarm, release, app):
    engine = make_target(swarm_settings(swarm, app, REPLICAS="3"), {})
    engine.run("blue", release, "v1")
    converge(engine, "blue")
    addresses = all_healthy(engine, "blue")
    assert sorted(a.node_addr for a in addresses) == sorted(node_addrs(swarm))   # 3 distinct nodes
    assert {a.port for a in addresses} == {8081}
    assert {a.state for a in addresses} == {"running"}
    assert len({a.task_id for a in addresses}) == 3
    for a in addresses:
        assert get(a.node_addr, a.port, "/").text == "version=v1 color=blue\n"
    fact = engine.containers()["blue"]
    assert (fact.name, fact.status, fact.version, fact.image, fact.restart_count) == \
        (f"{app}-blue", "running", "v1", release, 0)
    service = engine.client.services.get(f"{app}-blue")
    assert service.attrs["Spec"]["Labels"] == {"pipeline.app": app, "pipeline.color": "blue",
                                               "pipeline.version": "v1"}
    assert service.attrs["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
    assert service.attrs["Spec"]["TaskTemplate"]["Placement"]["MaxReplicas"] == 1

    # Green beside it, on the same nodes, on its own port: what a blue-green switch needs.
    engine.run("green", release, "v2")
    converge(engine, "green")
    green = all_healthy(engine, "green")
    assert {a.port for a in green} == {8082} and len({a.node_addr for a in green}) == 3
    assert {get(a.node_addr, a.port, "/").text for a in green} == {"version=v2 color=green\n"}
    assert all(answers(a.node_addr, 8081) for a in addresses), "blue stopped answering while green started"

    # Stopped: scaled to 0, the service and its spec kept for a rollback.
    engine.stop("blue")
    assert engine.task_addresses("blue") == []
    assert engine.containers()["blue"].status == "stopped"
    assert not any(answers(a.node_addr, 8081) for a in addresses)
    assert engine.containers()["blue"].version == "v1"

    engine.start("blue")
    converge(engine, "blue")
    assert len({a.node_addr for a in all_healthy(engine, "blue")}) == 3
    assert engine.task_events("blue") == []
    assert {get(a.node_addr, a.port, "/").text for a in engine.task_addresses("blue")} == {"version=v1 color=blue\n"}


def test_a_release_that_crashes_fails_naming_the_task_its_node_and_its_log(swarm, release, app, tmp_path):
    env_file = tmp_path / "crash.env"
    env_file.write_text("CRASH_ON_START=1\n")
    engine = make_target(swarm_settings(swarm, app, REPLICAS="2", CONTAINER_ENV_FILE=str(env_file)), {})
    engine.run("green", release, "v2")
    # Each task runs for a moment, then exits: the first exit ends the wait.
    with pytest.raises(TaskFailed) as caught:
        wait_for(lambda: engine.check_tasks("green"), 60, interval=0.25, what="a task of green to fail")
    node_names = {n.name for n in engine.nodes()}
    assert caught.value.node in node_names
    assert f"of service {app}-green on node {caught.value.node} failed while starting (failed, exit code 1" \
        in str(caught.value)
    assert any("CRASH_ON_START=1, exiting with status 1" in line for line in caught.value.detail()), \
        list(caught.value.detail())
    assert engine.containers()["green"].restart_count >= 1


def test_without_the_registry_credentials_the_workers_cannot_pull_the_release(swarm, release, app):
    """The other side of every test here: the workers' tasks run only because the credentials
    went with the service."""
    settings = swarm_settings(swarm, app, REPLICAS="3")
    # A tag no node has pulled yet (they have the session's release cached): only the manager,
    # which pushes it, has it.
    pusher = make_target(settings, {})
    fresh = settings.image_ref(f"fresh-{app}")
    repository, _, tag = fresh.rpartition(":")
    pusher.api.tag(release, repository, tag)
    pusher.push_and_pull(fresh)
    engine = make_target(replace(settings, registry_username="", registry_password=Secret("")), {})
    engine.run("blue", fresh, "v1")
    with pytest.raises(TaskFailed) as caught:
        wait_for(lambda: engine.check_tasks("blue"), 60, interval=0.25, what="a worker's task to be rejected")
    # A worker could not pull it (swarm says "No such image" for a pull that was refused).
    assert f"failed while starting (rejected: No such image: {fresh})" in str(caught.value)
    manager = next(n for n in engine.nodes() if n.manager)
    assert caught.value.node != manager.name   # the manager has the image it pushed

    # The same image with the credentials: every node pulls it.
    pusher.run("blue", fresh, "v1")
    converge(pusher, "blue")
    assert len({a.node_addr for a in all_healthy(pusher, "blue")}) == 3


def test_a_node_down_moves_its_task_and_too_many_replicas_are_refused_before_any_change(swarm, release, app):
    engine = make_target(swarm_settings(swarm, app, REPLICAS="2"), {})
    engine.run("blue", release, "v1")
    converge(engine, "blue")
    before = all_healthy(engine, "blue")
    manager = next(n for n in engine.nodes() if n.manager)
    # Stop a worker running a task (the manager holds the swarm's state: it stays up).
    victim = next(a for a in before if a.node_addr != manager.addr)
    index = int(victim.node_addr.rsplit(".", 1)[1]) - 10
    try:
        swarm_sh("stop-node", str(index))
        wait_for(lambda: not any(n.ready for n in engine.nodes() if n.addr == victim.node_addr), 60,
                 interval=0.5, what=f"the manager to see node {victim.node} down")
        # From then on its task is no address to probe or to send traffic to.
        assert victim.node_addr not in {a.node_addr for a in engine.task_addresses("blue")}

        # Its task is lost with the node, not a failure of the release; swarm moves it.
        def moved() -> bool:
            engine.check_tasks("blue")
            return engine.converged("blue")
        wait_for(moved, CONVERGE_TIMEOUT, interval=0.5, what="blue's task to move off the stopped node")
        after = all_healthy(engine, "blue")
        assert victim.node_addr not in {a.node_addr for a in after}
        assert len({a.node_addr for a in after}) == 2
        assert any(e.kind == "node-lost" and e.task.task_id == victim.task_id for e in engine.task_events("blue"))

        # Now only 2 nodes can take a task: REPLICAS=3 is refused before anything changes.
        three = make_target(swarm_settings(swarm, app, REPLICAS="3"), {})
        with pytest.raises(NotEnoughNodes) as caught:
            three.run("green", release, "v2")
        assert caught.value.exit_code == 3
        assert str(caught.value).startswith("REPLICAS=3 but only 2 swarm node(s) can run a task")
        assert f"not ready: {victim.node} (down, active)" in str(caught.value)
        assert "green" not in three.containers()
        engine.stop("blue")
        with pytest.raises(NotEnoughNodes):
            three.start("blue")
        assert three.containers()["blue"].status == "stopped"
    finally:
        swarm_sh("start")   # the stopped node comes back and rejoins
    wait_for(lambda: sum(n.ready for n in engine.nodes()) == NODES, 60, interval=0.5,
             what="the stopped node to be ready again")
