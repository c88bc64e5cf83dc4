"""Several nginx hosts switched as one (issue 17), on the real stack: two nginx hosts of their own
(teststack/nginxhost.py: nginx + sshd each in its own network and mount namespace, no default
route), both in front of the single engine's containers on the deploy network
(teststack/severalhosts.py), in both switch modes, with load spread over both hosts (wrk inside
each host's namespace against its own nginx).

One setup per switch mode for the whole module (two hosts, the network): the tests run in order
on it, each starting from whatever the one before left live.
"""
from __future__ import annotations

import itertools
import re
import shutil
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from pipeline.core.answers import parse_log_line
from teststack import loadgen
from teststack.realstack import REPO, remove_app, reserve_network, run_pipeline
from teststack.severalhosts import HostsOnNetwork

pytestmark = pytest.mark.integration

_VERSIONS = itertools.count(1)


class Fleet:
    def __init__(self, hosts: HostsOnNetwork, env: Dict[str, str], workdir: Path, client) -> None:
        self.hosts, self.env, self.workdir, self.client = hosts, env, workdir, client
        self.a, self.b = hosts.hosts

    def containers_of(self, version: str) -> list:
        return self.client.containers.list(all=True, filters={"label": [f"pipeline.app={self.env['APP_NAME']}",
                                                                        f"pipeline.version={version}"]})

    def deploy(self, **overrides: str):
        version = f"v{next(_VERSIONS)}"
        result = run_pipeline(["deploy"], {**self.env, "APP_VERSION": version, **overrides}, self.workdir,
                              timeout=180)
        return version, result

    def serving(self) -> List[str]:
        """What each host's nginx answers `GET /` with (the demo's first line)."""
        return [host.get("/").text.strip() for host in (self.a, self.b)]

    def log_sizes(self) -> List[int]:
        return [host.access_log.stat().st_size for host in (self.a, self.b)]

    def answered_since(self, sizes: List[int]) -> List[List[Tuple[str, int]]]:
        """Per host: (upstream address, status) of every request logged after `sizes`."""
        out = []
        for host, size in zip((self.a, self.b), sizes):
            with open(host.access_log, "rb") as log:
                log.seek(size)
                lines = log.read().decode("utf-8", "replace").splitlines()
            out.append([parsed for parsed in map(parse_log_line, lines) if parsed is not None])
        return out


def _fleet(mode: str, client, stack, tmp_path_factory) -> Iterator[Fleet]:
    network = reserve_network(client)
    app = f"t{network.name[-6:]}"
    hosts = HostsOnNetwork.start(client, network, mode, count=2)
    workdir = tmp_path_factory.mktemp(f"several-{mode}")
    env = {
        "APP_NAME": app, "BUILD_COMMAND": "",
        "DOCKERFILE": str(REPO / "docker" / "Dockerfile"), "BUILD_CONTEXT": str(REPO / "demo"),
        "BUILD_ARGS": f"BASE_IMAGE={stack['JRE_IMAGE']} JAR=build/libs/app.jar",
        "DEPLOY_NETWORK": network.name, "DEPLOY_SUBNET": network.subnet, "DEPLOY_GATEWAY": network.gateway,
        "BLUE_IP": network.blue_ip, "GREEN_IP": network.green_ip,
        "HEALTH_INTERVAL": "0.5", "HEALTH_TIMEOUT": "30", "DRAIN_SECONDS": "1", "STOP_TIMEOUT": "5",
        "VERIFY_SECONDS": "0",
        **hosts.env(),
    }
    try:
        yield Fleet(hosts, env, workdir, client)
    finally:
        remove_app(client, app)   # the containers first: nothing is probed on a vanished network
        hosts.stop()


@pytest.fixture(scope="module")
def reload_fleet(client, release_layers, stack, tmp_path_factory) -> Iterator[Fleet]:
    yield from _fleet("reload", client, stack, tmp_path_factory)


@pytest.fixture(scope="module")
def live_fleet(client, release_layers, stack, tmp_path_factory) -> Iterator[Fleet]:
    yield from _fleet("live", client, stack, tmp_path_factory)


