"""Two nginx hosts in front of the test swarm (issue 17, TARGET=swarm), through the real CLI: each
an nginx + sshd in a network and mount namespace of its own (teststack/nginxhost.py, no default
route), both on the nodes' bridge pswarm0 over a plain veth, reaching the tasks' host-mode ports
on the nodes directly. NGINX_HOSTS names both; one key, one known_hosts file.

A deploy under load spread over both hosts (wrk inside each host, to its own nginx): 0 failed
requests on either; after the command returns no request on either host reaches the old color's
tasks; `status --json` shows both hosts serving the new color.
"""
from __future__ import annotations

import json
import re
from typing import Iterator, List

import pytest

from teststack.loadgen import Load
from teststack.nginxhost import NginxHost
from teststack.realstack import run_pipeline, wait_for
from teststack.swarmstack import NODE_NETWORK, swarm_env

pytestmark = pytest.mark.integration

BRIDGE = "pswarm0"   # scripts/swarm.sh's
REPLICAS = 2


@pytest.fixture
def hosts(swarm, tmp_path) -> Iterator[List[NginxHost]]:
    made: List[NginxHost] = []
    try:
        for _ in range(2):
            made.append(NginxHost.start(BRIDGE, NODE_NETWORK))
        for host in made[1:]:   # the first host's key logs in everywhere
            (host.dir / "authorized_keys").write_text((made[0].dir / "id_ed25519.pub").read_text())
        yield made
    finally:
        for host in made:
            host.stop()


def upstreams_after(host: NginxHost, offset: int) -> List[str]:
    """The upstream address of every request the host logged past `offset` ('-' when nginx
    answered itself)."""
    with open(host.access_log, "rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", "replace")
    return re.findall(r"upstream=(\S+)", text)


def test_a_deploy_under_load_over_two_nginx_hosts_in_front_of_the_swarm(swarm, app, hosts, demo_jar, tmp_path):
    a, b = hosts
    nodes = sorted(swarm["SWARM_NODES"].split())
    for host in hosts:   # the layout is what it claims: a plain veth on the nodes' subnet, no default route
        assert "default" not in host.routes()
        assert host.run("test", "-e", "/sys/class/net/eth0/bridge", check=False).returncode != 0
        assert host.run("ip", "-4", "route", "get", nodes[0]).stdout.split()[1:3] == ["dev", "eth0"]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("".join(host.known_hosts.read_text() for host in hosts))
    env = swarm_env(swarm, app, REPLICAS=str(REPLICAS), HEALTH_INTERVAL="0.5", HEALTH_TIMEOUT="120",
                    DRAIN_SECONDS="1", **a.env())
    env.update(NGINX_HOST="", NGINX_HOSTS=f"{a.address},{b.address}", NGINX_SSH_KNOWN_HOSTS=str(known_hosts))

    first = run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path)
    assert first.returncode == 0, first.stderr
    assert [h.get().text for h in hosts] == ["version=v1 color=blue\n"] * 2

    loads = [Load("http://127.0.0.1/", profile="close", seconds=180, connections=8, pause_ms=10,
                  prefix=host.argv()).start() for host in hosts]
    try:
        wait_for(lambda: all(":8081" in " ".join(upstreams_after(h, 0)) for h in hosts), 30, interval=0.2,
                 what="the load to reach blue through both hosts")
        second = run_pipeline(["deploy"], {**env, "APP_VERSION": "v2"}, tmp_path)
        returned = [host.access_log.stat().st_size for host in hosts]
        wait_for(lambda: all(len(upstreams_after(h, s)) > 20 for h, s in zip(hosts, returned)), 30,
                 interval=0.2, what="requests on both hosts after the deploy returned")
    finally:
        results = [load.stop() for load in loads]
    assert second.returncode == 0, second.stderr
    assert re.search(r"2 nginx hosts switched the live route to .+; skew [\d.]+ ms", second.stderr), second.stderr
    for name, result in zip("ab", results):
        print(f"\nhost {name}: {result.line()}")
        assert result.failed == 0 and result.sent > 50, f"host {name}: {result.summary()}"
        assert set(result.versions()) <= {"version=v1 color=blue", "version=v2 color=green"}, result.summary()
    # After the command returned: every request on either host went to a green task (port 8082).
    for name, host, offset in zip("ab", hosts, returned):
        after = upstreams_after(host, offset)
        stale = [u for u in after if not re.fullmatch(r"10\.99\.0\.\d+:8082", u)]
        assert after and stale == [], f"host {name}, after the deploy returned: {stale[:5]} of {len(after)}"

    status = run_pipeline(["status", "--json"], env, tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert [(r["host"], r["color"], r["version"]) for r in report["nginx_hosts"]] == \
        [(f"root@{a.address}:22", "green", "v2"), (f"root@{b.address}:22", "green", "v2")], report["nginx_hosts"]
    assert report["hosts_disagree"] is False
