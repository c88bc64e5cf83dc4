"""Health probes go where nginx is (issue 8, section 2).

- A deploy whose deploy network is a bridge on another engine (DOCKER_HOST naming a dockerd in a
  network namespace of the test's own) exits 3 before any probe and changes nothing.
- With nginx over SSH, the probes run on the nginx host: the tool itself runs in a namespace with
  no route to the containers (only a relay to sshd), and the deploy still passes the health gate,
  the seed's blue probe still finds blue, and status still probes both colors.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .netns import NetNamespace, NodeEngine, Relay
from teststack.realstack import REPO, pipeline_env, run_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node():
    """A second docker engine whose bridges live only in its own namespace."""
    namespace = NetNamespace("pnode")
    try:
        engine = NodeEngine(namespace)
    except BaseException:
        namespace.delete()
        raise
    yield engine
    engine.stop()
    namespace.delete()


def assert_refused(result, where: str, ip: str) -> None:
    assert result.returncode == 3, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    error = [line for line in result.stderr.splitlines() if line.startswith("pipeline: error:")]
    assert len(error) == 1, result.stderr
    assert f"not probing {ip}: health probes run on {where}, which " in error[0]
    assert "DEPLOY_NETWORK=" in error[0] and "DOCKER_HOST" in error[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["local-new-network", "ssh-new-network", "local-existing-network"])
def test_a_deploy_network_that_is_not_a_bridge_where_nginx_is_exits_3_and_changes_nothing(
        request, case, node, world, nginx, stack, tmp_path):
    env = dict(request.getfixturevalue("ssh_env" if case.startswith("ssh") else "settings_env"))
    env["DOCKER_HOST"] = node.url
    net = world.network
    if case.endswith("existing-network"):
        # Made by hand on the other engine, as a setup that once worked there would have it.
        ipam = {"Driver": "default", "Config": [{"Subnet": net.subnet, "Gateway": net.gateway}]}
        node.client.api.create_network(net.name, driver="bridge", ipam=ipam)
    include_before = nginx.include.read_text()

    result = run_pipeline(["deploy"], env, tmp_path)

    where = f"the nginx host root@127.0.0.1:{stack['SSH_PORT']}" if case.startswith("ssh") else "this machine"
    assert_refused(result, where, net.blue_ip)
    assert "building" not in result.stderr and "starting" not in result.stderr
    assert nginx.include.read_text() == include_before
    assert node.client.containers.list(all=True) == []
    assert node.client.images.list(filters={"label": f"pipeline.app={world.app}"}) == []
    node_networks = [n.name for n in node.client.networks.list(names=[net.name]) if n.name == net.name]
    if case.endswith("existing-network"):
        assert node_networks == [net.name]      # not ours to remove
        node.client.networks.get(net.name).remove()
    else:
        assert node_networks == []              # made by this run, removed again
    assert world.running_containers() == []     # and nothing on this machine's engine either


def test_status_does_not_probe_a_network_on_another_engine(node, world, nginx, settings_env, tmp_path):
    net = world.network
    ipam = {"Driver": "default", "Config": [{"Subnet": net.subnet, "Gateway": net.gateway}]}
    node.client.api.create_network(net.name, driver="bridge", ipam=ipam)
    try:
        result = run_pipeline(["status", "--json"], {**settings_env, "DOCKER_HOST": node.url}, tmp_path)
    finally:
        node.client.networks.get(net.name).remove()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert f"not probing {net.blue_ip}: health probes run on this machine" in report["probe_problem"]


@pytest.fixture
def client_namespace(stack):
    """A namespace with no route anywhere but its loopback, where 127.0.0.1:SSH_PORT is relayed
    to the stack's sshd: from in there, only the nginx host can reach the containers."""
    namespace = NetNamespace("pclient")
    relay = Relay(namespace, int(stack["SSH_PORT"]))
    yield namespace, relay
    relay.close()
    namespace.delete()


