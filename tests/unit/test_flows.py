"""The deploy, stage, promote and rollback decisions, step by step, against strict fakes at the
Context seam (tests/unit/fakes.py): no docker, nginx or network. Each row is what a user types,
the exit code of every step, and what serves at the end. The same sequences run end to end on the
real stack in tests/integration/test_releases.py. With VERIFY_SECONDS the window after the switch
reads nginx's answers (fakes.NginxAnswers; end to end: test_verify.py); with `swarm_nodes` the
colors run on the swarm target's own code over fake tasks (end to end: test_swarm*.py)."""
from __future__ import annotations

import json
import logging

import pytest

from pipeline.flows import deploy as flows
from pipeline.core.decide import ColorChoice
from pipeline.core.releases import ReleaseRecord, settle_live

from .fakes import World, no_network  # noqa: F401  (autouse: no flow reaches the network)



SEQUENCES = [
    # (name, steps, exit codes, what serves at the end: (version, color))
    ("two deploys", ["deploy v1", "deploy v2"], [0, 0], ("v2", "green")),
    ("rollback goes to the previous release",
     ["deploy v1", "deploy v2", "rollback"], [0, 0, 0], ("v1", "blue")),
    ("rollback of a rollback", ["deploy v1", "deploy v2", "rollback", "rollback"], [0, 0, 0, 0], ("v2", "green")),
    # Issue 8: the staged, never-approved v3 replaced v1's container; rollback recreates v1.
    ("rollback skips a staged release",
     ["deploy v1", "deploy v2", "stage v3", "rollback"], [0, 0, 0, 0], ("v1", "blue")),
    # Issue 8: the failed v3 deploy removed v1's kept container; its image is still there.
    ("rollback after a deploy that never got healthy",
     ["deploy v1", "deploy v2", "deploy v3 !unhealthy", "rollback"], [0, 0, 1, 0], ("v1", "blue")),
    ("stage then promote", ["deploy v1", "stage v2", "promote"], [0, 0, 0], ("v2", "green")),
    ("first release staged, then promoted", ["stage v1", "promote"], [0, 0], ("v1", "blue")),
    ("promote with nothing staged", ["deploy v1", "promote"], [0, 5], ("v1", "blue")),
    # Issue 8: the interrupted drain leaves v1 running; it is not "staged".
    ("promote after an interrupted drain",
     ["deploy v1", "deploy v2 !interrupt-drain", "promote"], [0, 143, 5], ("v2", "green")),
    ("a deploy replaces what was staged", ["deploy v1", "stage v2", "deploy v3", "promote"], [0, 0, 0, 5],
     ("v3", "green")),
    ("a failed stage stages nothing", ["deploy v1", "stage v2 !unhealthy", "promote"], [0, 1, 5], ("v1", "blue")),
    ("a promoted release is not staged twice", ["deploy v1", "stage v2", "promote", "promote"], [0, 0, 0, 5],
     ("v2", "green")),
    ("rollback with no previous release", ["deploy v1", "rollback"], [0, 5], ("v1", "blue")),
    ("rollback with nothing deployed", ["rollback"], [5], None),
    ("rollback --to an older release",
     ["deploy v1", "deploy v2", "deploy v3", "rollback --to v1"], [0, 0, 0, 0], ("v1", "green")),
    ("rollback --to the previous release reuses its kept container",
     ["deploy v1", "deploy v2", "deploy v3", "rollback --to v2"], [0, 0, 0, 0], ("v2", "green")),
    ("rollback --to an unknown version", ["deploy v1", "deploy v2", "rollback --to v9"], [0, 0, 5], ("v2", "green")),
    ("rollback --to the live version", ["deploy v1", "deploy v2", "rollback --to v2"], [0, 0, 5], ("v2", "green")),
    ("rollback --to a release that was only staged",
     ["deploy v1", "stage v2", "rollback --to v2"], [0, 0, 5], ("v1", "blue")),
    ("a failed rollback leaves the live release serving",
     ["deploy v1 ", "deploy v2", "deploy v3 !unhealthy", "rollback --to v3"], [0, 0, 1, 5], ("v2", "green")),
]


