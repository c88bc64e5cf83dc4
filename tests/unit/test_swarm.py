"""The swarm target's pure parts: reading the manager's answers and judging tasks."""
import pytest

from pipeline.core.errors import EXIT_PREFLIGHT, NotEnoughNodes, TaskFailed
from pipeline.adapters.swarm import NodeFact, TaskFact, _node_fact, _task_fact, classify


def task(state="running", desired="running", node_id="n1", exit_code=0, message="started") -> TaskFact:
    return TaskFact(task_id="t1", color="blue", slot=1, node_id=node_id, node="pswarm-n1",
                    node_addr="10.99.0.11", port=8081, state=state, desired_state=desired, version="v1",
                    image="r:5001/app:v1", message=message, exit_code=exit_code)


@pytest.mark.parametrize("state, desired, node_ready, exit_code, message, kind, reason", [
    ("running", "running", True, 0, "started", None, None),
    ("pending", "running", True, None, "no suitable node (max replicas per node limit exceed)", None, None),
    ("starting", "running", True, None, "starting", None, None),
    # A replacement waiting out the restart delay: its predecessor is the failure, not it.
    ("assigned", "ready", True, None, "scheduler assigned task to node", None, None),
    ("failed", "shutdown", True, 1, "task: non-zero exit (1)", "failed", "failed, exit code 1: task: non-zero exit (1)"),
    ("complete", "shutdown", True, 0, "finished", "failed", "complete"),
    ("rejected", "shutdown", True, None, "No such image: r:5001/app:v1", "failed",
     "rejected: No such image: r:5001/app:v1"),
    # Its node is gone: swarm moves it; the gate waits for REPLICAS healthy instead of failing.
    ("running", "running", False, 0, "started", "node-lost", "node pswarm-n1 is not ready (task running)"),
    ("running", "shutdown", False, 0, "started", "node-lost", "node pswarm-n1 is not ready (task running)"),
    ("failed", "shutdown", False, 143, "task: non-zero exit (143)", "node-lost", "node pswarm-n1 is not ready (task failed)"),
    # Shut down by swarm on a node that is up (it came back after its task was moved).
    ("shutdown", "shutdown", True, 0, "shutdown", "node-lost", "moved off node pswarm-n1 (shutdown, desired shutdown)"),
])
def test_classify(state, desired, node_ready, exit_code, message, kind, reason):
    event = classify(task(state, desired, exit_code=exit_code, message=message), node_ready)
    assert (event and event.kind, event and event.reason) == (kind, reason)


def test_an_unassigned_task_is_never_lost_with_a_node():
    assert classify(task("pending", node_id=""), node_ready=False) is None


def test_node_fact_takes_a_manager_address_that_reads_0000_from_its_manager_status():
    raw = {"ID": "abc", "Description": {"Hostname": "pswarm-n1"}, "Spec": {"Availability": "active"},
           "Status": {"State": "ready", "Addr": "0.0.0.0"}, "ManagerStatus": {"Addr": "10.99.0.11:2377"}}
    assert _node_fact(raw) == NodeFact("abc", "pswarm-n1", "10.99.0.11", "ready", "active", True)


@pytest.mark.parametrize("state, availability, ready", [
    ("ready", "active", True), ("down", "active", False), ("ready", "drain", False), ("ready", "pause", False)])
def test_a_node_takes_tasks_only_when_ready_and_active(state, availability, ready):
    assert NodeFact("i", "n", "10.99.0.12", state, availability, False).ready is ready


def test_task_fact_reads_node_port_version_and_failure():
    nodes = {"n2": NodeFact("n2", "pswarm-n2", "10.99.0.12", "ready", "active", False)}
    raw = {"ID": "t9", "Slot": 2, "NodeID": "n2", "DesiredState": "shutdown", "CreatedAt": "x",
           "Spec": {"ContainerSpec": {"Image": "r:5001/app:v2@sha256:abcd",
                                      "Labels": {"pipeline.version": "v2"}}},
           "Status": {"State": "failed", "Err": "task: non-zero exit (1)", "Message": "started",
                      "ContainerStatus": {"ExitCode": 1},
                      "PortStatus": {"Ports": [{"TargetPort": 8080, "PublishedPort": 9002, "PublishMode": "host"}]}}}
    fact = _task_fact(raw, "green", nodes, default_port=8082, app_port=8080)
    assert (fact.node, fact.node_addr, fact.port, fact.version, fact.image, fact.message, fact.exit_code) == \
        ("pswarm-n2", "10.99.0.12", 9002, "v2", "r:5001/app:v2", "task: non-zero exit (1)", 1)
    assert not fact.running
    assert fact.node_up


def test_a_pending_task_has_no_node_and_the_colors_port():
    raw = {"ID": "t1", "DesiredState": "running", "Status": {"State": "pending"}, "Spec": {}}
    fact = _task_fact(raw, "blue", {}, default_port=8081, app_port=8080)
    assert (fact.node_id, fact.node_addr, fact.port, fact.exit_code, fact.node_up) == ("", None, 8081, None, False)


def test_a_task_on_a_down_node_is_not_up():
    nodes = {"n3": NodeFact("n3", "pswarm-n3", "10.99.0.13", "down", "active", False)}
    raw = {"ID": "t1", "NodeID": "n3", "DesiredState": "running", "Status": {"State": "running"}, "Spec": {}}
    fact = _task_fact(raw, "blue", nodes, default_port=8081, app_port=8080)
    assert fact.running and not fact.node_up


def test_not_enough_nodes_is_a_preflight_error_naming_the_nodes():
    error = NotEnoughNodes(3, ["pswarm-n1", "pswarm-n2"], ["pswarm-n3 (down, active)"])
    assert error.exit_code == EXIT_PREFLIGHT
    assert str(error) == ("REPLICAS=3 but only 2 swarm node(s) can run a task (ready: pswarm-n1, pswarm-n2; "
                          "not ready: pswarm-n3 (down, active)); at most one task of a color runs per node")


def test_task_failed_names_task_node_and_cause_with_its_log():
    error = TaskFailed("app-green", "2533itqipf7rabcdef", "pswarm-n1", "failed, exit code 1", ["boom"])
    assert str(error) == "task 2533itqipf7r of service app-green on node pswarm-n1 failed while starting (failed, exit code 1)"
    assert list(error.detail()) == ["task log: boom"]