@pytest.fixture(params=["reload", "live"])
def fleet(request) -> Fleet:
    return request.getfixturevalue(f"{request.param}_fleet")


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("pipeline: error:")]
    assert lines, result.stderr
    return lines[0]


def ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"


def live(fleet: Fleet) -> str:
    """Something live on both hosts (a first deploy when nothing is): the version."""
    try:
        answers = fleet.serving()
    except Exception:
        answers = []
    if len(set(answers)) == 1 and answers[0].startswith("version="):
        return answers[0]
    version, result = fleet.deploy()
    ok(result)
    answers = fleet.serving()
    assert len(set(answers)) == 1 and answers[0].startswith(f"version={version} "), answers
    return answers[0]


def loaded(fleet: Fleet, seconds: int = 60) -> List[loadgen.Load]:
    return fleet.hosts.load(seconds=seconds, connections=8, pause_ms=10)


def stopped(loads: List[loadgen.Load]) -> List[loadgen.LoadResult]:
    return [load.stop() for load in loads]


def test_a_deploy_under_load_on_both_hosts_moves_both_and_fails_no_request(fleet):
    before = live(fleet)
    old_color = before.split("color=")[1]
    loads = loaded(fleet)
    time.sleep(1)
    version, result = fleet.deploy()
    returned = fleet.log_sizes()
    time.sleep(1)
    results = stopped(loads)
    ok(result)
    for host, load in zip("ab", results):
        assert load.failed == 0 and load.sent > 50, f"host {host}: {load.line()}"
    assert fleet.serving() == [f"version={version} color={'green' if old_color == 'blue' else 'blue'}"] * 2
    old_ip = fleet.env["BLUE_IP"] if old_color == "blue" else fleet.env["GREEN_IP"]
    for host, answered in zip("ab", fleet.answered_since(returned)):
        assert answered, f"host {host} logged no request after the deploy returned"
        # 499: wrk stopped with the request in flight (nginx logs the client closing), not a failure;
        # but never one that went to the old color.
        stale = [a for a in answered if (a[0] or "").startswith(f"{old_ip}:") or
                 (a[1] != 499 and (a[0] is None or a[1] != 200))]
        assert stale == [], f"host {host}, after the deploy returned: {stale[:5]}"
    skew = re.search(r"2 nginx hosts switched the live route to \S+; skew ([\d.]+) ms", result.stderr)
    assert skew is not None, result.stderr


def test_one_host_failing_preflight_is_exit_3_naming_it_before_anything_changes(fleet):
    before = live(fleet)
    if fleet.hosts.mode == "reload":
        broken, restore = fleet.b.file("/run/nginx.pid"), fleet.b.file("/run/nginx.pid.aside")
    else:
        broken, restore = fleet.b.file("/etc/nginx/pipeline-admin.token"), \
            fleet.b.file("/etc/nginx/pipeline-admin.token.aside")
    broken.rename(restore)
    try:
        version, result = fleet.deploy()
    finally:
        restore.rename(broken)
    assert result.returncode == 3, result.stderr
    assert fleet.b.address in error_line(result), result.stderr
    assert fleet.serving() == [before] * 2 and fleet.containers_of(version) == []


def test_nginx_t_failing_on_one_host_switches_no_host(reload_fleet):
    fleet = reload_fleet
    before = live(fleet)
    includes = [host.include.read_text() for host in (fleet.a, fleet.b)]
    conf = fleet.b.file("/etc/nginx/conf.d/00-log-format.conf")
    good = conf.read_text()
    conf.write_text(good + "\nthis_is_no_directive;\n")   # `nginx -t` fails there; nginx serves on
    try:
        _, result = fleet.deploy()
    finally:
        conf.write_text(good)
    assert result.returncode == 1, result.stderr
    error = error_line(result)
    assert f"failed on nginx host root@{fleet.b.address}:22" in error and "nginx rejected the new live include" in error
    assert "no nginx host was switched" in error
    assert fleet.serving() == [before] * 2
    assert [host.include.read_text() for host in (fleet.a, fleet.b)] == includes


