"""Several nginx hosts of their own (teststack/nginxhost.py) in front of the single engine, for
issue 17's tests and bench/several_hosts.py.

    hosts = HostsOnNetwork.start(client, network, mode="reload", count=2)
    env = hosts.demo_env(app, stack)          # the demo release on the network, switched on every host
    env = {**app_settings, **hosts.env()}     # or only NGINX_HOSTS, the one key and known_hosts, the mode
    hosts.hosts[0].get("/")                   # each an nginxhost.NginxHost
    hosts.load(seconds=30)                    # wrk inside every host's namespace, to its own nginx
    hosts.stop()

The docker deploy network (TestNetwork) is made here, before the hosts: each host's veth is a port
of the network's bridge on this machine, so its nginx reaches the containers as an nginx on the
docker host would. Inside each host the veth is itself enslaved to a bridge of the host's own
(`br0`, holding the host's address; the host's sysfs is its own network namespace's, so
/sys/class/net/br0/bridge is there over SFTP): the tool's route rule for TARGET=docker (a container address is probed only
where it is on a bridge of that machine, health.Prober) then holds there as on a docker host,
with no exception made for the test. No namespace has a default route.

Every host takes the first host's key (its authorized_keys) and one known_hosts file lists them
all: NGINX_SSH_KEY and NGINX_SSH_KNOWN_HOSTS are one setting for every host of NGINX_HOSTS.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import docker

from . import loadgen
from .nginxhost import NginxHost, _accept_bridged
from .realstack import TestNetwork, demo_settings

MODES = {"reload": "set", "live": "live"}   # switch mode -> the nginx host's config form


class HostsOnNetwork:
    def __init__(self, client: docker.DockerClient, network: TestNetwork, mode: str, count: int) -> None:
        self.client, self.network, self.mode = client, network, mode
        self.hosts: List[NginxHost] = []
        self.dir = Path(tempfile.mkdtemp(prefix="pipeline-hosts-"))
        self.bridge: Optional[str] = None
        try:
            ipam = docker.types.IPAMConfig(pool_configs=[
                docker.types.IPAMPool(subnet=network.subnet, gateway=network.gateway)])
            made = client.networks.create(network.name, driver="bridge", ipam=ipam)
            self.bridge = f"br-{made.id[:12]}"
            _accept_bridged(self.bridge, True)
            for _ in range(count):
                host = NginxHost.start(self.bridge, network.subnet, form=MODES[mode],
                                       allowed_networks=[network.subnet])
                self.hosts.append(host)
                _bridge_inside(host, network.subnet)
            key = (self.hosts[0].dir / "id_ed25519.pub").read_text()
            for host in self.hosts[1:]:
                with open(host.dir / "authorized_keys", "a") as keys:
                    keys.write(key)
            self.known_hosts.write_text("".join(h.known_hosts.read_text() for h in self.hosts))
        except BaseException:
            self.stop()
            raise

    @classmethod
    def start(cls, client: docker.DockerClient, network: TestNetwork, mode: str = "reload",
              count: int = 2) -> "HostsOnNetwork":
        return cls(client, network, mode, count)

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def env(self, count: Optional[int] = None) -> Dict[str, str]:
        """The settings that make the tool switch every host (the first `count` of them)."""
        hosts = self.hosts[:count]
        env = {"NGINX_HOST": "", "NGINX_HOSTS": ",".join(f"root@{h.address}:22" for h in hosts),
               "NGINX_SSH_USER": "root", "NGINX_SSH_KEY": str(self.hosts[0].key),
               "NGINX_SSH_KNOWN_HOSTS": str(self.known_hosts),
               "NGINX_INCLUDE": "/etc/nginx/conf.d/service-url.inc",
               "NGINX_ACCESS_LOG": "/var/log/nginx/app.access.log"}
        if len(hosts) == 1:
            env.update(NGINX_HOSTS="", NGINX_HOST=hosts[0].address)
        if self.mode == "live":
            env.update(SWITCH_MODE="live", NGINX_TEST_COMMAND="false", NGINX_RELOAD_COMMAND="false")
        else:
            env.update(SWITCH_MODE="reload", NGINX_PREVIEW_INCLUDE="")
        return env

    def demo_env(self, app: str, stack: Dict[str, str]) -> Dict[str, str]:
        """The settings for a fast deploy of the demo release as `app` on this network (the blue
        and green addresses its own), switched on every host: the tests' and the bench's set-up."""
        return {
            **demo_settings(app, self.network, stack),
            "HEALTH_INTERVAL": "0.5", "HEALTH_TIMEOUT": "30", "DRAIN_SECONDS": "1", "STOP_TIMEOUT": "5",
            "VERIFY_SECONDS": "0",
            **self.env(),
        }

    def load(self, seconds: float, connections: int = 8, pause_ms: int = 10,
             count: Optional[int] = None) -> List[loadgen.Load]:
        """wrk in every host's network namespace against its own nginx (127.0.0.1 there), new
        connection per request, paced: the load spread over the hosts. Started; bounded by `seconds`."""
        return [loadgen.Load("http://127.0.0.1:80/", profile="close", seconds=seconds, connections=connections,
                             pause_ms=pause_ms, prefix=_netns_prefix(host)).start()
                for host in self.hosts[:count]]

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()
        self.hosts = []
        if self.bridge is not None:
            _accept_bridged(self.bridge, False)
        for net in self.client.networks.list(names=[self.network.name]):
            if net.name == self.network.name:
                net.reload()
                for container in net.containers:
                    net.disconnect(container, force=True)
                net.remove()
        shutil.rmtree(self.dir, ignore_errors=True)


def _netns_prefix(host: NginxHost) -> List[str]:
    """Run a command in the host's network namespace only (its 127.0.0.1 is its nginx)."""
    return ["ip", "netns", "exec", host.name]


def _bridge_inside(host: NginxHost, subnet: str) -> None:
    """The host's address moved from its veth to a bridge of its own holding the veth (its mount
    namespace has a sysfs of its own network namespace, nginxhost.py: /sys/class/net shows br0)."""
    prefix = subnet.split("/")[1]
    for argv in (["ip", "link", "add", "br0", "type", "bridge"],
                 ["ip", "addr", "del", f"{host.address}/{prefix}", "dev", "eth0"],
                 ["ip", "link", "set", "eth0", "master", "br0"],
                 ["ip", "addr", "add", f"{host.address}/{prefix}", "dev", "br0"],
                 ["ip", "link", "set", "br0", "up"]):
        host.run(*argv)
