"""Settings come in sections, and each adapter is handed only the sections it reads (issue 16).

The flat `Settings` stays the one parsed, validated whole (from_env, the errors, the README's
table); a section is a frozen part of it. These tests hold the cut: every setting in exactly one
section, with the same type; and no adapter able to reach a setting outside its sections.
"""
import ast
import inspect
import typing
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from pipeline.adapters import engine, layered, live_switch, nginx_host, reload_switch, swarm
from pipeline.core import answers, settings as settings_module, switch
from pipeline.core.settings import SECTIONS, SETTING_FIELDS, Settings

PIPELINE = Path(settings_module.__file__).resolve().parents[1]
# What takes settings outside compose and the flows: each adapter's constructor and factory, and
# the functions of theirs that read settings.
HANDED_SETTINGS = [
    engine.Images.__init__, engine.Engine.__init__, engine.Engine.connect, engine.registry_login,
    engine.engine_environment, swarm.SwarmEngine.__init__, swarm.SwarmEngine.connect,
    nginx_host.SshHost.__init__, nginx_host.SshHost.connect, nginx_host.connect, nginx_host.Connecting.__init__,
    reload_switch.ReloadSwitch.__init__, live_switch.LiveSwitch.__init__, layered.build_image,
    switch.IncludeFiles.__init__, answers.check_access_log,
]


def test_every_setting_is_in_exactly_one_section_with_its_type():
    owners = {}
    hints = typing.get_type_hints(Settings)
    for section in SECTIONS:
        section_hints = typing.get_type_hints(section)
        for f in fields(section):
            assert f.name not in owners, f"{f.name} is in {owners.get(f.name)} and in {section.__name__}"
            owners[f.name] = section.__name__
            assert section_hints[f.name] == hints.get(f.name), f"{section.__name__}.{f.name}"
    assert set(owners) == set(SETTING_FIELDS.values())


def test_a_section_holds_the_settings_values_and_is_frozen(tmp_path):
    s = Settings.from_env({"APP_NAME": "shop", "BLUE_IP": "172.20.0.9", "CONTAINER_VOLUMES": "/srv/{color}:/data",
                           "REGISTRY": "r.internal:5000", "SWITCH_MODE": "live", "VERIFY_SECONDS": "5"}, tmp_path)
    sections = {"app": s.app, "build": s.build, "network": s.network, "swarm": s.swarm, "runtime": s.runtime,
                "nginx": s.nginx, "switch": s.switch, "verify": s.verify, "rollout": s.rollout,
                "registry": s.registry_access}
    assert {type(section) for section in sections.values()} == set(SECTIONS)
    for section in sections.values():
        assert all(getattr(section, f.name) == getattr(s, f.name) for f in fields(section))
    assert s.network.ip_of("blue") == s.ip_of("blue") == "172.20.0.9"
    assert s.app.container_name("green") == "shop-green" and s.app.volumes_for("blue") == ("/srv/blue:/data",)
    assert s.switch.switch_mode == "live" and s.verify.verify_seconds == 5.0
    with pytest.raises(FrozenInstanceError):
        s.app.app_name = "other"   # type: ignore[misc]


def _types_in(hint: object) -> typing.Iterator[object]:
    """The hint and every type inside it (Optional[X], Callable[[X], Y]...)."""
    if isinstance(hint, list):   # a Callable's arguments
        for arg in hint:
            yield from _types_in(arg)
        return
    yield hint
    for arg in typing.get_args(hint):
        yield from _types_in(arg)


@pytest.mark.parametrize("function", HANDED_SETTINGS, ids=lambda f: f.__qualname__)
def test_each_adapter_takes_sections_not_the_whole_settings(function):
    hints = typing.get_type_hints(function)
    taken = {t for name, hint in hints.items() if name != "return" for t in _types_in(hint)}
    assert Settings not in taken, f"{function.__qualname__} takes the whole Settings"
    assert taken & set(SECTIONS), f"{function.__qualname__} takes no section: {sorted(map(str, taken))}"


def test_no_adapter_names_the_whole_settings():
    """Stronger than the signatures: an adapter module cannot even import `Settings`, so a
    setting outside its sections can only reach it through compose."""
    modules = sorted((PIPELINE / "adapters").glob("*.py")) + [PIPELINE / "core" / "switch.py",
                                                              PIPELINE / "core" / "answers.py"]
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "pipeline.core.settings":
                names = {alias.name for alias in node.names}
                assert "Settings" not in names, f"{path.relative_to(PIPELINE)} imports Settings"


def test_every_adapter_class_that_takes_settings_is_listed_here():
    """A new adapter class taking a section is held to the rule above too (not forgotten)."""
    listed = {f.__qualname__.split(".")[0] for f in HANDED_SETTINGS}
    for module in (engine, swarm, nginx_host, reload_switch, live_switch, layered):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            hints = typing.get_type_hints(cls.__init__) if "__init__" in vars(cls) else {}
            if {t for hint in hints.values() for t in _types_in(hint)} & set(SECTIONS):
                assert name in listed, f"{module.__name__}.{name} takes a section but is not checked here"