@pytest.mark.parametrize("steps,codes,serving", [row[1:] for row in SEQUENCES], ids=[row[0] for row in SEQUENCES])
def test_sequences(steps, codes, serving):
    world = World()
    got = [world.step(step)[0] for step in steps]
    assert got == codes
    assert world.serving() == serving


@pytest.mark.parametrize("blue_answers, target", [(True, "green"), (False, "blue")])
def test_with_no_include_blue_is_probed_as_the_seed_did(blue_answers, target):
    # The seed's rule, for a host whose include is gone: blue is live if a container of ours holds
    # its address and answers health (then the deploy goes to green); otherwise blue is replaced.
    world = World(preview=False)
    assert world.step("deploy v1") == (0, "")
    world.switch.routes["live"] = None        # the include is lost; v1 still runs in blue
    world.host.files.pop(world.record_path)   # and so is the record (a rebuilt nginx host)
    world.engine.holding = True
    if not blue_answers:
        world.engine.sick.add("blue")
    world.engine.mutations.clear()
    assert world.step("deploy v2") == (0, "")
    assert world.serving() == ("v2", target)
    assert ("run", target, "v2") in world.engine.mutations


def test_rollback_recreates_the_previous_release_over_a_staged_one():
    world = World()
    for step in ("deploy v1", "deploy v2", "stage v3"):
        assert world.step(step)[0] == 0
    world.engine.mutations.clear()
    assert world.step("rollback") == (0, "")
    # v3 sat in blue, where v1 was kept: v1 is recreated from its image there; green (v2) stops.
    assert world.engine.mutations == [("run", "blue", "v1"), ("stop", "green")]
    record = ReleaseRecord.from_json(world.host.files[world.record_path])
    assert (record.live.version, record.previous.version, record.staged) == ("v1", "v2", None)


def test_rollback_starts_the_kept_container_when_it_is_there():
    world = World()
    world.step("deploy v1")
    world.step("deploy v2")
    world.engine.mutations.clear()
    assert world.step("rollback") == (0, "")
    assert world.engine.mutations == [("start", "blue"), ("stop", "green")]


def test_rollback_reads_the_release_record_once_before_it_starts_the_kept_container(monkeypatch):
    # Issue 15: every SFTP round trip before `docker start` delays the rollback; the record read
    # for settling the live color is the one checked against the facts.
    world = World()
    world.step("deploy v1")
    world.step("deploy v2")
    world.engine.mutations.clear()
    reads = []
    read_text = world.host.read_text

    def counting(path):
        if path == world.record_path:
            reads.append(len(world.engine.mutations))   # how many mutations came before this read
        return read_text(path)
    monkeypatch.setattr(world.host, "read_text", counting, raising=False)
    assert world.step("rollback") == (0, "")
    assert world.engine.mutations[0] == ("start", "blue")
    assert [n for n in reads if n == 0] == [0]


@pytest.mark.parametrize("preview", [True, False], ids=["with-preview", "no-preview-include"])
def test_promote_after_an_interrupted_drain_changes_nothing(preview):
    world = World(preview=preview)
    world.step("deploy v1")
    assert world.step("deploy v2 !interrupt-drain")[0] == 143
    assert world.engine.boxes["blue"]["status"] == "running"   # the old release left running
    files = dict(world.host.files)
    world.engine.mutations.clear()
    world.switch.moves.clear()
    code, message = world.step("promote")
    assert code == 5 and message.startswith("nothing is staged")
    assert world.engine.mutations == [] and world.switch.moves == []
    assert {k: v for k, v in world.host.files.items() if not k.endswith(".jsonl")} == \
        {k: v for k, v in files.items() if not k.endswith(".jsonl")}


def test_rollback_to_an_unknown_version_names_the_versions_it_can_go_to():
    world = World()
    for version in ("v1", "v2", "v3"):
        world.step(f"deploy {version}")
    code, message = world.step("rollback --to v9")
    assert code == 5
    assert message == "cannot roll back to v9: not a kept release (can go to: v2, v1)"


