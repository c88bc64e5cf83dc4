"""A release that dies right after its health gate (issue 15): MIN_READY_SECONDS holds it out of
traffic until it has stayed ready, and the last look before the old color is stopped switches
back to the old color whatever the verification settings. The flows step by step against the
strict fakes (tests/unit/fakes.py: `!dies` exits the release right after its first 200,
`!sickens` makes it answer 503 from then on), and gate.stay_ready on a fake clock. The same on
the real stack under load: tests/integration/test_min_ready.py."""
from __future__ import annotations

import json
from typing import List, Optional

import pytest

from pipeline.flows import deploy as flows
from pipeline.core import gate
from pipeline.flows.deploy import Context
from pipeline.core.errors import DeployFailed, SettingsError, SwitchedBack
from pipeline.adapters.nginx_host import LocalHost
from pipeline.core.releases import Release as Rel
from pipeline.core.releases import ReleaseRecord
from pipeline.core.settings import Settings
from pipeline.signals import SignalGuard
from pipeline.core.switch import LIVE, PREVIEW

from .fakes import FakeClock, World, no_network  # noqa: F401  (autouse: no flow reaches the network)
from .fakes import FakeProber, FakeSwarm, FakeSwitch
from .test_verify_swarm import addresses, health_urls, task




def history(world: World) -> List[dict]:
    path = str(world.settings.history_path())
    return [json.loads(line) for line in world.host.files[path].splitlines()]


def record(world: World) -> ReleaseRecord:
    return ReleaseRecord.from_json(world.host.files[world.record_path])


def live(world: World, color: str):
    return (LIVE, world.engine.addresses(color))


# -- the flows ----------------------------------------------------------------------------------------

KEEP = {"keep_previous_running": True}

SEQUENCES = [
    # (name, settings, steps, exit codes, what serves at the end: (version, color))
    ("a release that dies after its gate: the last look switches back", {},
     ["deploy v1", "deploy v2 !dies"], [0, 1], ("v1", "blue")),
    ("a release whose health fails after its gate: the last look switches back", {},
     ["deploy v1", "deploy v2 !sickens"], [0, 1], ("v1", "blue")),
    ("a staged release that dies when promoted: switched back", {},
     ["deploy v1", "stage v2", "promote !dies"], [0, 0, 1], ("v1", "blue")),
    ("a brought-back release that dies: switched back, rollback still works", {},
     ["deploy v1", "deploy v2", "rollback !dies", "rollback"], [0, 0, 1, 0], ("v1", "blue")),
    ("KEEP_PREVIOUS_RUNNING: the last look too", KEEP,
     ["deploy v1", "deploy v2 !dies", "deploy v3"], [0, 1, 0], ("v3", "green")),
    ("MIN_READY_SECONDS: a release that dies is never switched to", {"min_ready_seconds": 5},
     ["deploy v1", "deploy v2 !dies", "deploy v3"], [0, 1, 0], ("v3", "green")),
    ("MIN_READY_SECONDS: a release whose health fails is never switched to", {"min_ready_seconds": 5},
     ["deploy v1", "deploy v2 !sickens"], [0, 1], ("v1", "blue")),
    ("MIN_READY_SECONDS: nothing is staged", {"min_ready_seconds": 5},
     ["deploy v1", "stage v2 !dies", "promote"], [0, 1, 5], ("v1", "blue")),
    ("MIN_READY_SECONDS: promote", {"min_ready_seconds": 5},
     ["deploy v1", "stage v2", "promote !dies"], [0, 0, 1], ("v1", "blue")),
    ("MIN_READY_SECONDS: rollback", {"min_ready_seconds": 5},
     ["deploy v1", "deploy v2", "rollback !dies", "rollback"], [0, 0, 1, 0], ("v1", "blue")),
    ("MIN_READY_SECONDS: good releases", {"min_ready_seconds": 5},
     ["deploy v1", "deploy v2", "rollback"], [0, 0, 0], ("v1", "blue")),
]


@pytest.mark.parametrize("settings,steps,codes,serving", [row[1:] for row in SEQUENCES],
                         ids=[row[0] for row in SEQUENCES])
def test_sequences(settings, steps, codes, serving):
    world = World(**settings)
    got = [world.step(step)[0] for step in steps]
    assert got == codes
    assert world.serving() == serving   # also: nginx points at a running container


