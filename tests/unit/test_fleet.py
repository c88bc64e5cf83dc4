"""Several nginx hosts switched as one (issue 17): FleetSwitch over one strict fake switch per
host, FleetProber over one fake prober per host, and a deploy and a switch-back through the flows
with two hosts. The real hosts (nginx + sshd in namespaces of their own): tests/integration/
test_several_hosts.py."""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import List, Optional, Tuple

import pytest

from pipeline.adapters.live_switch import LiveSwitch
from pipeline.core.decide import Address
from pipeline.core.errors import (EXIT_DEPLOY_FAILED, EXIT_PREFLIGHT, AdminUnavailable, DeployFailed, HostsDisagree,
                                  IncludeNotLoaded, LiveSwitchFailed, PreflightError, RemoteCommandFailed,
                                  SwitchIncomplete)
from pipeline.core.fleet import FleetAnswers, FleetProber, FleetSwitch, on_each
from pipeline.core.gate import NotHealthyYet, probe
from pipeline.core.host import CommandResult
from pipeline.core.switch import LIVE

from .fakes import INCLUDE, FakeAdmin, FakeAnswers, FakeEngine, FakeClock, FakeHost, FakeProber, FakeSwitch, NginxAnswers, World
from .test_outside_failures import BLUE_TEXT, GREEN_TEXT, reloaded, scripted_host
from .test_outside_failures import INCLUDE as RELOAD_INCLUDE
from .test_outside_failures import switch as reload_switch
from .fakes import no_network  # noqa: F401  (autouse: nothing here reaches the network)

BLUE = (Address("172.20.0.2", 8080),)
GREEN = (Address("172.20.0.3", 8080),)


def fleet(*names: str, calls: Optional[List[Tuple[object, ...]]] = None) -> Tuple[FleetSwitch, List[FakeSwitch]]:
    """Hosts serving blue, their switches logging to one `calls` list."""
    switches = [FakeSwitch(calls) for _ in names]
    for switch in switches:
        switch.routes[LIVE] = BLUE
    return FleetSwitch(list(zip(names, switches)), FakeClock()), switches


def test_every_host_prepares_before_any_host_commits():
    calls: List[Tuple[object, ...]] = []
    switch, hosts = fleet("a", "b", "c", calls=calls)
    switch.route_to(LIVE, GREEN)
    assert [h.routes[LIVE] for h in hosts] == [GREEN] * 3
    kinds = [c[0] for c in calls]
    assert sorted(kinds[:3]) == ["prepare"] * 3 and sorted(kinds[3:]) == ["route_to"] * 3
    assert switch.skew == 0.0   # the fake clock does not move: every commit completes at the same time


def test_the_hosts_commit_at_the_same_time_not_one_after_another():
    # Each host's commit waits, inside the commit, until every host is inside its commit: one
    # after another, the first would wait for the second forever (the barrier breaks instead).
    switch, hosts = fleet("a", "b")
    inside = threading.Barrier(2, timeout=5)
    for host in hosts:
        host.during_commit = lambda: inside.wait() and None
    switch.route_to(LIVE, GREEN)
    assert [h.routes[LIVE] for h in hosts] == [GREEN, GREEN]


def test_a_failed_prepare_on_one_host_switches_no_host():
    calls: List[Tuple[object, ...]] = []
    switch, (a, b) = fleet("a", "b", calls=calls)
    b.fails["prepare"] = RemoteCommandFailed("nginx -t", 1, ["emerg: unknown directive"],
                                             "nginx rejected the new live include; put the old one back")
    with pytest.raises(DeployFailed) as caught:
        switch.route_to(LIVE, GREEN)
    assert not isinstance(caught.value, SwitchIncomplete)
    assert caught.value.exit_code == EXIT_DEPLOY_FAILED
    message = str(caught.value)
    assert "failed on nginx host b: nginx rejected the new live include" in message
    assert "no nginx host was switched" in message and "a serves 172.20.0.2:8080" in message
    assert caught.value.detail() == ["emerg: unknown directive"]
    assert a.routes[LIVE] == BLUE and b.routes[LIVE] == BLUE
    assert not [c for c in calls if c[0] == "route_to"]          # nothing was committed anywhere
    assert ("undo", LIVE, BLUE) in calls                          # a's prepared include put back


def test_a_failed_commit_on_one_host_switches_every_other_host_back():
    calls: List[Tuple[object, ...]] = []
    switch, (a, b, c) = fleet("a", "b", "c", calls=calls)
    b.fails["commit"] = DeployFailed("nginx reload failed; put the old live include back: `nginx -s reload` "
                                     "exited with 1")
    with pytest.raises(DeployFailed) as caught:
        switch.route_to(LIVE, GREEN)
    assert not isinstance(caught.value, SwitchIncomplete)
    message = str(caught.value)
    assert message.startswith("switching the live route to 172.20.0.3:8080 failed on nginx host b: nginx reload "
                              "failed")
    assert "switched a, c back: a serves 172.20.0.2:8080, b serves 172.20.0.2:8080, c serves 172.20.0.2:8080" \
        in message
    assert [h.routes[LIVE] for h in (a, b, c)] == [BLUE] * 3
    assert sorted(x for x in calls if x[0] == "undo") == [("undo", LIVE, BLUE)] * 2


