"""Verification on a swarm (TARGET=swarm): nginx's answers summed over every task of the new
color, health probed on every task, the tasks watched as the container is on one engine, and the
switch back to every task of the old color, which is then the only one scaled up.

The window runs against strict fakes at our own seams (tests/unit/fakes.py's Strict): the swarm
engine's task facts, the switch, the prober (which sends nothing, and says where it was asked to
go) and the answer reader. The real swarm case is tests/integration/test_swarm_verify.py.
"""
from __future__ import annotations

import collections
from dataclasses import replace
from typing import List, Tuple

import pytest

from pipeline.flows import verify
from pipeline.core.decide import Address
from pipeline.flows.deploy import Context
from pipeline.core.errors import EngineFailed, LiveUnverified
from pipeline.adapters.nginx_host import LocalHost
from pipeline.core.settings import Settings
from pipeline.signals import SignalGuard
from pipeline.adapters.swarm import TaskFact, TaskWatch, serving_problem
from pipeline.core.switch import LIVE

from .fakes import FakeAdmin, FakeAnswers, FakeClock, FakeProber, FakeSwarm, FakeSwitch
from .test_verify import LINE, pipeline_log  # noqa: F401 (a fixture)

NODES = [("n1", "pswarm-n1", "10.99.0.11"), ("n2", "pswarm-n2", "10.99.0.12"), ("n3", "pswarm-n3", "10.99.0.13")]
PORTS = {"blue": 8081, "green": 8082}


def task(color: str, i: int, state: str = "running", desired: str = "running", node_up: bool = True,
         exit_code=None, message: str = "started") -> TaskFact:
    node_id, name, addr = NODES[i]
    return TaskFact(task_id=f"{color}-task-{i}", color=color, slot=i + 1, node_id=node_id, node=name, node_addr=addr,
                    port=PORTS[color], state=state, desired_state=desired, version="v", image="r:5001/app:v",
                    message=message, exit_code=exit_code, node_up=node_up)


def addresses(color: str) -> Tuple[Address, ...]:
    return tuple(Address(addr, PORTS[color]) for _, _, addr in NODES)


# -- pure: the tasks nginx was switched to, still serving? ------------------------------------------

WATCHED = frozenset(f"green-task-{i}" for i in range(3))


@pytest.mark.parametrize("tasks, problem", [
    ([task("green", i) for i in range(3)], None),
    # A watched task failed; swarm has already started its replacement (desired "ready").
    ([task("green", 0, "failed", "shutdown", exit_code=1, message="task: non-zero exit (1)"),
      task("green", 1), task("green", 2), replace(task("green", 0, "assigned", "ready"), task_id="green-new")],
     "task green-task-0 on pswarm-n1 (10.99.0.11:8082) stopped serving (failed, exit code 1: task: non-zero exit (1))"),
    # Its node went down: the manager still says "running".
    ([task("green", 0), task("green", 1, node_up=False), task("green", 2)],
     "task green-task-1 on pswarm-n2 (10.99.0.12:8082) stopped serving (node pswarm-n2 is not ready (task running))"),
    # Moved off its node by swarm (rescheduled).
    ([task("green", 0), task("green", 1), task("green", 2, "shutdown", "shutdown")],
     "task green-task-2 on pswarm-n3 (10.99.0.13:8082) stopped serving (moved off node pswarm-n3 (shutdown, "
     "desired shutdown))"),
    ([task("green", 0), task("green", 1)], "task green-task-2 is gone from the service"),
    # A task swarm started after the switch, the watched ones still fine: a restart or reschedule.
    ([task("green", i) for i in range(3)] + [replace(task("green", 0, "starting"), task_id="green-new")],
     "swarm started task green-new on pswarm-n1 (10.99.0.11:8082) (starting) after the switch: a task was "
     "restarted or rescheduled"),
    # Old tasks of the service (shut down before the switch) are not watched and do not count.
    ([task("green", i) for i in range(3)] + [replace(task("green", 0, "shutdown", "shutdown"), task_id="old")], None),
])
def test_serving_problem(tasks, problem):
    assert serving_problem(tasks, WATCHED, 3) == problem


def test_fewer_than_replicas_watched_is_a_problem():
    assert serving_problem([task("green", 0), task("green", 1)], WATCHED - {"green-task-2"}, 3) == \
        "only 2 of REPLICAS=3 task(s) running"


# -- readers: every task's answers, summed ------------------------------------------------------------