def run_inside(namespace: NetNamespace, args, env, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(namespace.argv(sys.executable, "-m", "pipeline", *args), cwd=cwd,
                          env=pipeline_env(env), capture_output=True, text=True, timeout=300)


def test_over_ssh_the_health_probes_run_on_the_nginx_host(client_namespace, world, nginx, ssh_env,
                                                          settings_env, tmp_path):
    namespace, relay = client_namespace
    net = world.network
    assert namespace.routes().strip() == "", "the client namespace must have no routes at all"

    result = run_inside(namespace, ["deploy"], ssh_env, tmp_path)

    assert result.returncode == 0, f"exit {result.returncode}\nstderr:{result.stderr}"
    assert "healthy after" in result.stderr
    assert nginx.get().text == "version=v1 color=blue\n"
    assert relay.connections >= 1

    # From in there the tool reaches the containers only through the nginx host: over SSH its
    # status probes answer 200, while with nginx "local" it refuses to probe (no route).
    over_ssh = run_inside(namespace, ["status", "--json"], ssh_env, tmp_path)
    assert over_ssh.returncode == 0, over_ssh.stderr
    report = json.loads(over_ssh.stdout)
    assert report["probe_problem"] is None
    assert report["colors"]["blue"]["health"].startswith("HTTP 200")

    local = run_inside(namespace, ["status", "--json"], settings_env, tmp_path)
    assert local.returncode == 0, local.stderr
    report = json.loads(local.stdout)
    assert f"not probing {net.blue_ip}: health probes run on this machine, which has no route to it" \
        in report["probe_problem"]
    assert report["colors"]["blue"]["health"] == "not probed (see probe_problem)"

    # The seed's rule (no usable include: probe blue) goes through the nginx host as well.
    nginx.include.write_text("# lost\n")
    second = run_inside(namespace, ["deploy"], {**ssh_env, "APP_VERSION": "v2"}, tmp_path)
    assert second.returncode == 0, f"exit {second.returncode}\nstderr:{second.stderr}"
    assert "blue answers its health check" in second.stderr
    assert nginx.get().text == "version=v2 color=green\n"


def test_stack_blackholes_private_ranges_idempotently_and_keeps_the_resolver(tmp_path):
    """scripts/stack.sh's safety net, run twice in a namespace of the test's own that looks like
    this machine (a default route via a gateway on a veth, a docker-like bridge)."""
    namespace = NetNamespace("proutes")
    try:
        def ip(*args: str) -> None:
            subprocess.run(["ip", "-n", namespace.name, *args], check=True, capture_output=True)

        ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("addr", "add", "192.0.2.2/24", "dev", "v0")
        for dev in ("v0", "v1"):
            ip("link", "set", dev, "up")
        ip("route", "add", "default", "via", "192.0.2.1")
        ip("link", "add", "br-test", "type", "bridge")
        ip("addr", "add", "172.29.250.1/24", "dev", "br-test")
        ip("link", "set", "br-test", "up")
        script = f"source {REPO / 'scripts' / 'stack.sh'}; ensure_blackholes; ensure_blackholes"
        done = subprocess.run(namespace.argv("bash", "-c", script), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        routes = namespace.routes().splitlines()
        for prefix in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
            assert routes.count(f"blackhole {prefix} metric 4000 ") == 1, routes
        resolvers = [line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
                     if line.startswith("nameserver")]
        private = [ipaddress.ip_network(r) for r in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
        for resolver in resolvers:
            address = ipaddress.ip_address(resolver)
            if address.version == 4 and any(address in net for net in private):
                assert routes.count(f"{resolver} via 192.0.2.1 dev v0 ") == 1, routes

        def route_get(address: str) -> str:
            return subprocess.run(["ip", "-n", namespace.name, "route", "get", address],
                                  capture_output=True, text=True).stdout
        assert route_get("172.29.250.7").startswith("172.29.250.7 dev br-test")   # the bridge wins
        assert route_get("172.20.0.2") == ""                                      # dropped here
        assert route_get("192.0.2.77").startswith("192.0.2.77 dev v0")            # not private: untouched
    finally:
        namespace.delete()


def test_one_engine_still_refuses_a_container_address_the_nginx_host_reaches_through_a_gateway(
        world, settings_env, tmp_path):
    """Issue 20 leaves TARGET=docker's rule as it was: an nginx host of its own (its own network
    and mount namespaces, sshd and nginx) that would reach the deploy network only through a
    gateway (this machine, on a bridge of the test's own) is refused before anything is built."""
    from teststack.nginxhost import Bridge, NginxHost

    net = world.network
    bridge = Bridge()
    try:
        with NginxHost.start(bridge.name, bridge.network, routes=[(net.subnet, str(bridge.host_address))],
                             form="set") as host:
            env = {k: v for k, v in settings_env.items()
                   if k not in ("NGINX_INCLUDE", "NGINX_TEST_COMMAND", "NGINX_RELOAD_COMMAND", "NGINX_PID_FILE")}
            env.update(host.env())
            include_before = host.include.read_text()
            assert host.run("ip", "-4", "route", "get", net.blue_ip).stdout.split()[1:3] == \
                ["via", str(bridge.host_address)]

            result = run_pipeline(["deploy"], env, tmp_path)

            assert result.returncode == 3, f"exit {result.returncode}\nstderr:{result.stderr}"
            error = [line for line in result.stderr.splitlines() if line.startswith("pipeline: error:")]
            assert error == [f"pipeline: error: not probing {net.blue_ip}: health probes run on the nginx host "
                             f"root@{host.address}:22, which reaches it only through the gateway "
                             f"{bridge.host_address} (eth0), not a local bridge. DEPLOY_NETWORK={net.name} "
                             f"(DEPLOY_SUBNET={net.subnet}) must be a docker bridge on the machine nginx runs on: "
                             f"point DOCKER_HOST at that machine's engine"], result.stderr
            assert "building" not in result.stderr and "starting" not in result.stderr
            assert host.include.read_text() == include_before
            assert world.running_containers() == []
            assert world.client.networks.list(names=[net.name]) == []   # made by this run, removed again
    finally:
        bridge.stop()