def test_a_put_back_that_fails_is_switch_incomplete_naming_that_host():
    switch, (a, b) = fleet("a", "b")
    b.fails["commit"] = DeployFailed("nginx reload failed")
    a.fails["undo"] = SwitchIncomplete("setting nginx back to 172.20.0.2:8080 failed (timed out)")
    with pytest.raises(SwitchIncomplete) as caught:
        switch.route_to(LIVE, GREEN)
    message = str(caught.value)
    assert "failed on nginx host b: nginx reload failed" in message
    assert ("a may serve 172.20.0.3:8080 or 172.20.0.2:8080 (setting nginx back to 172.20.0.2:8080 failed "
            "(timed out)), b serves 172.20.0.2:8080") in message
    assert "the new release is left running" in message


def test_a_host_whose_own_put_back_failed_makes_it_switch_incomplete():
    switch, (a, b) = fleet("a", "b")
    b.fails["commit"] = SwitchIncomplete("putting the old live include back failed.",
                                         todo=" On that host, run `nginx -t` and `nginx -s reload`")
    with pytest.raises(SwitchIncomplete) as caught:
        switch.route_to(LIVE, GREEN)
    assert a.routes[LIVE] == BLUE
    message = str(caught.value)
    # Not one host's advice (reloading b alone leaves it on green, a on blue), but the fleet's.
    assert "On that host, run" not in message, message
    assert "Runs refuse while the hosts disagree: once every host answers, point b at what the others serve" \
        in message, message
    assert "b may serve 172.20.0.3:8080 or 172.20.0.2:8080" in message
    assert message.count("putting the old live include back failed") == 1, message   # said once, not twice


def test_a_bug_in_one_hosts_commit_is_raised_as_a_bug_once_every_host_is_put_back():
    calls: List[Tuple[object, ...]] = []
    switch, (a, b) = fleet("a", "b", calls=calls)
    b.fails["commit"] = KeyError("a bug")
    with pytest.raises(KeyError):
        switch.route_to(LIVE, GREEN)
    assert a.routes[LIVE] == BLUE and b.routes[LIVE] == BLUE
    assert sorted(x for x in calls if x[0] == "undo") == [("undo", LIVE, BLUE)] * 2   # b's include too


def test_maintenance_mode_goes_on_every_host_or_none():
    from pipeline.core.maintenance import Maintenance

    flag = Maintenance("<p>back soon</p>", 60)
    switch, (a, b) = fleet("a", "b")
    switch.set_maintenance(flag)
    assert (a.flag, b.flag) == (flag, flag) and switch.maintenance() == flag
    b.set_maintenance = lambda f: (_ for _ in ()).throw(DeployFailed("nginx -t failed"))
    with pytest.raises(DeployFailed, match="maintenance mode off failed on nginx host b: nginx -t failed; every "
                                           "other host set back as it was"):
        switch.set_maintenance(None)
    assert a.flag == flag
    a.flag = None
    with pytest.raises(HostsDisagree, match=r"a off; b on \(503, Retry-After 60\)"):
        switch.maintenance()


def test_hosts_that_agree_answer_as_one():
    switch, _ = fleet("a", "b")
    assert switch.current(LIVE) == BLUE


def test_hosts_that_disagree_are_exit_3_naming_each():
    switch, (_, b) = fleet("a", "b")
    b.routes[LIVE] = GREEN
    with pytest.raises(HostsDisagree) as caught:
        switch.current(LIVE)
    assert caught.value.exit_code == EXIT_PREFLIGHT
    assert "a serves 172.20.0.2:8080; b serves 172.20.0.3:8080" in str(caught.value)


def test_a_host_that_cannot_say_is_named():
    switch, (_, b) = fleet("a", "b")
    b.current = lambda route: (_ for _ in ()).throw(AdminUnavailable("http://127.0.0.1:8091", "timed out"))
    with pytest.raises(AdminUnavailable) as caught:
        switch.current(LIVE)
    assert str(caught.value) == "nginx host b: nginx admin http://127.0.0.1:8091: timed out"


def test_an_include_not_loaded_on_one_host_is_settled_on_every_host():
    # Reload mode, a run killed between the include and the reload on host b: the flow settles it
    # (decide.settle_before_touching) by switching every host to what the include names.
    switch, (_, b) = fleet("a", "b")
    b.loaded[LIVE] = False
    with pytest.raises(IncludeNotLoaded) as caught:
        switch.current(LIVE)
    assert caught.value.address == BLUE and str(caught.value).startswith("nginx host b: ")


