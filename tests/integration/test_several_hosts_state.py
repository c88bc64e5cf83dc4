"""Several nginx hosts (issue 17), what they keep, on real hosts: each an nginx + sshd in a network
namespace (no default route) and a mount namespace of its own (teststack/nginxhost.py), on a bridge
of the test's own, in front of the single engine, which publishes each color on this machine's
address on that bridge (PUBLISH_ADDRESS): the hosts reach nothing else.

One deploy lock over every host (two runs racing across three hosts: exactly one proceeds, the
other exits 4, no lock left anywhere); the history and the release record on every host, a copy
left behind reconciled with a warning naming its host; `status` per host, loud when they disagree;
a host whose sshd is killed before a deploy (exit 3 naming it, nothing changed) and after the
switch (exit 1 naming it, the other host serves the new release, the next deploy exit 3)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from pipeline.core.decide import render_include
from pipeline.core.route import Address
from pipeline.core.releases import ReleaseRecord
from teststack.nginxhost import Bridge, NginxHost
from teststack.realstack import demo_settings, free_port, run_pipeline, start_pipeline, wait_for

from .test_lock_race import StartingGate

pytestmark = pytest.mark.integration

INCLUDE = "/etc/nginx/conf.d/service-url.inc"


class Fleet:
    """Nginx hosts on one bridge, reached with one key and one known_hosts (as NGINX_HOSTS wants)."""

    def __init__(self, bridge: Bridge, count: int, tmp_path: Path, form: str = "set") -> None:
        self.bridge = bridge
        self.hosts: List[NginxHost] = []
        try:
            for _ in range(count):   # live: the admin takes only the published address's network
                self.hosts.append(NginxHost.start(bridge.name, bridge.network, form=form,
                                                  allowed_networks=[bridge.network]))
        except BaseException:
            self.stop()
            raise
        first = self.hosts[0]
        for host in self.hosts[1:]:   # the first host's key logs in everywhere
            (host.dir / "authorized_keys").write_text((first.dir / "id_ed25519.pub").read_text())
        self.known_hosts = tmp_path / "known_hosts"
        self.known_hosts.write_text("".join(host.known_hosts.read_text() for host in self.hosts))
        self.ports = {"blue": free_port(), "green": free_port()}

    def env(self, order: List[int] = None) -> Dict[str, str]:
        hosts = [self.hosts[i] for i in (order or range(len(self.hosts)))]
        return {"NGINX_HOSTS": ",".join(h.address for h in hosts), "NGINX_SSH_USER": "root",
                "NGINX_SSH_KEY": str(self.hosts[0].key), "NGINX_SSH_KNOWN_HOSTS": str(self.known_hosts),
                "PUBLISH_ADDRESS": self.bridge.host_address or "", "BLUE_PORT": str(self.ports["blue"]),
                "GREEN_PORT": str(self.ports["green"])}

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()


def description(host: NginxHost) -> str:
    return f"root@{host.address}:22"


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    made = Bridge()
    yield made
    made.stop()


@pytest.fixture
def fleet(request, bridge, world, tmp_path) -> Iterator[Fleet]:
    """Two nginx hosts in reload mode ("set" form); parametrized: (count, form)."""
    count, form = getattr(request, "param", (2, "set"))
    made = Fleet(bridge, count, tmp_path, form)
    yield made
    made.stop()   # before `world` removes the containers and the network


@pytest.fixture
def env(world, fleet, stack) -> Dict[str, str]:
    return {
        **demo_settings(world.app, world.network, stack), "HEALTH_INTERVAL": "0.5", "HEALTH_TIMEOUT": "30",
        "DRAIN_SECONDS": "0.5", "VERIFY_SECONDS": "0", "STOP_TIMEOUT": "5", **fleet.env(),
    }


def deploy(env: Dict[str, str], version: str, tmp_path: Path, **more: str):
    return run_pipeline(["deploy"], {**env, "APP_VERSION": version, **more}, tmp_path)


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("pipeline: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def history(host: NginxHost, app: str) -> List[dict]:
    path = host.file(f"/etc/nginx/conf.d/{app}.history.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record(host: NginxHost, app: str) -> ReleaseRecord:
    return ReleaseRecord.from_json(host.file(f"/etc/nginx/conf.d/{app}.releases.json").read_text())


def lock_files(fleet: Fleet, app: str) -> List[Path]:
    return [p for host in fleet.hosts for p in host.file("/etc/nginx/conf.d").glob(f"*{app}.deploy.lock*")]


def served_version(host: NginxHost) -> str:
    return host.get("/").text.split()[0]


@pytest.mark.parametrize("fleet", [(3, "set")], indirect=True)
def test_two_runs_racing_for_the_lock_across_three_hosts_one_proceeds_the_other_exits_4(world, fleet, env,
                                                                                        tmp_path):
    # The two list the hosts in opposite orders: taken in that order, each could hold a lock the
    # other needs and both would fail. The winner's release starts slowly, so it holds every lock
    # while the other looks; a gate on the docker socket starts both at the lock together.
    slow = tmp_path / "slow.env"
    slow.write_text("STARTUP_DELAY_MS=3000\n")
    gate = StartingGate(tmp_path, 2)
    try:
        runs = [start_pipeline(["deploy"], {**env, **fleet.env(order), "APP_VERSION": version, "BUILD_TAG": f"run-{version}",
                                            "CONTAINER_ENV_FILE": str(slow), "DOCKER_HOST": gate.docker_host}, tmp_path)
                for version, order in (("v1", [0, 1, 2]), ("v2", [2, 1, 0]))]
        results = [(run.wait(300), run.communicate()[1]) for run in runs]
    finally:
        gate.close()
    codes = [code for code, _ in results]
    assert sorted(codes) == [0, 4], "\n\n".join(err for _, err in results)
    winner, loser = ("v1", "v2") if codes[0] == 0 else ("v2", "v1")
    loser_err = results[codes.index(4)][1]
    first = min(fleet.hosts, key=description)   # every run starts at the same host
    lines = [line for line in loser_err.splitlines() if line.startswith("pipeline: error:")]
    assert lines == [lines[0]] and f"nginx host {description(first)}: deploy lock" in lines[0], loser_err
    assert f"is held: run-{winner} on" in lines[0]
    assert lock_files(fleet, world.app) == [], "no lock (nor takeover guard) left on any host"
    for host in fleet.hosts:   # the winner's run is on record everywhere; the loser changed nothing
        assert [(e["version"], e["result"]) for e in history(host, world.app)] == [(winner, "ok")]


def test_history_and_record_on_every_host_a_copy_left_behind_reconciled_status_per_host(world, fleet, env,
                                                                                       tmp_path):
    a, b = fleet.hosts
    keep = {"KEEP_PREVIOUS_RUNNING": "true"}
    ok(deploy(env, "v1", tmp_path, **keep))
    behind = b.file(f"/etc/nginx/conf.d/{world.app}.releases.json").read_text()
    ok(deploy(env, "v2", tmp_path, **keep))
    for host in (a, b):
        assert [(e["version"], e["result"]) for e in history(host, world.app)] == [("v1", "ok"), ("v2", "ok")]
        assert (record(host, world.app).live.version, record(host, world.app).previous.version) == ("v2", "v1")
    assert served_version(a) == "version=v2"

    # b's copy of the record left behind (a write it missed): the next run says so, naming b,
    # takes a's (it agrees with what nginx serves and the labels), and writes it on b again.
    b.file(f"/etc/nginx/conf.d/{world.app}.releases.json").write_text(behind)
    result = ok(deploy(env, "v3", tmp_path, **keep))
    assert f"the copy on {description(b)} is out of date: taking {description(a)}'s" in result.stderr
    assert (record(b, world.app).live.version, record(b, world.app).previous.version) == ("v3", "v2")
    assert record(a, world.app) == record(b, world.app)

    # b made to serve the other color (v2, kept running on green) by hand: status says what each serves.
    assert world.state("green") == "running", "KEEP_PREVIOUS_RUNNING kept v2 running on green"
    include = render_include((Address(fleet.bridge.host_address, fleet.ports["green"]),), "set")
    b.file(INCLUDE).write_text(include)
    b.file(INCLUDE + ".loaded").write_text(include)
    b.run("nginx", "-s", "reload")
    wait_for(lambda: served_version(b) == "version=v2", 10, what="b serving v2")
    result = ok(run_pipeline(["status", "--json"], env, tmp_path))
    report = json.loads(result.stdout)
    assert [(r["host"], r["color"], r["version"]) for r in report["nginx_hosts"]] == \
        [(description(a), "blue", "v3"), (description(b), "green", "v2")]
    assert report["hosts_disagree"] is True
    text = ok(run_pipeline(["status"], env, tmp_path)).stdout
    assert f"WARNING:  THE NGINX HOSTS DISAGREE on what they serve ({description(a)}: blue, " \
           f"{description(b)}: green)" in text, text


def test_a_host_whose_sshd_is_dead_before_a_deploy_is_exit_3_naming_it_and_nothing_changes(world, fleet, env,
                                                                                          tmp_path):
    a, b = fleet.hosts
    ok(deploy(env, "v1", tmp_path))
    before = {p: a.file(p).read_text() for p in (INCLUDE, f"/etc/nginx/conf.d/{world.app}.history.jsonl",
                                                 f"/etc/nginx/conf.d/{world.app}.releases.json")}
    b.kill_sshd()
    result = deploy(env, "v2", tmp_path)
    assert result.returncode == 3, result.stderr
    assert b.address in error_line(result)
    assert {p: a.file(p).read_text() for p in before} == before
    assert [c.labels["pipeline.version"] for c in world.running_containers()] == ["v1"]
    assert lock_files(fleet, world.app) == []
    b.start_sshd()
    ok(deploy(env, "v2", tmp_path))


def test_a_host_lost_after_the_switch_is_exit_1_naming_it_and_the_next_deploy_exit_3(world, fleet, env, tmp_path):
    a, b = fleet.hosts
    ok(deploy(env, "v1", tmp_path))
    run = start_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "DRAIN_SECONDS": "3"}, tmp_path)
    try:
        # The switch is done (a serves v2, b's record says so too): b's sshd dies, sessions and all.
        wait_for(lambda: served_version(a) == "version=v2" and '"v2"' in
                 b.file(f"/etc/nginx/conf.d/{world.app}.releases.json").read_text(), 60, what="the switch")
        b.kill_sshd()
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, stderr
    line = [line for line in stderr.splitlines() if line.startswith("pipeline: error:")][0]
    assert line.startswith(f"pipeline: error: v2 live on green on the other nginx hosts, but the nginx host "
                           f"{description(b)} could not be reached at the end of the run"), stderr
    assert served_version(a) == "version=v2"
    assert [(e["version"], e["result"]) for e in history(a, world.app)][-1] == ("v2", "ok")

    result = deploy(env, "v3", tmp_path)
    assert result.returncode == 3 and b.address in error_line(result), result.stderr
    assert served_version(a) == "version=v2"
    b.start_sshd()
    result = ok(deploy(env, "v3", tmp_path))
    assert "taking over a stale lock" in result.stderr   # the lost run's lock on b
    assert served_version(a) == "version=v3"
    # That run ended (its history line is on a): it is not recorded as killed.
    # (The refused v3 never got past connecting: no history line.)
    assert [(e["version"], e["result"]) for e in history(a, world.app)] == [("v1", "ok"), ("v2", "ok"), ("v3", "ok")]
    assert history(b, world.app) == history(a, world.app)   # b's copy, which missed v2's line, mended


@pytest.mark.parametrize("fleet", [(2, "live")], indirect=True)
def test_live_mode_through_published_ports_keeps_history_and_record_on_both_hosts(world, fleet, env, tmp_path):
    a, b = fleet.hosts
    live = {**env, "SWITCH_MODE": "live", "NGINX_TEST_COMMAND": "false", "NGINX_RELOAD_COMMAND": "false"}
    ok(deploy(live, "v1", tmp_path))
    ok(deploy(live, "v2", tmp_path))
    assert served_version(a) == "version=v2"   # no reload: the admin was told the published address
    for host in (a, b):
        assert [(e["version"], e["result"]) for e in history(host, world.app)] == [("v1", "ok"), ("v2", "ok")]
        assert record(host, world.app).live.version == "v2"
    report = json.loads(ok(run_pipeline(["status", "--json"], live, tmp_path)).stdout)
    assert report["nginx_hosts"][0]["points_at"] == f"{fleet.bridge.host_address}:{fleet.ports['green']}"
