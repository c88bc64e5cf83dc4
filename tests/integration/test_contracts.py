"""Contract tests: the same cases against each strict fake of tests/unit/fakes.py and the real
adapter it stands for, so a fake cannot drift from what the flows' unit tests take it to be.

- Target: FakeEngine and the one docker engine (adapters.engine.Engine, on this machine's dockerd,
  its containers on the test's own deploy network).
- TrafficSwitch: FakeSwitch and ReloadSwitch on an nginx of the test's own (local files and
  commands, as compose builds them).
- nginx's live admin (what LiveSwitch speaks; the unit tests run the real LiveSwitch over it):
  FakeAdmin and live_switch.NginxAdmin on an nginx of the test's own with the Lua config.

The real parts are built as the program builds them (compose.make_target, compose.make_switch),
so these tests follow a change of their constructors. The fake is configured to start where the
real part starts (a fresh nginx's include names a placeholder nginx was not seen loading).
(tests/integration/test_nginx_host.py does the same for the nginx host, tests/unit/test_clock.py
for the clock.)
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import pytest

from pipeline import compose
from pipeline.core.decide import parse_include
from pipeline.core.errors import AdminUnavailable, EngineFailed, IncludeNotLoaded
from pipeline.core.route import Address
from pipeline.core.settings import MAX_ROUTE_ADDRESSES, Settings
from pipeline.core.switch import LIVE, PREVIEW, TrafficSwitch
from pipeline.core.target import Endpoint, Target
from teststack import switchmodes
from teststack.realstack import REPO

from ..unit.fakes import FakeAdmin, FakeEngine, FakeSwitch

pytestmark = pytest.mark.integration

KINDS = ["fake", "real"]


# -- the target ------------------------------------------------------------------------------------

@pytest.fixture(params=KINDS)
def target(request, world, settings_env, tmp_path) -> Iterator[Target]:
    settings = Settings.from_env(settings_env, tmp_path)
    if request.param == "fake":
        fake = FakeEngine(settings)
        fake.holding = True   # as the real engine: a running container holds its color's address
        yield fake
    else:
        yield compose.make_target(settings, dict(os.environ))   # world's teardown removes what it made


@pytest.fixture
def settings(settings_env, tmp_path) -> Settings:
    return Settings.from_env(settings_env, tmp_path)


@pytest.fixture
def release(target, settings) -> str:
    """The network up and the v1 release built: the image a color runs."""
    assert target.network_exists() is False
    assert target.ensure_network() is True and target.network_exists() is True
    assert target.ensure_network() is False   # there already: nothing created
    image = settings.image_ref("v1")
    assert target.build_image(REPO, image, "v1").startswith("sha256:")   # an image ID
    return image


def test_a_color_that_runs_is_a_container_at_its_fixed_address(target, settings, release):
    assert target.container("blue") is None and target.containers() == {}
    assert target.holds_address("blue") is False
    target.run("blue", release, "v1")
    fact = target.container("blue")
    assert fact is not None
    assert (fact.color, fact.name, fact.status, fact.version, fact.image, fact.ip, fact.restart_count) == \
        ("blue", settings.container_name("blue"), "running", "v1", release, settings.ip_of("blue"), 0)
    assert target.containers() == {"blue": fact}
    assert target.holds_address("blue") is True and target.holds_address("green") is False
    blue = (Address(settings.ip_of("blue"), settings.app_port),)
    assert target.addresses("blue") == blue
    assert target.color_at(blue) == "blue" and target.color_at(target.addresses("green")) == "green"
    assert target.color_at(None) is None and target.color_at((Address("198.51.100.7", 8080),)) is None
    assert target.placement("blue") == settings.ip_of("blue")
    watch = target.watch("blue")
    assert watch.problem() is None and watch.endpoints() == [Endpoint(blue[0], "")]


def test_a_stopped_color_is_kept_and_starts_again(target, settings, release):
    target.run("blue", release, "v1")
    watch = target.watch("blue")
    target.stop("blue")
    fact = target.container("blue")
    assert fact is not None and (fact.status, fact.version) == ("exited", "v1")
    assert target.holds_address("blue") is False
    assert watch.problem() == f"container {settings.container_name('blue')} stopped (exited, restarted 0x)"
    target.start("blue")
    assert target.container("blue").status == "running" and target.holds_address("blue") is True
    target.run("blue", release, "v2")   # a new release in the same color replaces the container
    assert target.container("blue").version == "v2" and list(target.containers()) == ["blue"]


def test_release_images_are_listed_by_tag_and_removed(target, settings, release):
    v2 = settings.image_ref("v2")
    assert target.build_image(REPO, v2, "v2").startswith("sha256:")
    images = target.release_images()
    assert set(images) == {release, v2} and all(isinstance(t, float) for t in images.values())
    target.remove_image(release)
    assert set(target.release_images()) == {v2}
    target.prune_dangling()


def test_a_discarded_color_is_gone_and_its_watch_says_so(target, settings, release):
    target.run("green", release, "v1")
    watch = target.watch("green")
    assert target.discarding("green") == f"removing {settings.container_name('green')}"
    target.discard("green", graceful=True)
    assert target.container("green") is None and target.containers() == {}
    assert watch.problem() == f"container {settings.container_name('green')} was removed"
    target.remove("green")   # gone already: nothing to do, no error
    target.stop("green")
    with pytest.raises(EngineFailed) as caught:   # a color that is gone cannot start again
        target.start("green")
    assert caught.value.action == f"starting {settings.container_name('green')}"


# -- the traffic switch ----------------------------------------------------------------------------

@contextmanager
def open_switch(kind: str, nginx, settings_env, tmp_path, preview: bool = True) -> Iterator[TrafficSwitch]:
    env = {**settings_env, "NGINX_INCLUDE_FORM": nginx.form}
    if preview:
        env["NGINX_PREVIEW_INCLUDE"] = str(nginx.preview_include)
    settings = Settings.from_env(env, tmp_path)
    if kind == "fake":
        fake = FakeSwitch.configured(settings)
        # Where a fresh nginx of the test's starts: its includes name a placeholder, and nginx
        # was never seen loading the live one.
        fake.routes = {LIVE: parse_include(nginx.include.read_text()),
                       PREVIEW: parse_include(nginx.preview_include.read_text()) if preview else None}
        fake.loaded[LIVE] = False
        yield fake
        return
    with compose.nginx_hosts(settings) as hosts:
        yield compose.make_switch(hosts[0], settings)


@pytest.fixture(params=KINDS)
def switch(request, nginx, settings_env, tmp_path) -> Iterator[TrafficSwitch]:
    with open_switch(request.param, nginx, settings_env, tmp_path) as opened:
        yield opened


def addresses(world, *colors: str):
    return tuple(Address(getattr(world.network, f"{color}_ip"), 8080) for color in colors)


PLACEHOLDER = (Address("127.0.0.1", 9),)


def test_a_fresh_include_nginx_was_not_seen_loading(switch):
    with pytest.raises(IncludeNotLoaded) as caught:
        switch.current(LIVE)
    assert caught.value.address == PLACEHOLDER
    assert switch.current(PREVIEW) == PLACEHOLDER   # the preview route is not confirmed by a reload
    assert switch.describe() == {LIVE: "127.0.0.1:9", PREVIEW: "127.0.0.1:9"}


def test_route_to_is_what_current_and_describe_read_back(switch, world):
    blue, green = addresses(world, "blue"), addresses(world, "green")
    switch.route_to(LIVE, blue)
    assert switch.current(LIVE) == blue
    switch.route_to(PREVIEW, green)
    assert switch.current(PREVIEW) == green and switch.current(LIVE) == blue
    switch.route_to(LIVE, green)
    assert switch.current(LIVE) == green
    assert switch.describe() == {LIVE: str(green[0]), PREVIEW: str(green[0])}
    assert switch.mode == "reload"


@pytest.mark.parametrize("nginx", ["upstream"], indirect=True)
def test_a_route_over_several_addresses_reads_back_whole(switch, world):
    both = addresses(world, "blue", "green")
    switch.route_to(LIVE, both)
    assert switch.current(LIVE) == both
    assert switch.describe()[LIVE] == str(both[0])   # status names the first
    switch.route_to(LIVE, both[1:])
    assert switch.current(LIVE) == both[1:]


def test_a_route_the_include_cannot_say_changes_nothing(switch, world):
    blue = addresses(world, "blue")
    switch.route_to(LIVE, blue)
    both = addresses(world, "blue", "green")
    with pytest.raises(ValueError, match="the set form takes one address, not 2"):
        switch.route_to(LIVE, both)           # NGINX_INCLUDE_FORM=set: one address
    with pytest.raises(ValueError, match="the set form takes one address, not 2"):
        switch.route_to(PREVIEW, both)        # the preview include is always one line
    with pytest.raises(ValueError, match="no address to route to"):
        switch.route_to(LIVE, ())
    assert switch.current(LIVE) == blue and switch.current(PREVIEW) == PLACEHOLDER


@pytest.mark.parametrize("kind", KINDS)
def test_without_a_preview_include_there_is_no_preview_route(kind, nginx, settings_env, tmp_path, world):
    with open_switch(kind, nginx, settings_env, tmp_path, preview=False) as switch:
        switch.route_to(LIVE, addresses(world, "green"))
        assert switch.describe() == {LIVE: str(addresses(world, "green")[0])}
        assert switch.current(PREVIEW) is None
        with pytest.raises(AssertionError, match="no include configured for the preview route"):
            switch.route_to(PREVIEW, addresses(world, "blue"))   # a flow never does: a bug


# -- nginx's live admin ----------------------------------------------------------------------------

@pytest.fixture(params=KINDS)
def admin(request, world, stack, tmp_path):
    if request.param == "fake":
        yield FakeAdmin()
        return
    nginx = switchmodes.make_nginx("live", tmp_path / "nginx", world.network)
    nginx.start()
    try:
        settings = Settings.from_env(switchmodes.deploy_env(world.app, world.network, nginx, stack, tmp_path), tmp_path)
        with compose.nginx_hosts(settings) as hosts:
            yield compose.make_switch(hosts[0], settings).admin   # the live switch's own admin
    finally:
        nginx.stop()


def test_the_admin_reads_back_what_was_put(admin, world):
    assert admin.get(LIVE) is None and admin.get(PREVIEW) is None   # a fresh nginx: no route yet
    blue, green = addresses(world, "blue"), addresses(world, "green")
    admin.put(LIVE, blue)
    admin.put(PREVIEW, green)
    assert admin.get(LIVE) == blue and admin.get(PREVIEW) == green
    both = addresses(world, "green", "blue")
    admin.put(LIVE, both)
    assert admin.get(LIVE) == both   # in the order given
    assert {LIVE, PREVIEW} <= set(admin.files())


def test_the_admin_refuses_a_route_nginx_cannot_take_before_sending_it(admin, world):
    blue = addresses(world, "blue")
    admin.put(LIVE, blue)
    subnet = world.network.subnet.rsplit(".", 1)[0]
    too_many = tuple(Address(f"{subnet}.{i}", 8080) for i in range(2, MAX_ROUTE_ADDRESSES + 3))
    for route in (too_many, blue + blue, ()):
        with pytest.raises(AdminUnavailable, match=f"cannot set the {LIVE} route to"):
            admin.put(LIVE, route)
    assert admin.get(LIVE) == blue
