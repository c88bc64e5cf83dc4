"""One shape for every target and every switch (issue 16): the flows never ask which one they
hold, and every implementation and every fake has the whole interface.

mypy --strict proves the implementations (compose.py returns them as the Protocols) and the fakes
(tests/unit/fakes.py assigns each to its Protocol, and pyproject's [tool.mypy] checks that module);
the tests below check members by name too, so a missing one fails the unit tests as well."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Set

import pytest

from pipeline.adapters import engine, live_switch, reload_switch, swarm
from pipeline.core import fleet, switch, target
from pipeline.core.clock import Clock, SystemClock

from . import fakes

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline" / "flows"


def members(protocol: type) -> Set[str]:
    """The names a Protocol asks for: its methods and its attributes."""
    names = {name for name in vars(protocol) if not name.startswith("_")}
    return names | set(getattr(protocol, "__annotations__", {}))


@pytest.mark.parametrize("flow", ["deploy.py", "verify.py"])
def test_the_flows_never_ask_which_target_or_switch_they_hold(flow):
    text = (PIPELINE / flow).read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())   # comments may name them
    for asked in (r"\bs\.target\b", r"settings\.target\b", r"switch_mode", r"[\"']swarm[\"']", r"[\"']docker[\"']", r"\.mode\s*==",
                  r"\.admin\b"):
        assert not re.search(asked, code), f"{flow} asks {asked!r}"
    assert "type: ignore" not in text, f"{flow} calls what its interfaces do not have"


@pytest.mark.parametrize("implementation", [engine.Engine, swarm.SwarmEngine, fakes.FakeEngine],
                         ids=["Engine", "SwarmEngine", "fakes.FakeEngine"])
def test_every_target_has_the_whole_interface(implementation):
    missing = {name for name in members(target.Target) if not hasattr(implementation, name)}
    assert missing == set(), f"{implementation.__name__} lacks {sorted(missing)}"


@pytest.mark.parametrize("implementation", [engine.ContainerWatch, swarm.TaskWatch])
def test_every_watch_has_the_whole_interface(implementation):
    assert members(target.Watch) <= set(dir(implementation))


@pytest.mark.parametrize("implementation", [reload_switch.ReloadSwitch, live_switch.LiveSwitch, fakes.FakeSwitch,
                                            fleet.FleetSwitch],
                         ids=["ReloadSwitch", "LiveSwitch", "fakes.FakeSwitch", "fleet.FleetSwitch"])
def test_every_switch_has_the_whole_interface(implementation):
    missing = {name for name in members(switch.TrafficSwitch) if not hasattr(implementation, name)}
    assert missing == set(), f"{implementation.__name__} lacks {sorted(missing)}"


def test_the_fake_clock_is_a_clock():
    assert members(Clock) <= set(dir(fakes.FakeClock)) and members(Clock) <= set(dir(SystemClock))


def test_mypy_holds_the_fakes_to_the_protocols():
    """What makes the fakes type-checked: mypy's files name fakes.py, whose end assigns one
    fake per Protocol."""
    import tomllib
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "tests/unit/fakes.py" in config["files"] and config["strict"] is True
    text = (root / "tests" / "unit" / "fakes.py").read_text()
    for protocol, fake in (("Target", "FakeEngine"), ("TrafficSwitch", "FakeSwitch"), ("NginxHost", "FakeHost"),
                           ("Clock", "FakeClock"), ("Probing", "FakeProber"), ("Stats", "FakeAdmin")):
        assert re.search(rf"^    _\w+: {protocol} = {fake}\(", text, re.M), f"{fake} is not held to {protocol}"