def test_rollback_to_goes_only_to_releases_whose_image_is_kept():
    world = World(keep_releases=1)
    for version in ("v1", "v2", "v3", "v4"):
        assert world.step(f"deploy {version}")[0] == 0
    # KEEP_RELEASES=1 keeps v4's image, and v3's: the previous release, and its container's.
    assert sorted(world.engine.images) == ["app:v3", "app:v4"]
    code, message = world.step("rollback --to v1")
    assert code == 5 and "(can go to: v3)" in message


def test_cleaning_keeps_the_previous_image_after_its_container_was_replaced():
    world = World(keep_releases=1)
    for step in ("deploy v1", "deploy v2", "deploy v3 !unhealthy", "stage v4"):
        world.step(step)
    # v1's container is gone (replaced by the failed v3, then by the staged v4), but it is v2's
    # previous release: its image stays, so rollback can recreate it.
    assert "app:v1" in world.engine.images
    assert world.step("promote")[0] == 0
    assert "app:v2" in world.engine.images   # now the previous release


@pytest.mark.parametrize("damage", ["missing", "not json", "another format", "out of date", "not utf-8"])
def test_a_missing_or_damaged_record_is_rebuilt_from_history_and_labels(damage, caplog):
    world = World()
    for step in ("deploy v1", "deploy v2", "stage v3"):
        world.step(step)
    path = world.record_path
    if damage == "missing":
        del world.host.files[path]
    elif damage == "not json":
        world.host.files[path] = "{ half a rec"
    elif damage == "another format":
        world.host.files[path] = json.dumps({"format": 99, "live": None})
    elif damage == "not utf-8":   # a hand edit, or a write cut short by a full disk
        world.host.files[path] = world.host.files[path].encode()[:40] + b"\xe2\x82"
    else:   # as after a run killed between the switch and writing the record
        world.host.files[path] = ReleaseRecord().to_json()
    with caplog.at_level("WARNING", logger="pipeline"):
        assert world.step("rollback") == (0, "")
    assert "rebuilding it from the history and the containers' labels" in caplog.text
    assert world.serving() == ("v1", "blue")


def test_a_rebuilt_record_knows_the_staged_release():
    world = World()
    for step in ("deploy v1", "stage v2"):
        world.step(step)
    del world.host.files[world.record_path]
    assert world.step("promote") == (0, "")
    assert world.serving() == ("v2", "green")


def test_a_first_deploy_writes_the_record_without_a_warning(caplog):
    world = World()
    with caplog.at_level("WARNING", logger="pipeline"):
        assert world.step("deploy v1") == (0, "")
    assert "release record" not in caplog.text
    record = ReleaseRecord.from_json(world.host.files[world.record_path])
    assert (record.live.version, record.live.color, record.live.image) == ("v1", "blue", "app:v1")


def test_history_marks_what_is_live_and_what_rollback_can_go_to():
    world = World()
    for step in ("deploy v1", "deploy v2", "deploy v3 !unhealthy", "stage v4"):
        world.step(step)
    marks = [(e["action"], e["version"], e["result"], e["live"], e["rollback_target"])
             for e in flows.history(world.context())]
    assert marks == [
        ("deploy", "v1", "ok", False, True),
        ("deploy", "v2", "ok", True, False),
        ("deploy", "v3", "failed", False, False),
        ("stage", "v4", "ok", False, False),
    ]


def test_the_fakes_are_strict():
    world = World()
    with pytest.raises(AssertionError, match="FakeEngine.inspect_container was used"):
        world.engine.inspect_container("app-blue")
    with pytest.raises(AssertionError, match="FakeHost.run was used"):
        world.host.run(["nginx", "-t"])


@pytest.mark.parametrize("by_probe,record,live", [
    (True, ReleaseRecord(), None),                 # a first release staged in blue: nothing is live
    (True, None, "blue"),                          # no record (the seed's host): the probe decides
    (False, ReleaseRecord(), "blue"),              # the include names blue: it decides
])
def test_the_record_overrules_the_seeds_probe_only_when_it_says_nothing_is_live(by_probe, record, live):
    choice = ColorChoice("blue", "green", "reason", by_probe=by_probe)
    settled = settle_live(choice, record, frozenset({"blue"}))
    assert settled.live == live


