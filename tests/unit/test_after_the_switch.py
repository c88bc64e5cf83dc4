"""Failures after traffic moved (issue 15), through the flows over the strict fakes
(tests/unit/fakes.py): whatever ends the verification window early switches back and puts the
record back; when switching back fails, the run says what serves (exit 6) and `history` marks
that release live. The real stack's case is tests/integration/test_verify.py."""
from __future__ import annotations

import io
import json
import socket
from dataclasses import replace

import pytest

from pipeline import cli
from pipeline import deploy as flows
from pipeline import verify
from pipeline.errors import DeployFailed, SwitchedBackAfterBug
from pipeline.releases import ReleaseRecord
from pipeline.switch import LIVE

from .fakes import World


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """The flows under test reach nothing: any connection attempt fails the test."""
    def refuse(sock, address, *args):
        raise AssertionError(f"a flow under test tried to connect to {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


class Answers:
    """nginx's answers for the new release (a good few unless told), and a hook run at each read."""

    def __init__(self) -> None:
        self.on_read = lambda: None
        self.statuses = {200: 5}

    def read(self) -> verify.Tally:
        self.on_read()
        return verify.Tally(self.statuses)


@pytest.fixture
def verifying(monkeypatch):
    """A World whose deploys verify for a moment (no health probe falls in it), reading answers
    from `answers` instead of an access log."""
    answers = Answers()
    monkeypatch.setattr(verify, "check", lambda ctx: None)
    monkeypatch.setattr(verify, "make_reader", lambda ctx, addresses: answers)
    world = World()
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
    world.answers.statuses = {200: 10, 500: 30}
    moved = world.switch.route_to

    def refuse_to_go_back(route, address):
        if route == LIVE and world.switch.routes[LIVE] != address and address.ip == str(world.settings.blue_ip):
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

