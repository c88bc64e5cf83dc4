"""The commands on a real 3-node swarm (issue 11): TARGET=swarm deploys, switches the host's nginx
to every task, rolls back and refuses what the swarm cannot run, through the real CLI.

nginx runs on this host in the upstream form (or, for SWITCH_MODE=live, nginx/live/app-live.conf,
its routes listing every task); every task is reached at its node's address on the bridge pswarm0
(network namespaces swarm.sh created, no default route there).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List

import pytest
import requests

from pipeline.flows import verify
from pipeline.compose import make_target

from teststack.loadgen import Load
from teststack.realstack import Nginx, run_pipeline, start_pipeline, wait_for
from teststack.swarmstack import NODES, swarm_env, swarm_settings, swarm_sh, switch_env
from teststack.swarmstack import swarm_nginx as start_swarm_nginx   # swarm_nginx: conftest's fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def env(swarm, app, swarm_nginx, demo_jar) -> Dict[str, str]:
    return swarm_env(swarm, app, REPLICAS="3", HEALTH_INTERVAL="0.5", HEALTH_TIMEOUT="120",
                     DRAIN_SECONDS="1", NGINX_HOST="", NGINX_INCLUDE=str(swarm_nginx.include),
                     **switch_env(swarm_nginx, "reload"))


def run(args: List[str], env: Dict[str, str], cwd: Path, **overrides: str):
    return run_pipeline(args, {**env, **overrides}, cwd)


def assert_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"


def servers(nginx: Nginx) -> List[str]:
    return re.findall(r"server (\S+);", nginx.include.read_text())


def upstreams(nginx: Nginx, port: int) -> set:
    """The distinct task addresses nginx's access log shows answering on the color's port."""
    return set(re.findall(rf"upstream=(10\.99\.0\.\d+:{port})\b", nginx.access_log.read_text()))


def deploy_v2_under_load(env: Dict[str, str], nginx: Nginx, nodes: List[str], cwd: Path, mode: str):
    """With v1 live on blue's 3 tasks: deploy v2 under `Connection: close` load, verified for 4 s
    over every task (issue 10 on the swarm); 0 failed requests, and green's 3 distinct tasks
    answered. Returns the deploy's result."""
    url = f"http://127.0.0.1:{nginx.port}/"
    with Load(url, profile="close", seconds=240, connections=8) as load:
        wait_for(lambda: upstreams(nginx, 8081) == {f"{a}:8081" for a in nodes}, 20, interval=0.2,
                 what="the load to reach every blue task")
        second = run(["deploy"], env, cwd, APP_VERSION="v2", VERIFY_SECONDS="4",
                     NGINX_ACCESS_LOG=str(nginx.access_log))
        assert_ok(second)
        assert "verified for 4s: 0 5xx of" in second.stderr
        assert second.stderr.index("verified for 4s") < second.stderr.index("draining ")   # blue up till then
        wait_for(lambda: len(upstreams(nginx, 8082)) == NODES, 20, interval=0.2,
                 what="the load to reach every green task")
    result = load.result
    assert result is not None
    print(f"\n{mode}, deploy v1 -> v2 on 3 tasks: {result.line()}")
    assert result.failed == 0, result.summary()
    assert set(result.versions()) == {"version=v1 color=blue", "version=v2 color=green"}, result.summary()
    assert upstreams(nginx, 8082) == {f"{a}:8082" for a in nodes}   # 3 distinct tasks answered
    return second