def test_status_reports_the_record_and_changes_nothing():
    world = World()
    for step in ("deploy v1", "deploy v2", "stage v3"):
        world.step(step)
    files = dict(world.host.files)
    world.engine.mutations.clear()
    report = flows.status(world.context())
    assert {name: (r["version"], r["color"]) if r else None for name, r in report["releases"].items()} == {
        "live": ("v2", "green"), "previous": ("v1", "blue"), "staged": ("v3", "blue")}
    assert world.engine.mutations == [] and world.host.files == files


def test_history_lines_that_are_not_utf8_or_not_entries_are_skipped_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("pipeline"), "propagate", True)   # cli.main may have run before
    world = World()
    for step in ("deploy v1", "deploy v2"):
        world.step(step)
    path = str(world.settings.history_path())
    first, second = world.host.files[path].encode().splitlines(keepends=True)
    world.host.files[path] = b"".join([first, b'{"time": "cut sh\xe2\x82\n', b"[1, 2]\n", second])
    with caplog.at_level("WARNING", logger="pipeline"):
        entries = flows.history(world.context())
    assert [(e["version"], e["live"]) for e in entries] == [("v1", False), ("v2", True)]
    assert f"history {path}, line 2: not UTF-8 text; skipped" in caplog.text
    assert f"history {path}, line 3: not a history entry; skipped" in caplog.text
    assert world.step("deploy v3") == (0, "")   # and the next entry is appended after them
    assert [e["version"] for e in flows.history(world.context())] == ["v1", "v2", "v3"]


def test_a_lock_that_is_not_utf8_is_damaged_and_lock_release_removes_it():
    world = World()
    world.step("deploy v1")
    path = str(world.settings.lock_path())
    world.host.files[path] = b'{"who": "ci\xff", "pid": 7}\n'
    code, message = world.step("deploy v2")
    assert code == 4 and message.startswith(f"deploy lock {path} is damaged: not a lock pipeline wrote (")
    assert world.serving() == ("v1", "blue") and path in world.host.files
    assert flows.lock_command([world.host], world.settings, "status").startswith(
        "locked: a damaged lock file that pipeline did not write (")
    assert flows.lock_command([world.host], world.settings, "release").startswith("released the lock held by: ")
    assert path not in world.host.files
    assert world.step("deploy v2") == (0, "")


def test_a_history_entry_with_a_message_holding_a_line_separator_is_kept():
    world = World()
    world.step("deploy v1")
    path = str(world.settings.history_path())
    entry = json.loads(world.host.files[path])
    world.host.files[path] += json.dumps({**entry, "version": "v0", "message": "a\u2028b"}, ensure_ascii=False) + "\n"
    assert [e["version"] for e in flows.history(world.context())] == ["v1", "v0"]


def test_a_run_killed_holding_the_lock_is_written_into_the_history_by_the_run_that_takes_it_over():
    """A SIGKILLed run writes no history entry of its own; the next run, taking over its stale
    lock, writes one for it (result `killed`), so `history` shows every run that changed things."""
    from pipeline.flows.lock import LockInfo, ProcessTable

    world = World()
    assert world.step("deploy v1")[0] == 0
    here = ProcessTable()
    dead = LockInfo("jenkins-app-6", "agent-1", 2 ** 22 + 1, "deploy", "v2", "2026-11-23T10:00:00Z",
                    boot_id=here.boot_id(), pid_ns=here.pid_namespace(), start_time="1")   # no such pid
    world.host.files[str(world.settings.lock_path())] = dead.to_text()
    assert world.step("deploy v3")[0] == 0
    entries = [json.loads(line) for line in world.host.files[str(world.settings.history_path())].splitlines()]
    assert [(e["action"], e["version"], e["result"]) for e in entries] == [
        ("deploy", "v1", "ok"), ("deploy", "v2", "killed"), ("deploy", "v3", "ok")]
    killed = entries[1]
    assert (killed["time"], killed["who"], killed["color"]) == (dead.since, "jenkins-app-6", "")
    assert "pid 4194305 on agent-1" in killed["message"] and "unit took over its lock" in killed["message"]


