"""The composition root's order of connecting (issue 15): the docker engine's round trip is made
while the nginx host's connection (started early by cli.py) is still under way, yet when both
fail the nginx host's error is the one reported, as when they were connected one after the other."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from pipeline import compose
from pipeline.core.errors import PreflightError
from pipeline.core.settings import Settings


class Host:
    def __init__(self, events: List[str]) -> None:
        self.events = events

    def close(self) -> None:
        self.events.append("host closed")


class Connecting:
    """cli.py's Connecting: result() gives the host or raises what connecting raised."""

    def __init__(self, events: List[str], error: Exception = None) -> None:
        self.events, self.error = events, error

    def result(self) -> Host:
        self.events.append("host taken")
        if self.error is not None:
            raise self.error
        return Host(self.events)


def _settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, tmp_path)


def test_the_engine_is_connected_before_the_wait_for_the_nginx_host(tmp_path, monkeypatch):
    events: List[str] = []

    def make_target(settings, environ):
        events.append("engine connected")
        return object()
    monkeypatch.setattr(compose, "make_target", make_target)
    monkeypatch.setattr(compose, "make_switch", lambda host, settings: object())
    monkeypatch.setattr(compose, "make_prober", lambda host, settings, target: object())
    with compose.context(_settings(tmp_path), {}, tmp_path, connecting=Connecting(events)):
        pass
    assert events == ["engine connected", "host taken", "host closed"]


def test_when_both_fail_the_nginx_hosts_error_is_reported(tmp_path, monkeypatch):
    events: List[str] = []

    def make_target(settings, environ):
        raise PreflightError("cannot reach the docker engine")
    monkeypatch.setattr(compose, "make_target", make_target)
    with pytest.raises(PreflightError, match="nginx host unreachable"):
        with compose.context(_settings(tmp_path), {}, tmp_path,
                             connecting=Connecting(events, PreflightError("nginx host unreachable"))):
            pass


def test_when_only_the_engine_fails_its_error_is_reported_and_the_host_closed(tmp_path, monkeypatch):
    events: List[str] = []

    def make_target(settings, environ):
        raise PreflightError("cannot reach the docker engine")
    monkeypatch.setattr(compose, "make_target", make_target)
    with pytest.raises(PreflightError, match="docker engine"):
        with compose.context(_settings(tmp_path), {}, tmp_path, connecting=Connecting(events)):
            pass
    assert events == ["host taken", "host closed"]


def test_a_release_run_gets_its_version_settled_before_any_part_is_composed(tmp_path, monkeypatch):
    """Every part (target, switch, the flow's context) holds the same settled settings: the
    version of a deploy without APP_VERSION is decided once, before them."""
    seen: List[Settings] = []

    def make_target(settings, environ):
        seen.append(settings)
        return object()
    monkeypatch.setattr(compose, "make_target", make_target)
    monkeypatch.setattr(compose, "make_switch", lambda host, settings: seen.append(settings) or object())
    monkeypatch.setattr(compose, "make_prober", lambda host, settings, target: object())
    monkeypatch.setattr(compose, "default_version", lambda cwd: "abc1234")
    with compose.context(_settings(tmp_path), {}, tmp_path, connecting=Connecting([]), releasing=True) as ctx:
        assert ctx.settings.app_version == "abc1234"
        assert all(settings is ctx.settings for settings in seen) and len(seen) == 2
    with compose.context(_settings(tmp_path), {}, tmp_path, connecting=Connecting([])) as ctx:
        assert ctx.settings.app_version is None   # status, rollback, promote: no version of their own
    given = Settings.from_env({"APP_VERSION": "v7"}, tmp_path)
    assert compose.settled(given, tmp_path, releasing=True) is given