def test_preflight_names_the_host_that_fails_it():
    switch, (_, b) = fleet("a", "b")
    b.check = lambda: (_ for _ in ()).throw(PreflightError("NGINX_PID_FILE=/run/nginx.pid: no such file"))
    with pytest.raises(PreflightError) as caught:
        switch.check()
    assert str(caught.value) == "nginx host b: NGINX_PID_FILE=/run/nginx.pid: no such file"


def test_settle_time_is_the_longest_and_describe_is_per_host():
    switch, (a, b) = fleet("a", "b")
    b.settle_seconds = 0.3
    switch = FleetSwitch([("a", a), ("b", b)], FakeClock())
    assert switch.settle_seconds == 0.3
    assert switch.describe() == {"a live": "172.20.0.2:8080", "a preview": None,
                                 "b live": "172.20.0.2:8080", "b preview": None}


def test_the_answers_are_summed_over_every_host():
    reader = FleetAnswers(["a", "b"], [FakeAnswers({200: 7, 502: 1}), FakeAnswers({200: 3})])
    assert reader.read().statuses == {200: 10, 502: 1}
    failing = FleetAnswers(["a", "b"], [FakeAnswers({200: 1}),
                                        FakeAnswers(AdminUnavailable("http://127.0.0.1:8091", "timed out"))])
    with pytest.raises(AdminUnavailable, match="^nginx host b: "):
        failing.read()


URL = "http://172.20.0.3:8080/health"


def test_healthy_only_when_every_host_gets_a_200():
    both = FleetProber([FakeProber(answers={URL: [200]}, where="a"), FakeProber(answers={URL: [200]}, where="b")])
    assert probe(both, URL, 1.0) == "HTTP 200 'UP'"
    one = FleetProber([FakeProber(answers={URL: [200]}, where="a"), FakeProber(answers={URL: [503]}, where="b")])
    with pytest.raises(NotHealthyYet) as caught:
        probe(one, URL, 1.0)
    assert caught.value.last == "HTTP 503 'DOWN' (from b)"


def test_status_says_how_each_host_reaches_an_address():
    both = FleetProber([FakeProber(where="a"), FakeProber(where="b")])
    assert both.route_to("172.20.0.3") == "directly on br-fake from a; directly on br-fake from b"


