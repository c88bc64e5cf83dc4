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
from teststack.realstack import remove_app, reserve_network, run_pipeline, start_pipeline, wait_for
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
    env = hosts.demo_env(app, stack)
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


# b's reload command: it says it started (a marker), then waits for the test (bounded: 60 s, then
# it fails without reloading), then reloads nginx. Its output goes to a log of its own, as a
# service manager's reload does: written to the dead session, `nginx -s reload`'s notice could
# kill it with SIGPIPE before it signals nginx (the other outcome, which the tool cannot tell apart
# either). a's reload command is the default one.
PAUSING_RELOAD = """#!/bin/sh
exec >>/etc/nginx/reload.log 2>&1
touch /etc/nginx/reload.started
i=0
while [ ! -e /etc/nginx/reload.go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
[ -e /etc/nginx/reload.go ] || exit 1
exec nginx -s reload
"""


def test_a_host_whose_sshd_dies_during_the_commit_leaves_the_new_release_running_and_the_next_deploy_exit_3(
        reload_fleet):
    """The realistic case: b's sshd is killed (its sessions too) while b's reload command runs;
    the command, no child of a session that could take it along (no terminal), goes on and nginx
    on b reloads onto the new include. The tool cannot know that: b's put-back fails (its sshd is
    gone), a is switched back, the new release is left running (the "could not be undone" case)."""
    fleet = reload_fleet
    a, b = fleet.a, fleet.b
    before = live(fleet)
    old_color = before.split("color=")[1]
    new_color = "green" if old_color == "blue" else "blue"
    ip = {"blue": fleet.env["BLUE_IP"], "green": fleet.env["GREEN_IP"]}
    for host, text in ((a, "#!/bin/sh\nexec nginx -s reload\n"), (b, PAUSING_RELOAD)):
        script = host.file("/etc/nginx/test-reload")
        script.write_text(text)
        script.chmod(0o755)
    started, go = b.file("/etc/nginx/reload.started"), b.file("/etc/nginx/reload.go")
    version = f"v{next(_VERSIONS)}"
    run = start_pipeline(["deploy"], {**fleet.env, "APP_VERSION": version,
                                      "NGINX_RELOAD_COMMAND": "/etc/nginx/test-reload"}, fleet.workdir)
    try:
        wait_for(started.exists, 120, interval=0.05, what="b's reload command to start")
        b.kill_sshd()
        go.touch()   # b's reload goes on, its session gone
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
        go.touch()
    assert run.returncode == 1, stderr
    error = [line for line in stderr.splitlines() if line.startswith("pipeline: error:")][0]
    assert f"switching the live route to {ip[new_color]}:8080 failed on nginx host root@{b.address}:22" in error, error
    assert (f"the hosts could not all be put back: root@{a.address}:22 serves {ip[old_color]}:8080, "
            f"root@{b.address}:22 may serve {ip[new_color]}:8080 or {ip[old_color]}:8080") in error, error
    assert "the new release is left running" in error, error
    assert f"point root@{b.address}:22 at what the others serve" in error, error
    # a was switched back; b went on to the new release; both releases run (nginx may serve either).
    assert a.get("/").text.strip() == before
    wait_for(lambda: b.get("/").text.strip() == f"version={version} color={new_color}", 30,
             what="b serving the new release")
    running = lambda v: [c.status for c in fleet.containers_of(v)] == ["running"]   # noqa: E731
    old_version = before.split()[0].split("=")[1]
    assert running(old_version) and running(version)

    # b unreachable: the next deploy is exit 3 naming it, and changes nothing.
    refused, result = fleet.deploy()
    assert result.returncode == 3 and b.address in error_line(result), result.stderr
    assert fleet.containers_of(refused) == [] and running(old_version) and running(version)
    assert a.get("/").text.strip() == before

    # b back: the hosts disagree (exit 3, naming what each serves) until b is pointed at a's color,
    # as the message says; then a deploy moves both.
    b.start_sshd()
    refused, result = fleet.deploy()
    assert result.returncode == 3, result.stderr
    assert (f"the nginx hosts disagree on the live route: root@{a.address}:22 serves {ip[old_color]}:8080; "
            f"root@{b.address}:22 serves {ip[new_color]}:8080") in error_line(result), result.stderr
    assert "taking over a stale lock" in result.stderr   # the lost run's lock on b
    assert fleet.containers_of(refused) == [] and running(old_version) and running(version)
    include = "/etc/nginx/conf.d/service-url.inc"
    for path in (include, include + ".loaded"):
        b.file(path).write_text(a.file(path).read_text())
    b.run("nginx", "-s", "reload")
    wait_for(lambda: b.get("/").text.strip() == before, 10, what="b serving what a serves")
    latest, result = fleet.deploy()
    ok(result)
    assert fleet.serving() == [f"version={latest} color={new_color}"] * 2
    assert fleet.containers_of(version) == [] and running(latest)
    assert [p for host in (a, b) for p in host.file("/etc/nginx/conf.d").glob("*.deploy.lock*")] == []