def test_status_names_no_live_color_while_nginx_may_serve_either_the_include_or_what_it_loaded_before():
    """A run killed between renaming the include (blue) and reloading nginx (still on green):
    `status` must not report the include's color as live; it says it cannot tell, and shows the
    record as written."""
    import io

    from pipeline import cli
    from pipeline.core.decide import render_include

    from .fakes import INCLUDE
    from .test_settle import killed_between_include_and_reload

    world = World()
    killed_between_include_and_reload(world)
    world.host.files[str(INCLUDE)] = render_include(world.switch.routes["live"])   # what the switch wrote: blue
    report = flows.status(world.context())
    assert (report["live_color"], report["live_version"]) == (None, None)
    assert report["switch_problem"] == "nginx was not seen loading the live include"
    assert report["include"]["points_at"] == f"{world.settings.ip_of('blue')}:8080"
    assert report["releases"]["live"]["version"] == "v2", "the record as written: v2 live on green"
    shown = io.StringIO()
    cli._print_status(report, False, shown)
    assert "live:     unknown\n" in shown.getvalue()
    assert "warning:  nginx was not seen loading the live include\n" in shown.getvalue()


# -- verification (VERIFY_SECONDS > 0): nginx's answers for the new release after the switch --------

VERIFIED = [
    # (name, steps, exit codes, what serves at the end)
    ("a release nginx gets good answers from stays", ["deploy v1", "deploy v2"], [0, 0], ("v2", "green")),
    ("a release nginx gets 5xx from is switched back", ["deploy v1", "deploy v2 !5xx"], [0, 1], ("v1", "blue")),
    ("a release whose health fails in the window is switched back",
     ["deploy v1", "deploy v2 !sickens"], [0, 1], ("v1", "blue")),
    ("a signal in the window switches back", ["deploy v1", "deploy v2 !interrupt-drain"], [0, 143], ("v1", "blue")),
    ("the switched-back release is no rollback target",
     ["deploy v1", "deploy v2", "deploy v3 !5xx", "rollback"], [0, 0, 1, 0], ("v1", "blue")),
    ("a first release has nothing to switch back to: not verified", ["deploy v1 !5xx"], [0], ("v1", "blue")),
    ("a promoted release is verified too", ["deploy v1", "stage v2 !5xx", "promote"], [0, 0, 1], ("v1", "blue")),
]


@pytest.mark.parametrize("steps,codes,serving", [row[1:] for row in VERIFIED], ids=[row[0] for row in VERIFIED])
def test_verified_sequences(steps, codes, serving):
    world = World(verify_seconds=3.0)
    got = [world.step(step)[0] for step in steps]
    assert got == codes
    assert world.serving() == serving


def test_a_switched_back_release_is_removed_and_the_old_one_kept_serving():
    world = World(verify_seconds=3.0)
    world.step("deploy v1")
    world.engine.mutations.clear()
    code, message = world.step("deploy v2 !5xx")
    assert code == 1 and message.startswith("switched back to blue: green answered 5xx to 30.0% of 100 requests")
    assert world.switch.moves[-2:] == [("live", world.engine.addresses("green")), ("live", world.engine.addresses("blue"))]
    assert world.engine.mutations[-2:] == [("stop", "green"), ("remove", "green")]
    assert world.engine.boxes["blue"]["status"] == "running"
    record = ReleaseRecord.from_json(world.host.files[world.record_path])
    assert (record.live.version, record.previous) == ("v1", None)


def test_a_good_release_is_watched_for_the_whole_window_on_the_fake_clock():
    world = World(verify_seconds=3.0)
    world.step("deploy v1")
    started = world.now
    assert world.step("deploy v2") == (0, "")
    assert world.now - started >= 3.0   # the window, then the drain: all of it fake time
    assert world.engine.boxes["blue"]["status"] == "exited"   # the old release stopped only after the window


# -- the swarm target (TARGET=swarm): several endpoints per color -----------------------------------

