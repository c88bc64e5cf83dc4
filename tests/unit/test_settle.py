"""Issue 15, "killed between the include and the reload": in reload mode the include is what nginx
serves only once a reload was seen to load it. The decision (decide.may_serve,
settle_before_touching, choose_colors) as tables; the flows over the strict fakes: a run that
finds the include not loaded loads it first, or stops with exit 3, before it touches a container
nginx may serve."""
from __future__ import annotations

import pytest

from pipeline.flows import deploy as flows
from pipeline.core.decide import Address, choose_colors, may_serve, settle_before_touching
from pipeline.core.errors import EXIT_PREFLIGHT, RemoteCommandFailed
from pipeline.core.switch import LIVE

from .fakes import World

BOTH = frozenset({"blue", "green"})
BLUE = frozenset({"blue"})
GREEN = frozenset({"green"})
NONE = frozenset()


@pytest.mark.parametrize("include_color,loaded,running,expected", [
    ("green", True, BOTH, GREEN),       # seen loaded: nginx serves what the include names
    ("green", True, BLUE, NONE),        # ... a stopped container serves nothing
    (None, True, BOTH, NONE),           # a placeholder, seen loaded: nothing of ours
    ("green", False, BOTH, BOTH),       # not seen loaded: whatever an older include named
    ("green", False, BLUE, BLUE),
    (None, False, BOTH, BOTH),
    ("blue", False, NONE, NONE),
])
def test_may_serve(include_color, loaded, running, expected):
    assert may_serve(include_color, loaded, running) == expected


@pytest.mark.parametrize("target,include_color,loaded,running,expected", [
    ("blue", "green", True, BOTH, None),        # seen loaded, names green: blue is idle for certain
    # SIGKILL after the include was renamed to green, before the reload: nginx still serves
    # blue, both run. Load the include first (green runs), then blue is idle.
    ("blue", "green", False, BOTH, "reload"),
    ("blue", "green", False, GREEN, None),      # blue is not running: it serves nothing
    # The include names no running color (a placeholder, a foreign address, green gone) and
    # blue runs: loading the include could send blue's traffic nowhere.
    ("green", None, False, BOTH, "refuse"),
    ("blue", "green", False, BLUE, "refuse"),
])
def test_settle_before_touching(target, include_color, loaded, running, expected):
    assert settle_before_touching(target, include_color, loaded, running) == expected


@pytest.mark.parametrize("include_color,blue_alive,running,loaded,live,target,settle", [
    ("green", None, BOTH, True, "green", "blue", None),
    # Today's bug: include green (not loaded), record blue, both running -> live green, target
    # blue, and blue (which nginx serves) was force-removed. Now: settle first.
    ("green", None, BOTH, False, "green", "blue", "reload"),
    ("green", None, GREEN, False, "green", "blue", None),    # blue not running: nothing to settle
    # Killed before the reload, and green died since: blue is treated as live, green is the
    # target (not running): nothing nginx may serve is touched.
    ("green", None, BLUE, False, "blue", "green", None),
    (None, True, BOTH, False, "blue", "green", "refuse"),
    (None, None, NONE, False, None, "blue", None),           # a first deploy: the placeholder
])
def test_choose_colors_never_targets_a_color_nginx_may_serve(include_color, blue_alive, running, loaded, live,
                                                              target, settle):
    choice = choose_colors(include_color, blue_alive, running, loaded)
    assert (choice.live, choice.target, choice.settle) == (live, target, settle)
    if settle:
        assert f"may still serve {target}" in choice.reason


# -- the flows ----------------------------------------------------------------------------------

def killed_between_include_and_reload(world: World) -> None:
    """v1 (blue) then v2 (green) deployed; `deploy v3` started v3 in blue, healthy, renamed the
    include to blue and was SIGKILLed before nginx reloaded: nginx still serves v2 in green."""
    for step in ("deploy v1", "deploy v2"):
        assert world.step(step) == (0, "")
    world.engine.build_image(None, "app:v3", "v3")   # type: ignore[arg-type]
    world.engine.run("blue", "app:v3", "v3")
    world.switch.routes[LIVE] = (Address(world.settings.ip_of("blue"), world.settings.app_port),)
    world.switch.loaded[LIVE] = False
    world.engine.mutations.clear()
    world.switch.moves.clear()