def test_the_access_log_reader_sums_every_task_of_the_new_color(tmp_path):
    path = tmp_path / "app.access.log"
    path.write_text("")
    reader = verify.AccessLogReader(LocalHost(), str(path), addresses("green"))
    lines = [("10.99.0.11:8082", 200), ("10.99.0.12:8082", 500), ("10.99.0.13:8082", 200),
             ("10.99.0.13:8082", 502), ("10.99.0.11:8081", 500),        # blue's task: not counted
             ("10.99.0.12:8081, 10.99.0.11:8082", 200)]                 # a retry that green answered
    path.write_text("".join(LINE.format(upstream=u, status=s) + "\n" for u, s in lines))
    assert reader.read().statuses == {200: 3, 500: 1, 502: 1}


def test_the_stats_reader_sums_every_task_of_the_new_color_from_its_baseline():
    admin = FakeAdmin(stats=["10.99.0.11:8082 200 5\n10.99.0.11:8081 200 90\n",
                             "10.99.0.11:8082 200 9\n10.99.0.12:8082 200 3\n10.99.0.12:8082 500 2\n"
                             "10.99.0.13:8082 504 1\n10.99.0.11:8081 500 40\n"])
    reader = verify.StatsReader(admin, addresses("green"))
    assert reader.read().statuses == {200: 7, 500: 2, 504: 1}
    # One address, as on one engine: the same reader.
    assert verify.StatsReader(FakeAdmin(stats=["1.2.3.4:8080 200 1\n"]), (Address("1.2.3.4", 8080),)).before == {200: 1}


# -- the window on a swarm ----------------------------------------------------------------------------

def swarm(settings: Settings, calls: list) -> FakeSwarm:
    """The fake target as a swarm: three tasks per color, one per node."""
    engine = FakeSwarm(settings, 3, calls)
    engine.tasks_of.update({c: [task(c, i) for i in range(3)] for c in PORTS})
    return engine


def window(tmp_path, reader, answers=None, **env):
    settings = Settings.from_env({"TARGET": "swarm", "REGISTRY": "r:5001", "REPLICAS": "3",
                                  "VERIFY_SECONDS": "0.4", "HEALTH_INTERVAL": "0.05", "HEALTH_PATH": "/health", **env}, tmp_path)
    calls: list = []
    prober = FakeProber(answers=answers or {})
    engine = swarm(settings, calls)
    ctx = Context(settings, engine, LocalHost(), FakeSwitch.configured(settings, calls, str(settings.nginx_access_log)), tmp_path, {},
                  prober, 0.0, SignalGuard(), FakeClock())
    return ctx, calls, prober, baseline_of(engine, reader)


def baseline_of(engine, reader) -> verify.Baseline:
    """The baseline as verify.baseline takes it, watching WATCHED (the three green tasks)."""
    return verify.Baseline("green", "blue", reader,
                           TaskWatch(lambda: engine.tasks("green"), WATCHED, 3, "app-green"))


def health_urls(color: str) -> List[str]:
    return [f"http://{a}/health" for a in addresses(color)]


def test_a_good_release_is_probed_on_every_task_and_nothing_is_switched(tmp_path):
    ctx, calls, prober, mark = window(tmp_path, FakeAnswers({200: 5}, {200: 40}))
    verdict = verify.verify(ctx, mark)
    assert verdict.tally.statuses == {200: 40} and calls == []
    assert set(prober.asked) == set(health_urls("green"))            # every task, nothing else
    assert verdict.probes == len(prober.asked) and verdict.probes >= 6
    assert collections.Counter(prober.asked).most_common()[-1][1] >= 2


def test_too_many_5xx_over_the_tasks_switches_back_to_every_old_task_then_scales_the_new_to_0(tmp_path):
    ctx, calls, _, mark = window(tmp_path, FakeAnswers({200: 10}, {200: 70, 500: 30}))
    with pytest.raises(verify.SwitchedBack) as caught:
        verify.verify(ctx, mark)
    assert str(caught.value) == ("switched back to blue: green answered 5xx to 30.0% of 100 requests "
                                 "(limit 1.0%; commonest: 200 x70, 500 x30)")
    assert calls == [("route_to", LIVE, addresses("blue")),
                     ("discard", "green")]


def test_health_failing_twice_on_one_task_switches_back_naming_it(tmp_path):
    sick = health_urls("green")[1]
    ctx, calls, prober, mark = window(tmp_path, FakeAnswers({200: 3}), {sick: [200, 503]})
    with pytest.raises(verify.SwitchedBack) as caught:
        verify.verify(ctx, mark)
    assert ("green's health failed 2 times in a row on task green-task-1 on pswarm-n2 (10.99.0.12:8082) "
            "(last: HTTP 503 'DOWN')") in str(caught.value)
    assert [c[0] for c in calls] == ["route_to", "discard"]
    assert prober.asked.count(sick) == 3


