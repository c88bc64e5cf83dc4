"""Each release's image digest (issue 19): the registry's manifest digest when the release was
pushed, else the image id, recorded with the release (the release record, the history line of the
run that made it live or staged) and shown by `status` and `history`, saying which it is. On the
fakes: FakeEngine.build_image gives "sha256:TAG", push_and_pull "sha256:pushed-TAG". End to end
(the engine's and the registry's own digests): tests/integration/test_layered.py."""
from __future__ import annotations

import io
import json
from typing import Any, Dict, List

import pytest

from pipeline.adapters.engine import _digest_in
from pipeline.cli import _print_status
from pipeline.core.history import Entry, format_table
from pipeline.core.releases import Release, ReleaseRecord, plan_rollback, rebuild
from pipeline.flows import deploy as flows

from .fakes import World, no_network  # noqa: F401  (autouse: no flow reaches the network)

PUSHED = "sha256:" + "ab" * 32


def history(world: World) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in world.host.files[str(world.settings.history_path())].splitlines()]


def record(world: World) -> ReleaseRecord:
    return ReleaseRecord.from_json(world.host.files[world.record_path])


def digests(world: World) -> List[tuple]:
    return [(e["action"], e["version"], e["result"], e["digest"], e["digest_of"]) for e in history(world)]


def test_without_a_registry_each_release_is_known_by_its_image_id_and_a_rollback_by_the_one_it_goes_back_to():
    world = World()
    for step in ("deploy v1", "deploy v2", "deploy v3 !unhealthy", "stage v4", "promote", "rollback --to v1"):
        world.step(step)
    assert digests(world) == [
        ("deploy", "v1", "ok", "sha256:app:v1", "image id"),
        ("deploy", "v2", "ok", "sha256:app:v2", "image id"),
        ("deploy", "v3", "failed", "", ""),          # a failed run made nothing: no digest
        ("stage", "v4", "ok", "sha256:app:v4", "image id"),
        ("promote", "v4", "ok", "sha256:app:v4", "image id"),
        ("rollback", "v1", "ok", "sha256:app:v1", "image id"),
    ]
    kept = record(world)
    assert kept.live == Release("v1", "green", "app:v1", "sha256:app:v1", "image id")
    assert kept.previous == Release("v4", "blue", "app:v4", "sha256:app:v4", "image id")
    assert [r.digest for r in kept.kept] == ["sha256:app:v1", "sha256:app:v4", "sha256:app:v2"]


def test_with_a_registry_a_release_is_known_by_the_registry_digest():
    world = World(registry="r:5000")
    world.step("deploy v1")
    world.step("deploy v2")
    assert digests(world)[-1] == ("deploy", "v2", "ok", "sha256:pushed-r:5000/app:v2", "registry")
    assert record(world).previous == Release("v1", "blue", "r:5000/app:v1", "sha256:pushed-r:5000/app:v1",
                                             "registry")
    # status: the record's releases with their digests (JSON as stored; text saying which it is)
    report = flows.status(world.context(), probe=False)
    assert report["releases"]["live"] == {"version": "v2", "color": "green", "image": "r:5000/app:v2",
                                          "digest": "sha256:pushed-r:5000/app:v2", "digest_of": "registry"}
    out = io.StringIO()
    _print_status(report, False, out)
    lines = out.getvalue().splitlines()
    assert "  live:     r:5000/app:v2  sha256:pushed-r:5000/app:v2  (registry digest)" in lines
    assert "  previous: r:5000/app:v1  sha256:pushed-r:5000/app:v1  (registry digest)" in lines
    # history: every entry, --json whole, the table 12 hex digits and which it is
    entries = flows.history(world.context())
    assert [(e["digest"], e["digest_of"]) for e in entries] == [
        ("sha256:pushed-r:5000/app:v1", "registry"), ("sha256:pushed-r:5000/app:v2", "registry")]


