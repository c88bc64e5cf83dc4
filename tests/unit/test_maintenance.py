"""Maintenance mode's pure parts (core/maintenance.py): the include's flag lines, written and read
back in both include forms, never read as an address; the checks of --message and of a page file;
and the flow on the strict fakes (lock, history, nothing deployed). On the real stack, in every
switch mode: tests/integration/test_maintenance.py."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.core.decide import parse_include, render_include
from pipeline.core.errors import SettingsError, UsageError
from pipeline.core.history import History
from pipeline.core.maintenance import (MAX_MESSAGE, Maintenance, carry, check_message, check_page, page_for,
                                       parse_admin_answer, parse_flag, render_flag, with_flag)
from pipeline.core.route import Address
from pipeline.flows import maintenance as flows

from .fakes import World, no_network  # noqa: F401  (autouse: no flow reaches the network)

BLUE = Address.parse("172.20.0.2:8080")
assert BLUE is not None

PAGES = [
    "<p>plain</p>",
    'quotes " and \' and \\ backslashes \\n not a newline',
    "two\nlines\r\nand\ttabs",
    "{ braces; } and ; semicolons",
    "unicode: déjà vu, 日本語",
    # Text that reads like an include's address lines must never be taken for one.
    "server 10.9.8.7:80; set $service_url http://10.9.8.7:80;",
]


@pytest.mark.parametrize("form", ["set", "upstream"])
@pytest.mark.parametrize("page", PAGES)
def test_the_flag_is_read_back_as_written_and_never_as_an_address(form, page):
    flag = Maintenance(page.replace("$", "&#36;"), 42)
    include = with_flag(render_include((BLUE,), form), flag, form)
    assert parse_flag(include) == flag
    assert parse_include(include) == (BLUE,)
    # One line each: nginx reads the page as one string.
    assert len(render_flag(flag, form).splitlines()) == 2
    assert "$" not in render_flag(flag, form).replace("$pipeline_maintenance", "")


@pytest.mark.parametrize("form", ["set", "upstream"])
def test_a_switch_carries_the_flag_over_and_off_removes_it(form):
    flag = Maintenance(page_for("back soon"), 120)
    old = with_flag(render_include((BLUE,), form), flag, form)
    green = Address.parse("172.20.0.3:8080")
    assert green is not None
    new = carry(old, render_include((green,), form), form)
    assert parse_flag(new) == flag and parse_include(new) == (green,)
    assert carry(render_include((BLUE,), form), render_include((green,), form), form) == \
        render_include((green,), form)
    assert with_flag(new, None, form) == render_include((green,), form)
    assert parse_flag(None) is None and parse_flag("set $service_url http://1.2.3.4:80;\n") is None


def test_the_page_from_a_message_is_escaped_html():
    page = page_for('<script>alert("x")</script> & $PATH')
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#36;PATH" in page


@pytest.mark.parametrize("message,problem", [
    ("", "must not be empty"),
    ("   ", "must not be empty"),
    ("x" * (MAX_MESSAGE + 1), f"at most {MAX_MESSAGE} characters"),
    ("bell\x07", "control character U+0007"),
    ("two\nlines", "control character U+000A"),
    ("escape \x1b[31mred", "control character U+001B"),
    ("line\u2028separator", "control character U+2028"),
    ("bidi \u202e override", "control character U+202E"),
])
def test_a_bad_message_is_refused(message, problem):
    with pytest.raises(UsageError, match="--message=") as caught:
        check_message(message)
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_a_good_message_is_taken():
    assert check_message("Back at 10:00 (UTC) — «soon»") == "Back at 10:00 (UTC) — «soon»"


@pytest.fixture
def logging_restored():
    """cli.main sets up the pipeline logger on this test's stderr (closed after it): put it back as
    it was, so later tests' caplog still sees it."""
    import logging

    logger = logging.getLogger("pipeline")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


@pytest.mark.parametrize("argv", [
    ["maintenance", "on", "--message", "a\x07b"],
    ["maintenance", "on", "--message", "x" * 301],
    ["maintenance", "off", "--message", "done"],
    ["maintenance", "sideways"],
])
def test_bad_input_exits_2_in_one_line_before_anything_is_reached(argv, capsys, logging_restored):
    # No settings at all: had it connected to anything, it would fail otherwise (exit 3).
    assert cli.main(argv, {}, Path("/nonexistent"), io.StringIO()) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("data,problem", [
    (b"\xff\xfe<p>", "not UTF-8 text"),
    (b"  \n", "the file is empty"),
    (b"<p>\x00</p>", "control character U+0000"),
    (b"<p>" + b"x" * 4000 + b"</p>", "at most 3500"),
])
def test_a_bad_page_file_is_refused(data, problem):
    with pytest.raises(SettingsError) as caught:
        check_page("MAINTENANCE_PAGE", data)
    assert problem in str(caught.value)


def test_a_page_file_is_taken_with_dollars_as_entities(tmp_path):
    world = World()
    page = tmp_path / "down.html"
    page.write_text("<html><body>Costs $5\n</body></html>\n")
    from dataclasses import replace
    settings = replace(world.settings, maintenance_page=Path("down.html"), maintenance_retry_after=7)
    flag = flows.flag_for(settings, tmp_path, None)
    assert flag == Maintenance("<html><body>Costs &#36;5\n</body></html>\n", 7)
    # --message wins over the file.
    assert "from the command" in flows.flag_for(settings, tmp_path, "from the command").page
    missing = replace(settings, maintenance_page=Path("gone.html"))
    with pytest.raises(SettingsError, match="MAINTENANCE_PAGE=gone.html: cannot read it"):
        flows.flag_for(missing, tmp_path, None)


