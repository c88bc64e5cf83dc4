"""TARGET=swarm behind an nginx host of its own (issue 20), through the real CLI, on the real
3-node test swarm: nginx runs in a network namespace and a mount namespace of its own (its own
sshd, nginx and /etc/nginx, the include where an operator puts it: teststack/nginxhost.py),
reached by the tool over SSH, never on this machine. Two layouts:

- "veth": on the nodes' subnet (the bridge pswarm0) over a plain veth: its eth0 is no bridge;
- "router": on a subnet of its own that reaches the nodes only through a router namespace (the
  nginx host's route to them goes via a gateway), no default route anywhere.

Each deploys v1, deploys v2 under load through that nginx (0 failed requests, verified for 4 s),
rolls back, and has a release answering 500 to 30% of requests switched back by verification;
`status` names the route the nginx host reaches each task by. The load is wrk run inside the
nginx host (on its loopback, to its nginx), bounded by its -d.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

from teststack.loadgen import Load
from teststack.nginxhost import NginxHost, Router
from teststack.realstack import run_pipeline, wait_for
from teststack.swarmstack import NODE_NETWORK, swarm_env

pytestmark = pytest.mark.integration

BRIDGE = "pswarm0"   # scripts/swarm.sh's
REPLICAS = 2         # of 3 nodes: one node runs no task of a color


@pytest.fixture(params=["veth", "router"])
def layout(request, swarm) -> Iterator[Tuple[NginxHost, Optional[Router]]]:
    if request.param == "veth":
        with NginxHost.start(BRIDGE, NODE_NETWORK) as host:
            yield host, None
    else:
        with Router.start(BRIDGE, NODE_NETWORK) as router, NginxHost.behind(router) as host:
            yield host, router


def run(args: List[str], env: Dict[str, str], cwd: Path, **overrides: str):
    return run_pipeline(args, {**env, **overrides}, cwd)


def assert_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"


def servers(host: NginxHost) -> List[str]:
    """What the include in the nginx host's /etc/nginx/conf.d lists, sorted."""
    return sorted(re.findall(r"server (\S+);", host.include.read_text()))


def upstreams(host: NginxHost, port: int) -> Set[str]:
    """The distinct task addresses the nginx host's access log shows answering on `port`."""
    return set(re.findall(rf"upstream=(10\.99\.0\.\d+:{port})\b", host.access_log.read_text()))


def load(host: NginxHost, seconds: int) -> Load:
    """wrk inside the nginx host, to its nginx: every request goes through that nginx."""
    return Load("http://127.0.0.1/", profile="close", seconds=seconds, connections=8, prefix=host.argv())


def task_addresses(env: Dict[str, str], cwd: Path, color: str) -> Tuple[List[str], List[dict]]:
    """`status --json`: the running tasks' addresses of `color`, and those tasks."""
    status = run(["status", "--json"], env, cwd)
    assert_ok(status)
    report = json.loads(status.stdout)
    assert report["probe_problem"] is None, report["probe_problem"]
    running = [t for t in report["colors"][color]["tasks"] if t["state"] == "running"]
    return sorted(t["address"] for t in running), running


def test_deploy_under_load_rollback_and_a_bad_release_switched_back_through_an_nginx_host_of_its_own(
        swarm, app, layout, demo_jar, tmp_path):
    host, router = layout
    nodes = sorted(swarm["SWARM_NODES"].split())
    # The layout is what it claims: no default route; the nodes reached over a plain interface,
    # or only through the router.
    assert "default" not in host.routes()
    assert host.run("test", "-e", "/sys/class/net/eth0/bridge", check=False).returncode != 0   # eth0: no bridge
    route = host.run("ip", "-4", "route", "get", nodes[0]).stdout.split()
    expected_route = "directly on eth0" if router is None else f"via {router.gateway} on eth0"
    assert route[1:5] == (["dev", "eth0", "src", host.address] if router is None
                          else ["via", router.gateway, "dev", "eth0"])
    env = swarm_env(swarm, app, REPLICAS=str(REPLICAS), HEALTH_INTERVAL="0.5", HEALTH_TIMEOUT="120",
                    DRAIN_SECONDS="1", **host.env())

    first = run(["deploy"], env, tmp_path, APP_VERSION="v1")
    assert_ok(first)
    blue, tasks = task_addresses(env, tmp_path, "blue")
    assert len(blue) == REPLICAS and all(a.split(":")[0] in nodes and a.endswith(":8081") for a in blue)
    assert servers(host) == blue
    assert host.get().text == "version=v1 color=blue\n"
    # status: per task, the route the nginx host reaches it by, and its health through it.
    assert [t["route"] for t in tasks] == [expected_route] * REPLICAS
    assert all(t["health"].startswith("HTTP 200") for t in tasks)
    text = run(["status"], env, tmp_path)
    assert_ok(text)
    assert text.stdout.count(f"(route: {expected_route})") == REPLICAS

    # v2 under load through that nginx, verified for 4 s over every task: nothing lost.
    with load(host, 240) as running:
        wait_for(lambda: upstreams(host, 8081) == set(blue), 30, interval=0.2, what="the load to reach every blue task")
        second = run(["deploy"], env, tmp_path, APP_VERSION="v2", VERIFY_SECONDS="4")
        assert_ok(second)
        assert "verified for 4s: 0 5xx of" in second.stderr
        green, _ = task_addresses(env, tmp_path, "green")
        wait_for(lambda: upstreams(host, 8082) == set(green), 30, interval=0.2,
                 what="the load to reach every green task")
    result = running.result
    assert result is not None
    print(f"\n{router and 'router' or 'veth'}: deploy v1 -> v2 on {REPLICAS} tasks: {result.line()}")
    assert result.failed == 0, result.summary()
    assert set(result.versions()) == {"version=v1 color=blue", "version=v2 color=green"}, result.summary()
    assert servers(host) == green and all(a.endswith(":8082") for a in green)

    back = run(["rollback"], env, tmp_path)
    assert_ok(back)
    assert host.get().text == "version=v1 color=blue\n"
    assert servers(host) == task_addresses(env, tmp_path, "blue")[0]

    # A release answering 500 to 30% of requests: verification under that load switches back.
    (tmp_path / "bad.env").write_text("FAIL_RATE=0.3\n")
    with load(host, 150) as running:
        wait_for(lambda: host.access_log.stat().st_size > 0, 10, what="the load to start")
        bad = run(["deploy"], env, tmp_path, APP_VERSION="v3", VERIFY_SECONDS="5",
                  CONTAINER_ENV_FILE=str(tmp_path / "bad.env"))
        time.sleep(0.5)
    assert bad.returncode == 1, f"exit {bad.returncode}\nstderr:{bad.stderr}"
    assert "pipeline: error: switched back to blue: green answered 5xx to" in bad.stderr
    blue_now, _ = task_addresses(env, tmp_path, "blue")
    assert servers(host) == blue_now and len(blue_now) == REPLICAS
    assert host.get().text == "version=v1 color=blue\n"
    assert running.result is not None and running.result.socket_errors == 0, running.result.summary()