def test_a_task_that_fails_is_switched_back_at_once_and_not_probed(tmp_path):
    ctx, calls, prober, mark = window(tmp_path, FakeAnswers({200: 3}))
    ctx.engine.tasks_of["green"][2] = task("green", 2, "failed", "shutdown", exit_code=137, message="task: non-zero exit (137)")
    with pytest.raises(verify.SwitchedBack, match=r"switched back to blue: app-green: task green-task-2 on "
                                                  r"pswarm-n3 \(10.99.0.13:8082\) stopped serving \(failed, exit code 137"):
        verify.verify(ctx, mark)
    assert prober.asked == [] and [c[0] for c in calls] == ["route_to", "discard"]


def test_a_down_node_is_not_probed_and_the_old_color_comes_back_on_the_tasks_still_up(tmp_path):
    ctx, calls, prober, mark = window(tmp_path, FakeAnswers({200: 3}))
    ctx.engine.tasks_of["green"][0] = task("green", 0, node_up=False)
    ctx.engine.tasks_of["blue"][0] = task("blue", 0, node_up=False)
    with pytest.raises(verify.SwitchedBack, match="node pswarm-n1 is not ready"):
        verify.verify(ctx, mark)
    assert prober.asked == []
    assert calls[0] == ("route_to", LIVE, addresses("blue")[1:])


def test_no_old_task_left_running_keeps_the_new_release_live_and_says_so(tmp_path):
    ctx, calls, _, mark = window(tmp_path, FakeAnswers({500: 30}))
    ctx.engine.tasks_of["blue"] = []
    with pytest.raises(LiveUnverified) as caught:
        verify.verify(ctx, mark)
    assert caught.value.exit_code == 6
    assert ("switching back to blue failed: app-blue has no running task. app-green still has the traffic, "
            "unverified; app-blue has no running task. To go back to blue, run `python -m pipeline rollback`") \
        in str(caught.value)
    assert calls == []   # nothing scaled down: nginx still points at green


MANAGER_GONE = EngineFailed("docker engine at tcp://10.99.0.11:2375", "listing the tasks of service app-green",
                            "no answer within 60s (NETWORK_TIMEOUT)")


def test_the_manager_not_answering_switches_back_to_where_the_old_tasks_answered_at_the_switch(tmp_path, pipeline_log):
    ctx, calls, _, mark = window(tmp_path, FakeAnswers({200: 3}))
    engine = FakeSwarm(ctx.settings, 3, calls)
    engine.gone = MANAGER_GONE   # the manager stops answering after the switch: every call fails
    ctx = replace(ctx, engine=engine)
    mark = replace(baseline_of(engine, mark.reader), old_addresses=addresses("blue"))   # as the baseline took them
    with pytest.raises(verify.SwitchedBack) as caught:
        verify.verify(ctx, mark)
    assert caught.value.exit_code == 1
    assert str(caught.value).startswith(f"switched back to blue: verification could not go on: {MANAGER_GONE}")
    assert calls == [("route_to", LIVE, addresses("blue")),
                     ("discard", "green")]
    assert "switching back to where blue answered at the switch" in pipeline_log.text
    assert "could not remove app-green" in pipeline_log.text


def test_the_baseline_keeps_where_the_old_tasks_answer(tmp_path):
    log = tmp_path / "app.access.log"
    log.write_text("")
    ctx, calls, _, _ = window(tmp_path, None, NGINX_ACCESS_LOG=str(log))
    ctx = replace(ctx, engine=swarm(ctx.settings, calls))
    assert verify.baseline(ctx, "green", "blue").old_addresses == tuple(addresses("blue"))


def test_a_route_check_refused_mid_window_switches_back(tmp_path):
    ctx, calls, _, mark = window(tmp_path, FakeAnswers({200: 3}))
    ctx = replace(ctx, prober=FakeProber(refuse="health probes run on this machine, which reaches it only "
                                                     "through a gateway"))
    with pytest.raises(verify.SwitchedBack, match="switched back to blue: verification could not go on: "
                                                  "not probing http://10.99.0.1"):
        verify.verify(ctx, mark)
    assert [c[0] for c in calls] == ["route_to", "discard"]


def test_the_baseline_watches_the_tasks_and_reads_every_address_of_the_new_color(tmp_path):
    log = tmp_path / "app.access.log"
    log.write_text("")
    ctx, calls, _, _ = window(tmp_path, None, NGINX_ACCESS_LOG=str(log))
    ctx = replace(ctx, engine=swarm(ctx.settings, calls))
    mark = verify.baseline(ctx, "green", "blue")
    assert (mark.color, mark.old, mark.watch.watched) == ("green", "blue", WATCHED)
    assert mark.reader.addresses == {"10.99.0.11:8082", "10.99.0.12:8082", "10.99.0.13:8082"}