def test_deploy_twice_under_load_loses_nothing_spreads_over_3_tasks_and_rolls_back(swarm, env, swarm_nginx, tmp_path):
    nodes = sorted(swarm["SWARM_NODES"].split())
    first = run(["deploy"], env, tmp_path, APP_VERSION="v1")
    assert_ok(first)
    assert sorted(servers(swarm_nginx)) == [f"{addr}:8081" for addr in nodes]   # every task, one per node
    assert "waiting for 3 task(s)" in first.stderr
    assert swarm_nginx.get().text == "version=v1 color=blue\n"

    deploy_v2_under_load(env, swarm_nginx, nodes, tmp_path, "reload")
    assert sorted(servers(swarm_nginx)) == [f"{addr}:8082" for addr in nodes]

    status = run(["status", "--json"], env, tmp_path)
    assert_ok(status)
    report = json.loads(status.stdout)
    assert (report["live_color"], report["live_version"]) == ("green", "v2")
    green, blue = report["colors"]["green"], report["colors"]["blue"]
    assert (green["state"], green["port"], green["health"]) == ("running", 8082, "3 of 3 task(s) answer 200")
    running = [t for t in green["tasks"] if t["state"] == "running"]
    assert sorted(t["address"] for t in running) == [f"{addr}:8082" for addr in nodes]
    assert {t["version"] for t in running} == {"v2"} and len({t["node"] for t in running}) == NODES
    assert all(t["health"].startswith("HTTP 200") for t in running)
    assert blue["state"] == "stopped" and blue["version"] == "v1"   # scaled to 0, kept for rollback
    text = run(["status"], env, tmp_path)
    assert_ok(text)
    assert "live:     green (v2)" in text.stdout and text.stdout.count("      task ") >= NODES

    back = run(["rollback"], env, tmp_path)
    assert_ok(back)
    assert sorted(servers(swarm_nginx)) == [f"{addr}:8081" for addr in nodes]
    assert swarm_nginx.get().text == "version=v1 color=blue\n"
    engine = make_target(swarm_settings(swarm, env["APP_NAME"]), {})
    assert engine.container("green").status == "stopped"

    # Staged behind the preview (the color's first task), live untouched; then promoted.
    preview = {"NGINX_PREVIEW_INCLUDE": str(swarm_nginx.preview_include)}
    staged = run(["deploy", "--no-promote"], env, tmp_path, APP_VERSION="v3", **preview)
    assert_ok(staged)
    assert swarm_nginx.get().text == "version=v1 color=blue\n"
    assert swarm_nginx.get(preview=True).text == "version=v3 color=green\n"
    promoted = run(["promote"], env, tmp_path, KEEP_PREVIOUS_RUNNING="true", **preview)
    assert_ok(promoted)
    assert sorted(servers(swarm_nginx)) == [f"{addr}:8082" for addr in nodes]
    assert swarm_nginx.get().text == "version=v3 color=green\n"
    # KEEP_PREVIOUS_RUNNING on a swarm: the old color stays scaled up, out of traffic.
    assert "kept running out of traffic" in promoted.stderr
    assert engine.container("blue").status == "running" and len(engine.task_addresses("blue")) == NODES
    history = run(["history", "--json"], env, tmp_path)
    assert_ok(history)
    entries = json.loads(history.stdout)
    assert [(e["action"], e["version"], e["result"]) for e in entries] == [
        ("deploy", "v1", "ok"), ("deploy", "v2", "ok"), ("rollback", "v1", "ok"), ("stage", "v3", "ok"),
        ("promote", "v3", "ok")]
    assert "verified for 4s: 0 5xx of" in entries[1]["message"]
    assert entries[-1]["live"] and entries[0]["rollback_target"]


def test_a_release_that_never_gets_healthy_is_scaled_to_0_and_the_old_one_keeps_serving(swarm, env, swarm_nginx, tmp_path):
    assert_ok(run(["deploy"], env, tmp_path, APP_VERSION="v1", REPLICAS="2"))
    before = swarm_nginx.include.read_text()
    failed = run(["deploy"], env, tmp_path, APP_VERSION="v2", REPLICAS="2", HEALTH_PATH="/nope",
                 HEALTH_TIMEOUT="20")
    assert failed.returncode == 1, failed.stderr
    # Both tasks ran and were probed, each at its node's address: the message names them.
    assert re.search(r"every task of \S+-green at /nope did not answer 200 .*0 of 2 answer 200 \(2 running\); "
                     r"task \w+ on \S+ \(10\.99\.0\.\d+:8082\): HTTP 404", failed.stderr), failed.stderr
    assert "scaling to 0" in failed.stderr
    assert swarm_nginx.include.read_text() == before
    assert swarm_nginx.get().text == "version=v1 color=blue\n"
    engine = make_target(swarm_settings(swarm, env["APP_NAME"]), {})
    green = engine.container("green")
    assert green is not None and green.status == "stopped"   # kept, scaled to 0
    assert engine.task_addresses("green") == []