SWARM = [
    ("two deploys", ["deploy v1", "deploy v2"], [0, 0], ("v2", "green")),
    ("rollback goes to the previous release", ["deploy v1", "deploy v2", "rollback"], [0, 0, 0], ("v1", "blue")),
    ("a release that never gets healthy is scaled to 0", ["deploy v1", "deploy v2 !unhealthy"], [0, 1], ("v1", "blue")),
    ("a task failing its gate fails the release", ["deploy v1", "deploy v2 !task-fails"], [0, 1], ("v1", "blue")),
    ("stage then promote", ["deploy v1", "stage v2", "promote"], [0, 0, 0], ("v2", "green")),
    ("verification switches back to every old task", ["deploy v1", "deploy v2 !5xx"], [0, 1], ("v1", "blue")),
    ("a task failing right after its gate is switched back from", ["deploy v1", "deploy v2 !dies"], [0, 1], ("v1", "blue")),
    ("tasks failing health after the switch are switched back from", ["deploy v1", "deploy v2 !sickens"], [0, 1], ("v1", "blue")),
    ("a signal in the window switches back", ["deploy v1", "deploy v2 !interrupt-drain"], [0, 143], ("v1", "blue")),
]


@pytest.mark.parametrize("steps,codes,serving", [row[1:] for row in SWARM], ids=[row[0] for row in SWARM])
def test_swarm_sequences(steps, codes, serving):
    world = World(swarm_nodes=3, replicas=3, verify_seconds=3.0)
    got = [world.step(step)[0] for step in steps]
    assert got == codes
    assert world.serving() == serving
    # nginx routes to every task of the serving color, one per node, at the color's port.
    assert world.switch.routes["live"] == world.engine.addresses(serving[1])
    assert len(world.switch.routes["live"]) == 3


def test_a_swarm_task_failing_its_gate_is_named_and_nothing_is_switched():
    world = World(swarm_nodes=3, replicas=3)
    world.step("deploy v1")
    world.switch.moves.clear()
    code, message = world.step("deploy v2 !task-fails")
    assert code == 1 and "green-v2-1" in message and "node-1" in message
    assert [route for route, _ in world.switch.moves] == []
    assert world.engine.tasks("green") == []   # scaled to 0
    assert world.serving() == ("v1", "blue")


def test_a_swarm_with_fewer_nodes_up_than_replicas_is_refused_before_anything_changes():
    world = World(swarm_nodes=3, replicas=3)
    world.step("deploy v1")
    world.engine.down.add("node-3")
    world.engine.mutations.clear()
    world.switch.moves.clear()
    code, message = world.step("deploy v2")
    assert code == 3 and "REPLICAS=3" in message and "node-3" in message, message
    assert world.engine.mutations == [] and world.switch.moves == []
    assert world.serving() == ("v1", "blue")


def test_a_swarm_deploy_goes_on_with_a_node_down_while_enough_are_up():
    world = World(swarm_nodes=4, replicas=3)
    world.engine.down.add("node-2")
    assert world.step("deploy v1") == (0, "")
    assert [a.ip for a in world.switch.routes["live"]] == ["10.99.0.11", "10.99.0.13", "10.99.0.14"]


def test_swarm_status_has_a_row_per_task_with_its_health():
    world = World(swarm_nodes=3, replicas=3)
    for step in ("deploy v1", "deploy v2"):
        assert world.step(step)[0] == 0
    world.engine.sick.add("green")
    report = flows.status(world.context())
    assert (report["live_color"], report["live_version"]) == ("green", "v2")
    green = report["colors"]["green"]
    assert green["health"] == "0 of 3 task(s) answer 200"
    assert [(t["node"], t["address"], t["health"]) for t in green["tasks"]] == [
        (f"node-{i}", f"10.99.0.1{i}:8082", "unhealthy: HTTP 503 '{\"status\":\"DOWN\"}'") for i in (1, 2, 3)]
    # The route the nginx host reaches each task by, as the prober found it (issue 20).
    assert [t["route"] for t in green["tasks"]] == ["directly on br-fake"] * 3
    assert report["colors"]["blue"]["tasks"] == []   # stopped after the drain (kept, scaled to 0)
