"""SIGINT/SIGTERM are never swallowed (issue 15): `Interrupted` is not an Exception, so a broad
`except PipelineError` around a step (the answer reader, the record write, the live switch's
read-back) lets it through, and the run cleans up and exits 130/143. Each case raises the signal
exactly where a handler would, inside the step, over the strict fakes."""
from __future__ import annotations

import io
import signal
from dataclasses import replace

import pytest

from pipeline import cli

from pipeline.flows import verify
from pipeline.core.decide import Address
from pipeline.core.errors import (EXIT_SIGINT, EXIT_SIGTERM, Interrupted, InterruptedAfterSwitch, PipelineError,
                             SwitchedBackOnSignal)
from pipeline.adapters.live_switch import LiveSwitch
from pipeline.core.releases import Release, ReleaseRecord, ReleaseStore
from pipeline.core.switch import LIVE

from .fakes import INCLUDE, FakeAdmin, FakeAnswers, FakeHost, World
from .test_verify import window

BLUE = Address("172.20.0.2", 8080)
GREEN = Address("172.20.0.3", 8080)


def test_an_interrupt_is_caught_by_no_except_exception():
    for exc in (Interrupted(signal.SIGINT), InterruptedAfterSwitch(signal.SIGTERM),
                SwitchedBackOnSignal(signal.SIGTERM, "switched back to blue")):
        assert not isinstance(exc, Exception) and not isinstance(exc, PipelineError)
        assert isinstance(exc, Interrupted)
    assert Interrupted(signal.SIGINT).exit_code == EXIT_SIGINT == 130
    assert Interrupted(signal.SIGTERM).exit_code == EXIT_SIGTERM == 143


def test_a_signal_inside_the_answer_reader_switches_back_and_exits_130(tmp_path):
    # Before: the reader's `except (OSError, EOFError, PipelineError)` took SIGINT for an
    # unreadable log, went on with health only, and the release passed verification.
    ctx, calls, mark = window(tmp_path, FakeAnswers(Interrupted(signal.SIGINT)))   # SIGINT while it reads
    with pytest.raises(SwitchedBackOnSignal) as caught:
        verify.verify(ctx, mark)
    assert caught.value.exit_code == 130
    assert str(caught.value).startswith("interrupted by SIGINT during verification; switched back to blue")
    calls.expect("route_to", "stop", "remove")


def test_a_signal_while_the_release_record_is_written_is_not_taken_for_a_write_failure():
    # Before: ReleaseStore.write's `except (OSError, PipelineError)` logged "could not write the
    # release record" and the run went on.
    host = FakeHost()
    host.write_fails = Interrupted(signal.SIGTERM)   # SIGTERM arrives while it writes
    store = ReleaseStore(host, "/nginx/app.releases.json")
    with pytest.raises(Interrupted):
        store.write(ReleaseRecord().made_live(Release("v1", "blue", "app:v1")))


def live_switch(admin: FakeAdmin) -> LiveSwitch:
    host = FakeHost()
    host.files[str(INCLUDE)] = f"set $service_url {BLUE.url};\n"
    world = World()
    return LiveSwitch(host, replace(world.settings, switch_mode="live").switch, world.settings.network_timeout, admin)   # type: ignore[arg-type]


def test_a_signal_during_the_live_switch_read_back_undoes_the_switch_and_is_raised_on():
    # Before: the switch's `except PipelineError` turned it into LiveSwitchFailed (exit 1), and
    # the signal was lost. Now the switch is undone (include and nginx's address) and the
    # signal goes on to the flow, which cleans up and exits 143.
    admin = FakeAdmin({LIVE: (BLUE,)})   # a route, as nginx's admin answers it
    switch = live_switch(admin)
    admin.script = [("get", None), ("put", None), ("get", Interrupted(signal.SIGTERM))]
    with pytest.raises(Interrupted) as caught:
        switch.route_to(LIVE, (GREEN,))
    assert type(caught.value) is Interrupted and caught.value.exit_code == 143
    assert admin.routes[LIVE] == (BLUE,), "nginx's address was put back"
    assert switch.includes.read(LIVE) == f"set $service_url {BLUE.url};\n"
    assert admin.calls == [("get", LIVE), ("put", LIVE), ("get", LIVE), ("put", LIVE)]


def test_a_signal_during_the_drain_still_ends_the_run_with_its_exit_code():
    world = World()
    assert world.step("deploy v1") == (0, "")
    assert world.step("deploy v2 !interrupt-drain") == (143, "interrupted by SIGTERM")
    assert world.serving() == ("v2", "green")
    assert world.engine.boxes["blue"]["status"] == "running", "the old release is left running, not stopped"


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_maps_an_interrupt_to_its_exit_code_in_one_line(tmp_path, monkeypatch, capsys, signum, code):
    def interrupted(*args: object) -> int:
        raise Interrupted(signum)

    monkeypatch.setattr(cli, "_run", interrupted)
    monkeypatch.setattr(cli.logsetup, "setup", lambda verbose=False: None)   # the pipeline logger stays pytest's
    assert cli.main(["status"], {}, tmp_path, io.StringIO()) == code
    err = capsys.readouterr().err
    assert err == f"pipeline: error: interrupted by {signal.Signals(signum).name}\n"