def test_the_admin_answer_is_read_or_refused():
    assert parse_admin_answer("off\n") is None
    assert parse_admin_answer("on 60\n<p>x</p>\n") == Maintenance("<p>x</p>\n", 60)
    for bad in ("", "on\n", "on 60\n", "maybe\n", "not found\n"):
        with pytest.raises(ValueError):
            parse_admin_answer(bad)


# -- the flow, on the fakes -------------------------------------------------------------------------

def history(world: World) -> list:
    return [(e.action, e.result, e.who) for e in History(world.host, str(world.settings.history_path())).entries()]


def test_on_and_off_go_through_the_switch_with_the_lock_and_the_history():
    world = World()
    assert world.step("deploy v1") == (0, "")
    flows.turn_on(world.context(), "back soon")
    assert world.switch.flag is not None and "back soon" in world.switch.flag.page
    assert world.switch.flag.retry_after == world.settings.maintenance_retry_after
    # A deploy during maintenance: the switch keeps it (the real ones carry the flag over).
    assert world.step("deploy v2") == (0, "")
    assert world.switch.flag is not None and world.serving() == ("v2", "green")
    flows.turn_off(world.context())
    assert world.switch.flag is None
    flows.turn_off(world.context())   # already off: nothing to change, still recorded
    assert [h for h in history(world) if h[0].startswith("maintenance")] == [
        ("maintenance on", "ok", "unit"), ("maintenance off", "ok", "unit"), ("maintenance off", "ok", "unit")]
    assert world.host.read_text(str(world.settings.lock_path())) is None, "the lock was released"


def test_on_with_nothing_deployed_fails_in_preflight_and_is_recorded():
    world = World()
    with pytest.raises(Exception) as caught:
        flows.turn_on(world.context(), None)
    assert getattr(caught.value, "exit_code", None) == 3, caught.value
    assert world.switch.flag is None
    assert history(world) == [("maintenance on", "failed", "unit")]


# -- live mode's switch, on the fake admin ---------------------------------------------------------

def live_switch(admin):
    from dataclasses import replace

    from pipeline.adapters.live_switch import LiveSwitch

    from .fakes import INCLUDE, FakeHost

    host = FakeHost()
    host.files[str(INCLUDE)] = f"set $service_url {BLUE.url};\n"
    world = World()
    return LiveSwitch(host, replace(world.settings, switch_mode="live").switch, world.settings.network_timeout,
                      admin)


def test_live_on_writes_the_include_then_the_admin_and_reads_it_back():
    from pipeline.core.switch import LIVE

    from .fakes import FakeAdmin

    admin = FakeAdmin({LIVE: (BLUE,)})
    switch = live_switch(admin)
    flag = Maintenance(page_for("back soon"), 60)
    switch.set_maintenance(flag)
    assert admin.flag == flag and switch.maintenance() == flag
    assert parse_flag(switch.includes.read(LIVE)) == flag, "the include carries it for a restart"
    assert parse_include(switch.includes.read(LIVE)) == (BLUE,)
    assert admin.calls == [("maintenance", ""), ("set_maintenance", "on"), ("maintenance", ""), ("maintenance", "")]
    switch.set_maintenance(None)
    assert admin.flag is None and parse_flag(switch.includes.read(LIVE)) is None


@pytest.mark.parametrize("failure,lands", [("refused", False), ("lost answer", True)])
def test_live_on_that_fails_puts_the_include_and_nginx_back(failure, lands):
    from pipeline.core.errors import AdminRefused, AdminUnavailable, LiveSwitchFailed
    from pipeline.core.switch import LIVE

    from .fakes import FakeAdmin

    admin = FakeAdmin({LIVE: (BLUE,)})
    switch = live_switch(admin)
    before = switch.includes.read(LIVE)
    error = AdminRefused(admin.url, "PUT answered 500") if failure == "refused" else \
        AdminUnavailable(admin.url, "timed out")
    admin.script = [("maintenance", None), ("set_maintenance", error, *(["lands"] if lands else []))]
    with pytest.raises(LiveSwitchFailed, match="put maintenance mode back off"):
        switch.set_maintenance(Maintenance(page_for("back soon"), 60))
    assert admin.flag is None, "nginx is off again"
    assert switch.includes.read(LIVE) == before


def test_on_waits_for_no_one_while_another_run_holds_the_lock():
    import os
    import socket

    from pipeline.core.errors import LockHeld
    from pipeline.flows.lock import DeployLock, LockInfo

    world = World()
    assert world.step("deploy v1") == (0, "")
    other = DeployLock(world.host, str(world.settings.lock_path()))
    other.acquire(LockInfo("jenkins", socket.gethostname(), os.getpid(), "deploy", "v2", "2026-01-01T00:00:00Z"))
    with pytest.raises(LockHeld, match="jenkins .* is running deploy of v2"):
        flows.turn_on(world.context(), "back soon")
    assert world.switch.flag is None, "nothing changed"
    other.release()
    flows.turn_on(world.context(), "back soon")
    assert world.switch.flag is not None


def test_status_says_since_when_by_whom_and_why():
    from pipeline.flows import deploy

    world = World()
    assert world.step("deploy v1") == (0, "")
    assert deploy.status(world.context(), probe=False)["maintenance"] == {"on": False}
    flows.turn_on(world.context(), "moving the database")
    report = deploy.status(world.context(), probe=False)
    state = report["maintenance"]
    assert (state["on"], state["by"], state["message"]) == (True, "unit", "moving the database")
    assert state["retry_after"] == world.settings.maintenance_retry_after and state["since"]
    text = "".join(cli._status_lines(report))
    assert f"maintenance: ON: nginx answers 503 (Retry-After {state['retry_after']}) on the public port, since " \
           f"{state['since']} by unit: moving the database\n" in text