def test_without_min_ready_the_last_look_switches_back_before_the_old_color_is_stopped():
    world = World()
    world.step("deploy v1")
    world.engine.mutations.clear()
    world.switch.moves.clear()
    code, message = world.step("deploy v2 !dies")
    assert code == 1
    assert message == ("switched back to blue: container app-green stopped (exited, restarted 0x), "
                       "in the last look before stopping app-blue")
    # Switched to green, back to blue; green removed; blue never stopped.
    assert world.switch.moves[:2] == [live(world, "green"), (PREVIEW, world.engine.addresses("green")[:1])]
    assert world.switch.moves[2:] == [live(world, "blue"), (PREVIEW, world.engine.addresses("blue")[:1])]
    assert world.engine.mutations == [("build_image", "app:v2"), ("run", "green", "v2"), ("stop", "green"),
                                      ("remove", "green")]
    assert world.engine.boxes["blue"]["status"] == "running"
    # The preview, which went with green, points back at what it served before (blue: v1's deploy).
    # The record as before the switch: v2 is live nowhere and no rollback target.
    assert (record(world).live.version, record(world).previous) == ("v1", None)
    last = history(world)[-1]
    assert (last["action"], last["version"], last["result"]) == ("deploy", "v2", "switched back")


def test_the_last_look_probes_twice_before_it_gives_up_on_a_running_release():
    world = World()
    world.step("deploy v1")
    code, message = world.step("deploy v2 !sickens")
    assert code == 1
    assert message.startswith("switched back to blue: its health failed 2 times in a row (last: HTTP 503 ")
    assert world.engine.boxes["blue"]["status"] == "running" and "green" not in world.engine.boxes


def test_the_last_look_of_a_good_release_changes_nothing():
    world = World()
    world.step("deploy v1")
    world.engine.mutations.clear()
    world.sleeps.clear()
    assert world.step("deploy v2") == (0, "")
    assert world.engine.mutations == [("build_image", "app:v2"), ("run", "green", "v2"), ("stop", "blue")]
    assert world.sleeps == [1.0]   # the drain only: the look answered at once


def test_promote_switched_back_puts_the_record_back_without_the_staged_release():
    world = World()
    world.step("deploy v1")
    world.step("stage v2")
    assert world.step("promote !dies")[0] == 1
    assert (record(world).live.version, record(world).staged) == ("v1", None)
    assert world.step("promote")[0] == 5


def test_rollback_switched_back_keeps_the_release_it_went_back_to_a_rollback_target():
    world = World()
    world.step("deploy v1")
    world.step("deploy v2")
    world.engine.mutations.clear()
    code, message = world.step("rollback !dies")
    assert code == 1 and message.startswith("switched back to green: container app-blue stopped")
    # The kept v1 was started and died: it is removed; v2 (green) was never stopped.
    assert world.engine.mutations == [("start", "blue"), ("stop", "blue"), ("remove", "blue")]
    assert (record(world).live.version, record(world).previous.version) == ("v2", "v1")


@pytest.mark.parametrize("after_gate,why", [
    ("dies", "container app-green stopped (exited, restarted 0x) 0.0s after it was healthy"),
    ("sickens", "its health failed 2 times in a row (last: HTTP 503 '{\"status\":\"DOWN\"}') 1.5s after it was healthy"),
])
def test_min_ready_fails_like_a_failed_gate_nothing_switched(after_gate, why):
    world = World(min_ready_seconds=5)
    world.step("deploy v1")
    world.engine.mutations.clear()
    world.switch.moves.clear()
    code, message = world.step(f"deploy v2 !{after_gate}")
    assert code == 1
    assert message == f"app-green did not stay ready for MIN_READY_SECONDS=5: {why}; nothing was switched"
    assert world.switch.moves == []
    assert world.engine.mutations == [("build_image", "app:v2"), ("run", "green", "v2"), ("remove", "green")]
    assert history(world)[-1]["result"] == "failed"