def test_a_registry_that_names_no_digest_leaves_the_image_id(monkeypatch):
    world = World(registry="r:5000")
    monkeypatch.setattr(world.engine, "push_and_pull", lambda tag: "")
    world.step("deploy v1")
    assert digests(world) == [("deploy", "v1", "ok", "sha256:r:5000/app:v1", "image id")]


def test_a_rebuilt_record_takes_each_release_digest_from_the_history():
    world = World()
    world.step("deploy v1")
    world.step("deploy v2")
    world.host.files[world.record_path] = "{ damaged"
    report = flows.status(world.context(), probe=False)
    assert report["releases"]["live"]["digest"] == "sha256:app:v2"
    assert report["releases"]["previous"]["digest"] == "sha256:app:v1"
    assert world.step("rollback") == (0, "")
    assert digests(world)[-1] == ("rollback", "v1", "ok", "sha256:app:v1", "image id")


def test_a_record_and_a_history_from_before_digests_still_read():
    old = ('{"format": 1, "live": {"version": "v2", "color": "green", "image": "app:v2"}, "previous": null, '
           '"staged": null, "kept": [{"version": "v2", "color": "green", "image": "app:v2"}]}')
    assert ReleaseRecord.from_json(old).live == Release("v2", "green", "app:v2")
    entry = Entry("t", "ci", "app", "deploy", "v2", "green", "ok", 1.0, "v2 live on green")
    rebuilt = rebuild([entry], "green", {}, lambda v: f"app:{v}")
    assert rebuilt.kept == (Release("v2", "green", "app:v2"),)
    out = io.StringIO()
    _print_status({"app": "app", "live_color": None, "live_version": None, "include": {"path": "/i", "points_at": None},
                   "preview": None, "switch_mode": "reload", "switch": {}, "switch_problem": None, "nginx_host": "h",
                   "releases": {"live": {"version": "v2", "color": "green", "image": "app:v2"}, "previous": None,
                                "staged": None}, "colors": {}}, False, out)
    assert "sha256" not in out.getvalue() and "releases: live=v2 (green)" in out.getvalue()


def test_plan_rollback_keeps_the_release_digest():
    v1 = Release("v1", "blue", "app:v1", PUSHED, "registry")
    kept = ReleaseRecord().made_live(v1).made_live(Release("v2", "green", "app:v2", "sha256:" + "cd" * 32, "registry"))
    plan = plan_rollback(kept, "green", {}, lambda: ["app:v1"], "v1")
    assert plan.release == Release("v1", "blue", "app:v1", PUSHED, "registry")


def test_the_history_table_shows_the_digest_short_and_which_it_is():
    rows = [{"time": "t", "who": "ci", "action": "deploy", "version": "v1", "color": "blue", "result": "ok",
             "duration": 1.0, "message": "v1 live on blue", "digest": PUSHED, "digest_of": "registry",
             "live": True, "rollback_target": False},
            {"time": "t", "who": "ci", "action": "deploy", "version": "v2", "color": "green", "result": "failed",
             "duration": 1.0, "message": "boom", "digest": "", "digest_of": "", "live": False,
             "rollback_target": False}]
    header, first, second = format_table(rows).splitlines()
    assert header.split()[7:11] == ["ROLLBACK", "IMAGE", "DIGEST", "MESSAGE"]
    assert first.split()[7:10] == ["live", "sha256:abababababab", "(registry)"]
    assert second.split()[7:9] == ["-", "-"]


@pytest.mark.parametrize("chunk,found", [
    ({"aux": {"Tag": "v1", "Digest": PUSHED, "Size": 1234}}, [PUSHED]),       # the push's last line
    ({"status": f"Digest: {PUSHED}"}, [PUSHED]),                               # the pull's
    ({"status": "v1: digest: " + PUSHED + " size: 1234"}, []),                 # the push's progress line
    ({"status": "Pushed", "id": "0123456789ab"}, []),
    ({"aux": {"Digest": "md5:abc"}}, []),
])
def test_the_digest_a_push_or_pull_reports(chunk: Dict[str, Any], found: List[str]) -> None:
    assert _digest_in(chunk) == found
