"""The release phase (RELEASE_COMMAND, issue 18) in the flows, over the strict fakes: where it
runs in a deploy and a stage, that a failure or a timeout stops the run before anything starts,
that promote and rollback never run it, `release-phase` by hand; and the adapters' shared wait
(`follow_one_off`) on the fake clock. End to end: tests/integration/test_release_phase.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from pipeline.adapters.engine import follow_one_off
from pipeline.core.errors import SettingsError
from pipeline.core.settings import Settings
from pipeline.core.target import OneOff
from pipeline.flows import deploy as flows

from .fakes import FakeClock, World, no_network  # noqa: F401  (autouse: no flow reaches the network)

MIGRATE = ("migrate", "--to", "2")
OK = OneOff(0, False, ("migrated to 2",))


def history(world: World) -> List[dict]:
    return [json.loads(line) for line in world.host.files[str(world.settings.history_path())].splitlines()]


def world_with_release_phase(**settings: object) -> World:
    return World(release_command=MIGRATE, release_timeout=30.0, **settings)


@pytest.mark.parametrize("swarm_nodes", [0, 3], ids=["engine", "swarm"])
def test_a_deploy_runs_the_release_phase_after_the_build_and_push_and_before_the_new_color_starts(swarm_nodes):
    world = world_with_release_phase(swarm_nodes=swarm_nodes)
    world.engine.one_offs = [OK, OK]
    assert world.step("deploy v1") == (0, "")
    world.engine.mutations.clear()
    assert world.step("deploy v2") == (0, "")
    kinds = [m[0] for m in world.engine.mutations]
    assert kinds.index("build_image") < kinds.index("run_once") < kinds.index("run")
    if swarm_nodes:
        assert kinds.index("push_and_pull") < kinds.index("run_once")
    # The new release's image and version, the color it is about to start on, the words as given.
    assert ("run_once", "v2", "green", MIGRATE, 30.0) in world.engine.mutations
    assert world.serving() == ("v2", "green")


@pytest.mark.parametrize("ended, says", [
    (OneOff(3, False, ("ALTER TABLE failed: no such table",)), "exited with 3"),
    (OneOff(None, True, ("still migrating",)), "did not end within RELEASE_TIMEOUT=30s (stopped)"),
    (OneOff(None, False, (), "task rejected on node-2: No such image"), "did not run: task rejected on node-2"),
], ids=["non-zero exit", "timeout", "never ran"])
def test_a_failed_release_phase_fails_the_deploy_before_anything_starts(ended, says):
    world = world_with_release_phase()
    world.engine.one_offs = [OK, ended]
    assert world.step("deploy v1")[0] == 0
    world.engine.mutations.clear()
    code, message = world.step("deploy v2")
    assert code == 1
    assert says in message and "nothing was started or switched" in message
    # Nothing started, stopped or removed: v1 serves, and the kept color is untouched.
    assert [m[0] for m in world.engine.mutations] == ["build_image", "run_once"]
    assert world.serving() == ("v1", "blue")
    last = history(world)[-1]
    assert (last["action"], last["version"], last["result"]) == ("deploy", "v2", "release phase failed")


def test_the_failed_release_phases_last_lines_are_the_errors_detail():
    from pipeline.core.errors import ReleasePhaseFailed

    world = world_with_release_phase()
    world.engine.one_offs = [OneOff(1, False, ("step 1 ok", "step 2: duplicate column"))]
    with pytest.raises(ReleasePhaseFailed) as caught:
        flows.deploy(world.context("v1"))
    assert caught.value.detail() == ["release phase: step 1 ok", "release phase: step 2: duplicate column"]


def test_a_stage_runs_it_and_promote_and_rollback_never_do():
    world = world_with_release_phase()
    world.engine.one_offs = [OK, OK]
    assert world.step("deploy v1")[0] == 0
    assert world.step("stage v2")[0] == 0
    assert [m for m in world.engine.mutations if m[0] == "run_once"][-1][1:3] == ("v2", "green")
    # The fake has no ending left: a release phase in either would fail the test.
    assert world.step("promote") == (0, "")
    assert world.step("rollback") == (0, "")
    assert world.serving() == ("v1", "blue")


def test_with_no_release_command_there_is_no_release_phase():
    world = World()
    assert world.step("deploy v1") == (0, "")
    assert not [m for m in world.engine.mutations if m[0] == "run_once"]


def test_release_phase_by_hand_runs_for_the_live_release_or_the_one_named():
    world = world_with_release_phase()
    world.engine.one_offs = [OK, OK, OK, OK]
    world.step("deploy v1")
    world.step("deploy v2")
    world.engine.mutations.clear()
    assert flows.release_phase(world.context()).version == "v2"
    assert flows.release_phase(world.context(), "v1").version == "v1"
    assert [m[1:3] for m in world.engine.mutations] == [("v2", "green"), ("v1", "blue")]
    assert world.serving() == ("v2", "green")   # nothing started, stopped or switched
    assert [(e["action"], e["version"], e["result"]) for e in history(world)[-2:]] == [
        ("release-phase", "v2", "ok"), ("release-phase", "v1", "ok")]


def test_release_phase_by_hand_with_nothing_live_or_an_unknown_version_is_nothing_to_do():
    world = world_with_release_phase()
    code, message = 0, ""
    try:
        flows.release_phase(world.context())
    except Exception as exc:   # NothingToDo
        code, message = getattr(exc, "exit_code", 70), str(exc)
    assert (code, message) == (5, "nothing is live: name the release with --version")
    world.engine.one_offs = [OK]
    world.step("deploy v1")
    with pytest.raises(Exception, match=r"no release v9 on record \(live, staged or previous: v1 \(blue\)\)"):
        flows.release_phase(world.context(), "v9")


@pytest.mark.parametrize("raw, problem", [
    ("0", "must be a positive number of seconds"), ("-5", "must be a positive number"), ("1e3", "decimal digits"),
    ("3601", "at most 3600"), ("ten", "decimal digits"),
])
def test_a_bad_release_timeout_names_the_setting_and_the_value(raw, problem):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"RELEASE_TIMEOUT": raw}, Path("/nonexistent"))
    assert str(caught.value).startswith(f"RELEASE_TIMEOUT={raw}: ") and problem in str(caught.value)


def test_release_command_is_split_into_words_like_a_command_line_and_defaults_to_none():
    settings = Settings.from_env({"RELEASE_COMMAND": "migrate --note 'two words'"}, Path("/nonexistent"))
    assert settings.release_command == ("migrate", "--note", "two words")
    assert settings.rollout.release_timeout == 600.0
    assert Settings.from_env({}, Path("/nonexistent")).release_command == ()
    with pytest.raises(SettingsError, match="RELEASE_COMMAND=migrate 'oops: cannot be split"):
        Settings.from_env({"RELEASE_COMMAND": "migrate 'oops"}, Path("/nonexistent"))


# -- the adapters' wait for a one-off container (engine.follow_one_off), on the fake clock ---------

class Scripted:
    """A one-off container as the engine reports it: its state, then its timestamped output,
    read since a whole second, per poll."""

    def __init__(self, polls: List[Tuple[bool, Optional[int], List[str]]]) -> None:
        self.polls = polls
        self.sinces: List[Optional[int]] = []
        self.output: List[str] = []

    def state(self) -> Tuple[bool, Optional[int]]:
        ended, code, self.lines = self.polls.pop(0)
        return ended, code

    def logs(self, since: Optional[int]) -> bytes:
        self.sinces.append(since)
        return "".join(f"{line}\n" for line in self.lines).encode()


T0 = "2026-12-05T02:00:00"


def test_each_line_is_handed_on_once_across_polls_that_read_the_same_second_again():
    container = Scripted([
        (False, None, [f"{T0}.1Z a", f"{T0}.1Z b"]),
        (False, None, [f"{T0}.1Z a", f"{T0}.1Z b", f"{T0}.100000001Z c"]),   # read from second T0 again
        (True, 0, [f"{T0}.1Z a", f"{T0}.1Z b", f"{T0}.100000001Z c", "2026-12-05T02:00:01Z d"]),
    ])
    clock = FakeClock()
    ended = follow_one_off(container.state, container.logs, 60, clock, container.output.append)
    assert container.output == ["a", "b", "c", "d"]
    assert ended == OneOff(0, False, ("a", "b", "c", "d"))
    assert container.sinces == [None, 1796436000, 1796436000]
    assert clock.sleeps == [0.5, 0.5]


def test_a_one_off_still_running_at_the_timeout_is_reported_as_timed_out_with_its_last_lines():
    container = Scripted([(False, None, [f"{T0}.{i:09d}Z line {i}" for i in range(1, 30)])] * 100)
    clock = FakeClock()
    ended = follow_one_off(container.state, container.logs, 2.2, clock, container.output.append)
    assert ended.timed_out and ended.exit_code is None
    assert ended.last_lines == tuple(f"line {i}" for i in range(10, 30))   # the last 20
    assert len(container.output) == 29   # each once
    assert sum(clock.sleeps) == pytest.approx(2.2)


def test_a_one_off_that_ended_without_an_exit_code_says_why():
    container = Scripted([(True, None, [])])
    ended = follow_one_off(container.state, container.logs, 5, FakeClock(), container.output.append,
                           lambda: "task rejected on node-1: no such image")
    assert ended == OneOff(None, False, (), "task rejected on node-1: no such image")


def test_the_report_times_the_release_phase_between_the_build_and_the_start_and_only_when_there_is_one():
    world = world_with_release_phase()
    world.engine.one_offs = [OK, OK]
    assert world.step("deploy v1") == (0, "")
    ctx = world.context("v2")
    flows.deploy(ctx)
    names = [p.name for p in ctx.runlog.phases]
    assert names.index("build") < names.index("release phase") < names.index("start")
    plain = World()
    assert plain.step("deploy v1") == (0, "")
    ctx = plain.context("v2")
    flows.deploy(ctx)
    assert "release phase" not in [p.name for p in ctx.runlog.phases]