def test_min_ready_holds_the_switch_for_its_seconds_probing_at_most_a_second_apart(monkeypatch):
    world = World(min_ready_seconds=5)
    world.step("deploy v1")
    switched_at: List[float] = []
    route_to = world.switch.route_to
    monkeypatch.setattr(world.switch, "route_to", lambda route, address: (
        switched_at.append(world.now), route_to(route, address)))
    probes: List[float] = []
    answer = world.engine.answer
    monkeypatch.setattr(world.engine, "answer", lambda url: (probes.append(world.now), answer(url))[1])
    start = world.now
    assert world.step("deploy v2") == (0, "")
    assert switched_at[0] - start == 5.0
    # HEALTH_INTERVAL is 10 s here: probes at 1..5 s, then the last look after the drain (1 s).
    assert [t - start for t in probes] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_rollback_to_a_release_still_running_does_not_hold():
    world = World(min_ready_seconds=5, keep_previous_running=True)
    world.step("deploy v1")
    world.step("deploy v2")
    start = world.now
    assert world.step("rollback") == (0, "")
    assert world.now - start == 0.0
    world = World(min_ready_seconds=5)
    world.step("deploy v1")
    world.step("deploy v2")
    start = world.now
    assert world.step("rollback") == (0, "")
    assert world.now - start == 5.0 + 1.0   # the hold, then the drain


# -- gate.stay_ready on a fake clock ------------------------------------------------------------------

class Release:
    """A release after its gate on a fake clock: `dies_at` (s) it exits; `sick` lists the
    probes (by number, from 1) that fail."""

    def __init__(self, dies_at: Optional[float] = None, sick: tuple = ()) -> None:
        self.clock = FakeClock(0.0, spins=False)
        self.dies_at, self.sick = dies_at, sick
        self.probes: List[float] = []
        self.checks: List[float] = []

    @property
    def now(self) -> float:
        return self.clock.now()

    def problem(self) -> Optional[str]:
        self.checks.append(self.now)
        return "exited" if self.dies_at is not None and self.now >= self.dies_at else None

    def probe_all(self, timeout: float) -> None:
        assert self.checks and self.checks[-1] == self.now, "a probe only right after the check"
        self.probes.append(self.now)
        if len(self.probes) in self.sick:
            raise gate.NotHealthyYet("HTTP 503")

    def run(self, seconds: float, interval: float = 10.0) -> Optional[str]:
        return gate.stay_ready(seconds, interval, self.problem, self.probe_all, self.clock)


@pytest.mark.parametrize("seconds,interval,release,why,probes", [
    (3, 10, Release(), None, [1, 2, 3]),
    (3, 0.5, Release(), None, [0.5, 1, 1.5, 2, 2.5, 3]),
    (0, 10, Release(), None, [0]),                                      # the last look: one probe
    (0, 10, Release(sick=(1,)), None, [0, 0.5]),                        # retried once
    (0, 10, Release(sick=(1, 2)), "its health failed 2 times in a row (last: HTTP 503)", [0, 0.5]),
    (3, 10, Release(sick=(2,)), None, [1, 2, 2.5, 3]),                  # one blip is not a failure
    (3, 10, Release(sick=(3,)), None, [1, 2, 3, 3.5]),                  # the window ends on a probe that passed
    (3, 10, Release(sick=(2, 3)), "its health failed 2 times in a row (last: HTTP 503)", [1, 2, 2.5]),
    (30, 10, Release(dies_at=0.3), "exited", []),
])
def test_stay_ready(seconds, interval, release, why, probes):
    assert release.run(seconds, interval) == why
    assert release.probes == probes


def test_stay_ready_sees_an_exit_within_a_check_not_a_probe_interval():
    release = Release(dies_at=2.3)
    assert release.run(30) == "exited"
    assert release.now - 2.3 <= gate.ALIVE_CHECK_EVERY


# -- the setting ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["-1", "nan", "soon", "3601", "1e10"])
def test_min_ready_seconds_is_a_bounded_duration(tmp_path, raw):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"MIN_READY_SECONDS": raw}, tmp_path)
    assert str(caught.value) == (f"MIN_READY_SECONDS={raw}: must be a non-negative number of seconds in decimal "
                                 f"digits (e.g. 2.5), at most 3600")
    assert caught.value.exit_code == 2


def test_min_ready_seconds_defaults_to_0_and_takes_fractions(tmp_path):
    assert Settings.from_env({}, tmp_path).min_ready_seconds == 0
    assert Settings.from_env({"MIN_READY_SECONDS": "2.5"}, tmp_path).min_ready_seconds == 2.5
    assert Settings.from_env({"MIN_READY_SECONDS": "3600"}, tmp_path).min_ready_seconds == 3600


