"""teststack/nginxhost.py is what it claims: an nginx host of its own (its own /etc/nginx, /run and
logs, no default route, its own sshd the tool logs into with the settings it hands out, its own
nginx answering on its address), and one behind a router that reaches the near network only
through a gateway. On bridges of the test's own: no swarm needed."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import paramiko
import pytest

from pipeline.compose import nginx_hosts
from pipeline.core.settings import Settings

from teststack.nginxhost import Bridge, NginxHost, Router, processes_in

pytestmark = pytest.mark.integration


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    made = Bridge()
    yield made
    made.stop()


def sftp_client(host: NginxHost) -> paramiko.SSHClient:
    """An SSH client that trusts only the known_hosts the host hands out."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(host.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host.address, 22, host.user, key_filename=str(host.key), timeout=10,
                   look_for_keys=False, allow_agent=False)
    return client


def test_a_host_of_its_own_has_its_own_files_no_default_route_sshd_and_nginx(bridge, tmp_path):
    machine_conf = Path("/etc/nginx/nginx.conf").read_text() if Path("/etc/nginx/nginx.conf").exists() else None
    with NginxHost.start(bridge.name, bridge.network) as host:
        name, address = host.name, host.address
        # Its network: the bridge's subnet, directly connected, and nothing else.
        assert "default" not in host.routes()
        assert host.run("ip", "-4", "route", "get", bridge.host_address).stdout.split()[:3] == \
            [bridge.host_address, "dev", "eth0"]
        assert host.run("ip", "-4", "route", "get", "198.51.100.7", check=False).returncode != 0

        # Its /etc/nginx and /run are its own: what it writes there is not the machine's.
        inside = host.run("cat", "/etc/nginx/nginx.conf").stdout
        assert inside.startswith("# Written by teststack/nginxhost.py") and inside != machine_conf
        assert sorted(host.run("ls", "/sys/class/net").stdout.split()) == ["eth0", "lo"]
        host.run("touch", "/etc/nginx/written-inside", "/run/written-inside")
        assert not Path("/etc/nginx/written-inside").exists() and not Path("/run/written-inside").exists()
        assert host.file("/etc/nginx/written-inside").exists()
        pid = host.run("cat", "/run/nginx.pid").stdout.strip()
        assert host.file("/run/nginx.pid").read_text().strip() == pid and int(pid) in processes_in(name)

        # nginx answers on its address, port 80, and logs to its own /var/log/nginx.
        answer = host.get("/")
        assert answer.headers["Server"].startswith("nginx") and answer.status_code == 502   # no deploy yet
        assert "GET / HTTP/1.1" in host.access_log.read_text()

        # Its sshd, with the key and known_hosts it hands out: SFTP sees its own /etc/nginx, a
        # session runs in its namespaces.
        client = sftp_client(host)
        try:
            sftp = client.open_sftp()
            assert "written-inside" in sftp.listdir("/etc/nginx")
            assert sftp.open("/etc/nginx/conf.d/service-upstream.inc").read().decode() == host.include.read_text()
            _, out, _ = client.exec_command("ip -4 route; cat /run/nginx.pid", timeout=20)
            text = out.read().decode()
            assert "default" not in text and pid in text
        finally:
            client.close()

        # The tool, given host.env(), runs the switch's commands there (its defaults: `nginx -t`).
        settings = Settings.from_env({**host.env(), "NGINX_INCLUDE_FORM": "upstream"}, tmp_path)
        with nginx_hosts(settings) as hosts:
            tool_side = hosts[0]
            assert tool_side.run(["nginx", "-t"]).code == 0
            assert tool_side.read_text(settings.nginx_include.as_posix()) == host.include.read_text()

        # Its sshd killed: no login; started again: logins work.
        host.kill_sshd()
        assert host.sshd_pid() is None
        with pytest.raises((OSError, paramiko.SSHException)):
            sftp_client(host)
        host.start_sshd()
        sftp_client(host).close()
    # Gone, all of it.
    assert not Path(f"/run/netns/{name}").exists() and not host.dir.exists()
    with NginxHost.start(bridge.name, bridge.network) as again:
        assert again.address == address   # its claim was released


def test_a_host_behind_a_router_reaches_the_near_network_only_through_the_gateway(bridge):
    with NginxHost.start(bridge.name, bridge.network) as near, Router.start(bridge.name, bridge.network) as router, \
            NginxHost.behind(router) as far:
        assert far.network != bridge.network and "default" not in far.routes()
        assert "default" not in router.run("ip", "-4", "route").stdout
        words = far.run("ip", "-4", "route", "get", near.address).stdout.split()
        assert words[:5] == [near.address, "via", router.gateway, "dev", "eth0"]
        # Through the router: the far host reaches the near one's nginx, and this machine (the
        # tool's side) reaches the far host's sshd and nginx.
        code = far.run("curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", near.url).stdout
        assert code == "502"
        assert far.get("/").headers["Server"].startswith("nginx")
        client = sftp_client(far)
        try:
            assert "nginx.conf" in client.open_sftp().listdir("/etc/nginx")
        finally:
            client.close()
        name = router.name
    assert not Path(f"/run/netns/{name}").exists()
    assert router.network not in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
