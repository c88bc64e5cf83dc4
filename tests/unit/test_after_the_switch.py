"""Failures after traffic moved (issue 15), through the flows over the strict fakes
(tests/unit/fakes.py): whatever ends the verification window early switches back and puts the
record back; when switching back fails, the run says what serves (exit 6) and `history` marks
that release live. In live mode, a switch that nginx may have taken but that could not be put
back keeps the release it switched to running (deploy and rollback). The real stack's cases are
in tests/integration/test_verify.py and test_live_mode.py."""
from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Tuple

import pytest

from pipeline import cli
from pipeline.flows import deploy as flows
from pipeline.core.decide import parse_include
from pipeline.core.errors import AdminRefused, AdminUnavailable, DeployFailed, SwitchedBackAfterBug
from pipeline.adapters.live_switch import LiveSwitch
from pipeline.core.releases import ReleaseRecord
from pipeline.core.switch import LIVE

from .fakes import INCLUDE, FakeAdmin, FakeAnswers, World, no_network  # noqa: F401  (autouse: no flow reaches the network)




@pytest.fixture
def verifying():
    """A World whose deploys verify for a moment (no health probe falls in it), reading answers
    from `answers` instead of an access log."""
    answers = FakeAnswers({200: 5})   # a good few, unless a test says otherwise
    world = World()
    world.switch.reader = answers
    world.settings = replace(world.settings, verify_seconds=0.3)
    world.answers = answers
    return world


def record_of(world: World) -> ReleaseRecord:
    return ReleaseRecord.from_json(world.host.files[world.record_path])


def last_history(world: World) -> dict:
    return json.loads(world.host.files[str(world.settings.history_path())].splitlines()[-1])


def test_a_bug_in_the_window_switches_back_puts_the_record_back_and_is_still_a_bug(verifying):
    world = verifying
    assert world.step("deploy v1") == (0, "")
    inspect = world.engine.container

    def broken(color: str):
        if color == "green":
            raise KeyError("State")   # say, a docker answer without the field the adapter reads
        return inspect(color)

    world.answers.on_read = lambda: setattr(world.engine, "container", broken)
    with pytest.raises(SwitchedBackAfterBug) as caught:
        flows.deploy(world.context("v2"))
    assert str(caught.value) == "KeyError: 'State' during verification; switched back to blue"
    assert world.serving() == ("v1", "blue")
    assert "green" not in world.engine.boxes, "the unproven release is removed"
    record = record_of(world)
    assert record.live.version == "v1" and record.previous is None, "v2 is nobody's rollback target"
    entry = last_history(world)
    assert (entry["version"], entry["result"]) == ("v2", "switched back")


def test_a_switch_back_that_fails_leaves_the_new_release_live_recorded_and_marked_live(verifying):
    world = verifying
    assert world.step("deploy v1") == (0, "")
    world.answers.turns = [{200: 10, 500: 30}]
    moved = world.switch.route_to

    def refuse_to_go_back(route, address):
        if route == LIVE and world.switch.routes[LIVE] != address and address[0].ip == str(world.settings.blue_ip):
            raise DeployFailed("`nginx -t` exited with 1")
        moved(route, address)

    world.switch.route_to = refuse_to_go_back
    code, message = world.step("deploy v2")
    assert code == 6
    assert message.startswith("green answered 5xx to 75.0% of 40 requests (limit 1.0%; commonest: 500 x30, 200 x10); ")
    assert message.endswith("switching back to blue failed: `nginx -t` exited with 1. app-green still has the "
                            "traffic, unverified; app-blue is still running. To go back to blue, run "
                            "`python -m pipeline rollback` once that is fixed")
    assert world.serving() == ("v2", "green"), "nginx still points at green"
    assert world.engine.boxes["blue"]["status"] == "running"
    record = record_of(world)
    assert (record.live.version, record.previous.version) == ("v2", "v1")
    entry = last_history(world)
    assert (entry["version"], entry["color"], entry["result"]) == ("v2", "green", "live unverified")
    marks = [(e["version"], e["result"], e["live"]) for e in flows.history(world.context())]
    assert marks == [("v1", "ok", False), ("v2", "live unverified", True)]
    # What the message says to run, once nginx takes changes again: back on v1, a switch only.
    world.switch.route_to = moved
    world.engine.mutations.clear()
    assert world.step("rollback") == (0, "")
    assert world.serving() == ("v1", "blue")
    assert ("start", "blue") not in world.engine.mutations


def test_cli_reports_a_bug_after_the_switch_back_as_a_bug_with_its_traceback(tmp_path, monkeypatch, capsys):
    def run(*args: object) -> int:
        try:
            {}["State"]
        except KeyError as bug:
            raise SwitchedBackAfterBug("KeyError: 'State' during verification; switched back to blue") from bug
        return 0

    monkeypatch.setattr(cli, "_run", run)
    monkeypatch.setattr(cli.logsetup, "setup", lambda verbose=False: None)   # the pipeline logger stays pytest's
    assert cli.main(["status"], {}, tmp_path, io.StringIO()) == 70
    err = capsys.readouterr().err
    assert err.splitlines() == ["pipeline: internal error: SwitchedBackAfterBug: KeyError: 'State' during "
                                "verification; switched back to blue", "    (run with --verbose for the traceback)"]
    assert cli.main(["--verbose", "status"], {}, tmp_path, io.StringIO()) == 70
    err = capsys.readouterr().err
    assert "{}[\"State\"]" in err and "The above exception was the direct cause" in err