def test_a_reload_failing_on_one_host_switches_every_host_back(reload_fleet):
    fleet = reload_fleet
    before = live(fleet)
    includes = [host.include.read_text() for host in (fleet.a, fleet.b)]
    # Host b's `nginx -s reload` fails (exit 1) while its `nginx -t` passes: the binary, inside b's
    # mount namespace only, is a wrapper refusing -s.
    real = fleet.b.dir / "nginx.real"
    shutil.copy2(shutil.which("nginx") or "/usr/sbin/nginx", real)
    wrapper = fleet.b.dir / "nginx-wrapper"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = "-s" ]; then echo "nginx: [alert] the test refuses reloads" >&2; '
                       f'exit 1; fi\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    fleet.b.run("mount", "--bind", str(wrapper), "/usr/sbin/nginx")
    try:
        _, result = fleet.deploy()
    finally:
        fleet.b.run("umount", "/usr/sbin/nginx")
    assert result.returncode == 1, result.stderr
    error = error_line(result)
    assert f"failed on nginx host root@{fleet.b.address}:22: nginx reload failed" in error, error
    assert f"switched root@{fleet.a.address}:22 back" in error, error
    assert fleet.serving() == [before] * 2
    assert [host.include.read_text() for host in (fleet.a, fleet.b)] == includes
    # Host a was reloaded onto the new include and back: what it loaded last is the old one again.
    assert fleet.a.file("/etc/nginx/conf.d/service-url.inc.loaded").read_text() == includes[0]


def test_verification_switch_back_moves_both_hosts(fleet, tmp_path):
    before = live(fleet)
    bad = tmp_path / "bad.env"
    bad.write_text("FAIL_RATE=0.3\n")
    loads = loaded(fleet)
    time.sleep(1)
    _, result = fleet.deploy(VERIFY_SECONDS="4", CONTAINER_ENV_FILE=str(bad))
    time.sleep(0.5)
    stopped(loads)
    assert result.returncode == 1, result.stderr
    error = error_line(result)
    assert "switched back to" in error and "answered 5xx to" in error, error
    assert fleet.serving() == [before] * 2
    switched = re.findall(r"2 nginx hosts switched the live route", result.stderr)
    assert len(switched) == 2, result.stderr   # the switch, and the switch back, each on both hosts


def test_hosts_that_serve_different_colors_stop_a_deploy_with_exit_3_naming_each(reload_fleet):
    fleet = reload_fleet
    before = live(fleet)
    include, loaded = fleet.b.include, fleet.b.file("/etc/nginx/conf.d/service-url.inc.loaded")
    text = include.read_text()
    live_ip = fleet.env["BLUE_IP"] if "color=blue" in before else fleet.env["GREEN_IP"]
    other_ip = fleet.env["GREEN_IP"] if live_ip == fleet.env["BLUE_IP"] else fleet.env["BLUE_IP"]
    # Host b set by hand to the other color (as a put-back that failed would leave it).
    for path in (include, loaded):
        path.write_text(text.replace(live_ip, other_ip))
    try:
        version, result = fleet.deploy()
    finally:
        for path in (include, loaded):
            path.write_text(text)
    assert result.returncode == 3, result.stderr
    error = error_line(result)
    assert (f"the nginx hosts disagree on the live route: root@{fleet.a.address}:22 serves {live_ip}:8080; "
            f"root@{fleet.b.address}:22 serves {other_ip}:8080") in error, error
    assert fleet.serving() == [before] * 2 and fleet.containers_of(version) == []


def test_maintenance_mode_goes_on_and_off_on_both_hosts(fleet):
    before = live(fleet)
    on = run_pipeline(["maintenance", "on", "--message", "back soon"], fleet.env, fleet.workdir)
    try:
        assert on.returncode == 0, on.stderr
        answers = [host.get("/") for host in (fleet.a, fleet.b)]
        assert [a.status_code for a in answers] == [503, 503] and all("back soon" in a.text for a in answers)
    finally:
        off = run_pipeline(["maintenance", "off"], fleet.env, fleet.workdir)
    assert off.returncode == 0, off.stderr
    assert fleet.serving() == [before] * 2