def test_a_node_lost_during_the_health_wait_is_waited_out_and_a_node_down_limits_the_next_deploy(
        swarm, env, swarm_nginx, tmp_path):
    engine = make_target(swarm_settings(swarm, env["APP_NAME"]), {})
    manager = next(n for n in engine.nodes() if n.manager)
    by_addr = {n.addr: n for n in engine.nodes()}
    (tmp_path / "app.env").write_text("STARTUP_DELAY_MS=12000\n")   # time to lose a node mid-gate
    slow = {**env, "APP_VERSION": "v1", "REPLICAS": "2", "CONTAINER_ENV_FILE": str(tmp_path / "app.env")}
    victim = None
    try:
        deploying = start_pipeline(["deploy"], slow, tmp_path)
        try:
            running = wait_for(lambda: [a for a in engine.task_addresses("blue")] if len(
                engine.task_addresses("blue")) == 2 else None, 60, interval=0.2, what="2 blue tasks running")
            victim = by_addr[next(a.node_addr for a in running if a.node_addr != manager.addr)]
            swarm_sh("stop-node", str(int(victim.addr.rsplit(".", 1)[1]) - 10))
            _, stderr = deploying.communicate(timeout=180)
        finally:
            if deploying.poll() is None:
                deploying.kill()
        assert deploying.returncode == 0, stderr
        # The gate waited for swarm to move the lost task, then switched to the 2 healthy ones.
        addrs = {s.split(":")[0] for s in servers(swarm_nginx)}
        assert len(addrs) == 2 and victim.addr not in addrs, swarm_nginx.include.read_text()
        assert swarm_nginx.get().text == "version=v1 color=blue\n"
        # A task had been placed on the lost node; the one that serves now runs elsewhere.
        assert victim.name in {task.node for task in engine.tasks("blue")}

        # With the node still down: more REPLICAS than nodes up is refused before anything changes.
        before = swarm_nginx.include.read_text()
        refused = run(["deploy"], env, tmp_path, APP_VERSION="v2")
        assert refused.returncode == 3, refused.stderr
        assert "REPLICAS=3 but only 2 swarm node(s) can run a task" in refused.stderr
        assert "building image" not in refused.stderr   # refused in preflight
        assert swarm_nginx.include.read_text() == before and "green" not in engine.containers()

        # REPLICAS no more than the nodes up: the tasks go to the nodes left.
        assert_ok(run(["deploy"], env, tmp_path, APP_VERSION="v2", REPLICAS="2"))
        addrs = {s.split(":")[0] for s in servers(swarm_nginx)}
        assert len(addrs) == 2 and victim.addr not in addrs
        assert swarm_nginx.get().text == "version=v2 color=green\n"
    finally:
        if victim is not None:
            swarm_sh("start")   # the stopped node comes back and rejoins
    wait_for(lambda: sum(n.ready for n in engine.nodes()) == NODES, 60, interval=0.5,
             what="the stopped node to be ready again")


# -- SWITCH_MODE=live: a route lists every task ------------------------------------------------------

def _live_admin(nginx: Nginx, route: str) -> str:
    answer = requests.get(f"{nginx.admin_url}/pipeline/{route}", timeout=5,
                          headers={"Authorization": f"Bearer {nginx.token}", "Connection": "close"})
    return answer.text