# -- on a swarm: every task ----------------------------------------------------------------------------

def swarm_context(tmp_path, answers=None, **env):
    settings = Settings.from_env({"TARGET": "swarm", "REGISTRY": "r:5001", "REPLICAS": "3", "VERIFY_SECONDS": "0",
                                  "HEALTH_INTERVAL": "10", "HEALTH_PATH": "/health", "DRAIN_SECONDS": "1",
                                  "NGINX_INCLUDE": str(tmp_path / "service-upstream.inc"), **env}, tmp_path)
    calls: list = []
    clock = FakeClock(0.0)
    prober = FakeProber(answers=answers or {})
    engine = FakeSwarm(settings, 3, calls, clock=clock)   # `events` change tasks as the clock moves
    engine.tasks_of.update({c: [task(c, i) for i in range(3)] for c in ("blue", "green")})
    engine.logs = ["task log line"]
    ctx = Context(settings, engine, LocalHost(), FakeSwitch.configured(settings, calls), tmp_path, {}, prober, 0.0, SignalGuard(), clock)
    return ctx, calls, prober, clock


def test_min_ready_on_a_swarm_probes_every_task_and_holds_its_seconds(tmp_path):
    ctx, calls, prober, clock = swarm_context(tmp_path, MIN_READY_SECONDS="3")
    flows.hold_ready(ctx, "green")
    assert clock.now() == 3.0 and calls == []
    assert prober.asked == health_urls("green") * 3   # every task, at 1, 2 and 3 s


def test_min_ready_on_a_swarm_fails_when_one_task_fails_naming_it(tmp_path):
    ctx, calls, prober, clock = swarm_context(tmp_path, MIN_READY_SECONDS="5")
    ctx.engine.events.append((1.6, ("green", 2, task("green", 2, "failed", "shutdown", exit_code=1,
                                                    message="task: non-zero exit (1)"))))
    with pytest.raises(DeployFailed) as caught:
        flows.hold_ready(ctx, "green")
    assert str(caught.value) == (
        "app-green did not stay ready for MIN_READY_SECONDS=5: app-green: task green-task-2 on pswarm-n3 "
        "(10.99.0.13:8082) stopped serving (failed, exit code 1: task: non-zero exit (1)) 1.8s after it was "
        "healthy; nothing was switched")
    assert prober.asked == health_urls("green")   # the probes at 1 s; none after the task failed


def test_min_ready_on_a_swarm_fails_when_one_task_stops_answering(tmp_path):
    sick = health_urls("green")[1]
    ctx, _, prober, _ = swarm_context(tmp_path, {sick: [200, 503]}, MIN_READY_SECONDS="5")
    with pytest.raises(DeployFailed, match=r"its health failed 2 times in a row \(last: task green-task-1 on "
                                           r"pswarm-n2 \(10.99.0.12:8082\): HTTP 503 'DOWN'\) 2.5s after"):
        flows.hold_ready(ctx, "green")


def test_the_last_look_on_a_swarm_switches_back_to_every_old_task_and_scales_the_new_to_0(tmp_path):
    ctx, calls, prober, clock = swarm_context(tmp_path)
    ctx.engine.events.append((0.5, ("green", 0, task("green", 0, "failed", "shutdown", exit_code=137))))
    v1, v2 = Rel("v1", "blue", "r:5001/app:v1"), Rel("v2", "green", "r:5001/app:v2")
    before = ReleaseRecord().made_live(v1)
    with pytest.raises(SwitchedBack) as caught:
        flows.retire(ctx, "blue", "green", before)
    assert str(caught.value) == ("switched back to blue: app-green: only 2 of REPLICAS=3 task(s) running, "
                                 "in the last look before stopping app-blue")
    assert calls == [("route_to", LIVE, addresses("blue")),
                     ("discard", "green")]   # blue never stopped
    assert prober.asked == []
    assert ReleaseRecord.from_json((tmp_path / "app.releases.json").read_text()) == before
    # A good release: every task probed once after the drain, then the old color stops.
    ctx, calls, prober, clock = swarm_context(tmp_path)
    flows.retire(ctx, "blue", "green", before.made_live(v2))
    assert prober.asked == health_urls("green") and calls == [("stop", "blue")]