def watch_settle(world: World) -> list:
    """Each route_to, with the engine's mutations made before it."""
    seen = []
    route_to = world.switch.route_to

    def watched(route, address):
        seen.append((route, address, list(world.engine.mutations)))
        route_to(route, address)

    world.switch.route_to = watched   # type: ignore[method-assign]
    return seen


def test_the_next_deploy_loads_the_include_before_it_replaces_what_nginx_may_serve():
    world = World()
    killed_between_include_and_reload(world)
    seen = watch_settle(world)
    assert world.step("deploy v4") == (0, "")
    blue = (Address(world.settings.ip_of("blue"), 8080),)
    green = (Address(world.settings.ip_of("green"), 8080),)
    # First nginx loads the include as it stands (blue, v3), with nothing touched yet ...
    assert seen[0] == (LIVE, blue, [])
    # ... only then is green (which nginx served until that moment) replaced, and made live.
    assert [(r, a) for r, a, _ in seen if r == LIVE] == [(LIVE, blue), (LIVE, green)]
    assert ("run", "green", "v4") in world.engine.mutations
    assert world.serving() == ("v4", "green")
    assert world.switch.loaded[LIVE]


def test_a_target_that_is_not_running_needs_no_settling():
    world = World()
    killed_between_include_and_reload(world)
    world.engine.boxes["blue"]["status"] = "exited"   # v3 died: nginx may serve green only
    seen = watch_settle(world)
    assert world.step("deploy v4") == (0, "")
    assert [a for r, a, _ in seen if r == LIVE] == [(Address(world.settings.ip_of("blue"), 8080),)]
    assert world.serving() == ("v4", "blue")
    # green, which nginx served, was stopped only after the switch to blue (the drain).
    assert world.engine.mutations.index(("run", "blue", "v4")) < world.engine.mutations.index(("stop", "green"))


def test_an_include_naming_no_running_color_is_refused_with_exit_3():
    world = World()
    killed_between_include_and_reload(world)
    world.switch.routes[LIVE] = None    # a placeholder, not loaded; both colors run
    files = {path: text for path, text in world.host.files.items() if "history" not in path}
    code, message = world.step("deploy v4")
    assert code == EXIT_PREFLIGHT
    assert message.startswith("nginx was not seen loading the live include; app-blue runs and nginx may serve "
                              "it, but the include names no running color of ours: ")
    assert message.endswith("then run again")
    assert world.engine.mutations == [] and world.switch.moves == []
    assert {path: text for path, text in world.host.files.items() if "history" not in path} == files


def test_a_settle_that_fails_is_exit_3_and_touches_nothing():
    world = World()
    killed_between_include_and_reload(world)

    def fails(route, address):
        raise RemoteCommandFailed("nginx -s reload", 1, [], "nginx reload failed; put the old live include back")

    world.switch.route_to = fails   # type: ignore[method-assign]
    code, message = world.step("deploy v4")
    assert code == EXIT_PREFLIGHT
    assert message.startswith("nginx was not seen loading the live include, and app-green runs; reloading nginx "
                              "to settle that failed: nginx reload failed; put the old live include back: ")
    assert world.engine.mutations == []
    assert world.engine.boxes["green"] == {"status": "running", "version": "v2", "image": "app:v2"}


def test_status_says_the_include_was_not_loaded_and_changes_nothing():
    world = World()
    killed_between_include_and_reload(world)
    files = dict(world.host.files)
    report = flows.status(world.context())
    assert report["switch_problem"] == "nginx was not seen loading the live include"
    assert world.engine.mutations == [] and world.switch.moves == [] and world.host.files == files