def test_live_mode_spreads_over_every_task_and_retries_past_a_stopped_node(swarm, app, demo_jar, tmp_path):
    # nginx/live/app-live.conf, its admin taking the swarm nodes' network only.
    nginx = start_swarm_nginx(tmp_path / "nginx", "live")
    victim = None
    try:
        engine = make_target(swarm_settings(swarm, app), {})
        env = swarm_env(swarm, app, REPLICAS="3", HEALTH_INTERVAL="0.5", HEALTH_TIMEOUT="120", DRAIN_SECONDS="1",
                        NGINX_HOST="", NGINX_INCLUDE=str(nginx.include), **switch_env(nginx, "live"))
        nodes = sorted(swarm["SWARM_NODES"].split())
        workers = nginx.worker_pids()
        assert_ok(run(["deploy"], env, tmp_path, APP_VERSION="v1"))
        assert _live_admin(nginx, "live") == ",".join(f"{a}:8081" for a in nodes) + "\n"
        assert sorted(servers(nginx)) == [f"{a}:8081" for a in nodes]   # the include, for restarts

        # Verified from nginx's per-address stats.
        second = deploy_v2_under_load(env, nginx, nodes, tmp_path, "live")
        url = f"http://127.0.0.1:{nginx.port}/"
        assert _live_admin(nginx, "live") == ",".join(f"{a}:8082" for a in nodes) + "\n"
        assert "(no reload)" in second.stderr and nginx.worker_pids() == workers

        # A node's dockerd stopped under load: its task is gone, its address still listed. The
        # balancer tries the next address, so no client sees a 502.
        manager = next(n for n in engine.nodes() if n.manager)
        victim = next(a for a in nodes if a != manager.addr)
        log_before = len(nginx.access_log.read_text())
        stats_before = verify.parse_stats(_live_admin(nginx, "stats"))
        with Load(url, profile="close", seconds=60, connections=4) as load:
            swarm_sh("stop-node", str(int(victim.rsplit(".", 1)[1]) - 10))
            after_stop = len(nginx.access_log.read_text())
            # Until the victim's address has been tried and passed over a few dozen times.
            wait_for(lambda: nginx.access_log.read_text()[after_stop:].count(f"upstream={victim}:8082, ") >= 20,
                     30, interval=0.2, what=f"requests retried past {victim}")
        result = load.result
        assert result is not None
        since = nginx.access_log.read_text()[log_before:]
        retried = since.count(f"upstream={victim}:8082, ")
        print(f"live, {victim}'s dockerd stopped under load: {result.line()}; {retried} requests went to the next "
              f"address after {victim}:8082 failed")
        assert result.failed == 0, result.summary()
        assert result.statuses.get(200, 0) == result.requests > 0
        # What nginx answered each client (an attempt before the answer may have failed): 200, or
        # 499 for the few requests wrk gave up on when it was stopped; never a 5xx.
        assert "200" in set(re.findall(r'" (\d{3}) \d+ "', since)) <= {"200", "499"}
        # The stats count each request once, for the task that answered: summed over green's
        # addresses, their 200s are the answers served (wrk may have missed a few at its end),
        # none for an attempt that failed.
        stats = verify.parse_stats(_live_admin(nginx, "stats"))
        grew = {a: stats.get(a, {}).get(200, 0) - stats_before.get(a, {}).get(200, 0) for a in (f"{n}:8082" for n in nodes)}
        assert result.requests <= sum(grew.values()) <= result.requests + 8, (grew, result.requests)
        assert all(set(stats[a]) <= {200, 499} for a in grew if a in stats), stats
    finally:
        nginx.stop()
        if victim is not None:
            swarm_sh("start")   # the stopped node comes back and rejoins
    if victim is not None:
        wait_for(lambda: sum(n.ready for n in engine.nodes()) == NODES, 60, interval=0.5,
                 what="the stopped node to be ready again")