def test_on_each_keeps_the_order_and_every_failure():
    outcomes = on_each([1, 2, 3], lambda n: 10 // (n - 2))
    assert outcomes[0] == (-10, None) and outcomes[2] == (10, None)
    assert isinstance(outcomes[1][1], ZeroDivisionError)


# -- through the flows: a deploy and a switch-back move every host ---------------------------------

def two_hosts(world: World) -> FakeSwitch:
    """The World's switch as host a, a second host b, both handed to the flows as one."""
    second = FakeSwitch.configured(world.settings)
    second.reader = NginxAnswers(world)
    plain = world.context

    def context(version: Optional[str] = None):   # type: ignore[no-untyped-def]
        ctx = plain(version)
        return replace(ctx, switch=FleetSwitch([("a", world.switch), ("b", second)], world.clock))
    world.context = context   # type: ignore[method-assign]
    return second


def test_a_deploy_moves_every_host():
    world = World()
    second = two_hosts(world)
    assert world.step("deploy v1") == (0, "")
    assert world.step("deploy v2") == (0, "")
    assert world.serving() == ("v2", "green")
    assert second.routes[LIVE] == world.switch.routes[LIVE]


def test_verification_switches_every_host_back():
    world = World(verify_seconds=5)
    second = two_hosts(world)
    assert world.step("deploy v1") == (0, "")
    code, message = world.step("deploy v2 !5xx")
    assert code == EXIT_DEPLOY_FAILED and message.startswith("switched back to blue")
    assert world.serving() == ("v1", "blue")
    assert second.routes[LIVE] == world.switch.routes[LIVE]
    assert [m[1] for m in second.moves if m[0] == LIVE] == [BLUE, GREEN, BLUE]


def test_a_failed_switch_on_one_host_leaves_the_old_release_serving_everywhere():
    world = World()
    second = two_hosts(world)
    assert world.step("deploy v1") == (0, "")
    second.fails["commit"] = LiveSwitchFailed("nginx did not take 172.20.0.3:8080")
    code, message = world.step("deploy v2")
    assert code == EXIT_DEPLOY_FAILED and "failed on nginx host b" in message
    assert world.serving() == ("v1", "blue") and second.routes[LIVE] == world.switch.routes[LIVE]
    assert "green" not in world.engine.boxes   # the new release removed: no host serves it


# -- the two phases of each host's real switch --------------------------------------------------------

def test_reload_prepare_writes_and_tests_the_include_and_reloads_nothing():
    host = scripted_host([("read", None), ("write", None), ("run", CommandResult(["nginx", "-t"], 0, "ok"))])
    prepared = reload_switch(host).prepare(LIVE, GREEN)
    host.done()   # no reload: nginx still serves blue
    assert host.files[RELOAD_INCLUDE] == GREEN_TEXT and prepared.before == BLUE
    host.script = [("run", reloaded("applied"))]
    prepared.commit()
    host.done()
    host.script = [("write", None), ("run", reloaded("applied"))]   # undone after the commit: reloaded back
    prepared.undo()
    host.done()
    assert host.files[RELOAD_INCLUDE] == BLUE_TEXT


def test_reload_prepare_rejected_by_nginx_t_puts_the_include_back():
    host = scripted_host([("read", None), ("write", None),
                          ("run", CommandResult(["nginx", "-t"], 1, "nginx: [emerg] unexpected end of file")),
                          ("write", None)])
    with pytest.raises(RemoteCommandFailed, match="nginx rejected the new live include"):
        reload_switch(host).prepare(LIVE, GREEN)
    host.done()
    assert host.files[RELOAD_INCLUDE] == BLUE_TEXT


def test_reload_undo_before_the_commit_only_writes_the_include_back():
    host = scripted_host([("read", None), ("write", None), ("run", CommandResult(["nginx", "-t"], 0, "ok"))])
    prepared = reload_switch(host).prepare(LIVE, GREEN)
    host.script = [("write", None)]
    prepared.undo()
    host.done()
    assert host.files[RELOAD_INCLUDE] == BLUE_TEXT


def test_reload_undo_that_fails_is_switch_incomplete_naming_the_host():
    host = scripted_host([("read", None), ("write", None), ("run", CommandResult(["nginx", "-t"], 0, "ok"))])
    prepared = reload_switch(host).prepare(LIVE, GREEN)
    host.script = [("run", reloaded("applied")), ("write", None), ("run", reloaded("unchanged", 1))]
    prepared.commit()
    with pytest.raises(SwitchIncomplete, match=r"nginx host \(root@n1:22\)"):
        prepared.undo()


def live_switch() -> Tuple[LiveSwitch, FakeAdmin, FakeHost]:
    host, admin = FakeHost(), FakeAdmin({LIVE: BLUE})
    host.files[str(INCLUDE)] = BLUE_TEXT
    settings = World().settings
    return LiveSwitch(host, settings.switch, settings.network_timeout, admin), admin, host   # type: ignore[arg-type]


def test_live_prepare_asks_the_admin_and_puts_nothing():
    switch, admin, host = live_switch()
    prepared = switch.prepare(LIVE, GREEN)
    assert admin.calls == [("get", LIVE)] and admin.routes[LIVE] == BLUE
    assert host.files[str(INCLUDE)] == GREEN_TEXT and prepared.before == BLUE
    prepared.commit()
    assert admin.routes[LIVE] == GREEN
    prepared.undo()
    assert admin.routes[LIVE] == BLUE and host.files[str(INCLUDE)] == BLUE_TEXT


def test_live_prepare_with_the_admin_down_changes_nothing():
    switch, admin, host = live_switch()
    admin.down = AdminUnavailable(admin.url, "timed out")
    with pytest.raises(LiveSwitchFailed, match="nothing was changed"):
        switch.prepare(LIVE, GREEN)
    assert host.files[str(INCLUDE)] == BLUE_TEXT


def test_live_undo_whose_put_fails_is_switch_incomplete():
    switch, admin, _ = live_switch()
    prepared = switch.prepare(LIVE, GREEN)
    prepared.commit()
    admin.down = AdminUnavailable(admin.url, "timed out")
    with pytest.raises(SwitchIncomplete, match="setting nginx back to 172.20.0.2:8080 failed"):
        prepared.undo()


def test_compose_hands_one_host_its_own_switch_and_prober_and_several_the_fleet(tmp_path):
    from pipeline import compose
    from pipeline.core.settings import Settings

    one, two = FakeSwitch(), FakeSwitch()
    a, b = FakeHost(description="root@a:22"), FakeHost(description="root@b:22")
    assert compose.fleet_switch([a], [one]) is one
    fleet_switch = compose.fleet_switch([a, b], [one, two])
    assert isinstance(fleet_switch, FleetSwitch) and fleet_switch.names == ["root@a:22", "root@b:22"]
    settings = Settings.from_env({}, tmp_path)
    target = FakeEngine(settings)
    assert not isinstance(compose.fleet_prober([a], settings, target), FleetProber)
    assert isinstance(compose.fleet_prober([a, b], settings, target), FleetProber)