# -- live mode: a switch whose put-back fails leaves nginx on the new release -------------------------

ADMIN_GONE = AdminUnavailable("http://127.0.0.1:8091", "GET /pipeline/live failed 3 times, last: timed out")


def live_world() -> Tuple[World, FakeAdmin]:
    """A World switching through the real LiveSwitch, over the fake admin and the fake host's
    include files."""
    world = World(preview=False)
    world.settings = replace(world.settings, switch_mode="live")
    admin = FakeAdmin()
    world.switch = LiveSwitch(world.host, world.settings.switch, world.settings.network_timeout, admin)   # type: ignore[assignment,arg-type]
    return world, admin


def nginx_serves(world: World, admin: FakeAdmin) -> Tuple[str, str]:
    """(version, color) nginx's balancer sends live traffic to; that container must be running."""
    color = world.engine.color_at(admin.routes[LIVE])
    box = world.engine.boxes.get(color)
    assert box is not None and box["status"] == "running", f"nginx sends the traffic to {color}, which is not running"
    return box["version"], color


def include_names(world: World) -> str:
    return world.engine.color_at(parse_include(world.host.files[str(INCLUDE)]))


def test_a_live_switch_whose_read_back_and_put_back_fail_keeps_the_new_release_running():
    world, admin = live_world()
    assert world.step("deploy v1") == (0, "")
    admin.down_after_put = ADMIN_GONE   # the PUT to green lands; then the admin answers nothing
    code, message = world.step("deploy v2")
    # Before: the flow went by the include (blue again) and removed green, which nginx served.
    assert nginx_serves(world, admin) == ("v2", "green")
    assert include_names(world) == "blue" and world.engine.boxes["blue"]["status"] == "running"
    assert ("remove", "green") not in world.engine.mutations
    assert code == 1
    green = f"{world.settings.green_ip}:8080"
    assert message.startswith(f"nginx did not take {green} for the live route: {ADMIN_GONE}; then setting nginx "
                              f"back to {world.settings.blue_ip}:8080 failed too (")
    assert f"nginx may still send the live traffic to {green}" in message
    assert message.endswith("So the new container is left running. To settle it, on the nginx host, run "
                            "`nginx -s reload`: nginx then serves what the include names (app-live.conf reads "
                            "it when it reloads), and the next deploy goes to the other color")

    # What the message says to run: a reload makes nginx read the include; then the next deploy.
    admin.down = None
    admin.routes[LIVE] = parse_include(world.host.files[str(INCLUDE)])
    assert nginx_serves(world, admin) == ("v1", "blue")
    assert world.step("deploy v3") == (0, "")
    assert nginx_serves(world, admin) == ("v3", "green")


def test_a_rollback_whose_live_switch_cannot_be_put_back_keeps_the_release_it_brought_back():
    world, admin = live_world()
    for version in ("v1", "v2"):
        assert world.step(f"deploy {version}") == (0, "")
    assert world.engine.boxes["blue"]["status"] == "exited"   # v1 kept, stopped, for rollback
    admin.down_after_put = ADMIN_GONE   # the PUT to blue lands; then the admin answers nothing
    world.engine.mutations.clear()
    code, message = world.step("rollback")
    # Before: the undo went by the include (green again) and stopped blue, which nginx served.
    assert nginx_serves(world, admin) == ("v1", "blue")
    assert world.engine.boxes["green"]["status"] == "running"
    assert world.engine.mutations == [("start", "blue")], "blue brought back, and not stopped again"
    assert code == 1 and "nginx may still send the live traffic to" in message and "`nginx -s reload`" in message


def test_a_live_switch_with_nothing_to_put_back_says_to_look_at_what_nginx_serves():
    world, admin = live_world()
    admin.down_after_put = ADMIN_GONE   # the first release: nginx had no address before
    code, message = world.step("deploy v1")
    assert code == 1
    assert "then nginx had no address before, so none can be set back: nginx may still send the live " \
           "traffic to" in message
    assert message.endswith("To settle it, once nginx's admin at http://127.0.0.1:8091 answers, `python -m "
                            "pipeline status` shows what nginx serves, and the next deploy goes to the other color")
    assert nginx_serves(world, admin) == ("v1", "blue")


def test_a_refused_live_switch_is_undone_and_its_release_removed_as_before():
    world, admin = live_world()
    assert world.step("deploy v1") == (0, "")
    admin.script = [("get", None), ("get", None),
                    ("put", AdminRefused(admin.url, "PUT /pipeline/live answered 403 'not allowed'"))]
    code, message = world.step("deploy v2")
    assert code == 1 and message.endswith(f"put the old include back (nginx kept {world.settings.blue_ip}:8080)")
    assert nginx_serves(world, admin) == ("v1", "blue") and "green" not in world.engine.boxes
