"""releases.py's pure decisions as tables: the record rebuilt from the history and the containers'
labels, and the rollback plan. Facts in, record or plan (or the NothingToDo line) out."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import pytest

from pipeline.core.decide import ContainerFact
from pipeline.core.errors import NothingToDo
from pipeline.core.history import Entry
from pipeline.core.releases import KEPT_MAX, Release, ReleaseRecord, RollbackPlan, plan_rollback, rebuild


def entry(action: str, version: str, color: str, result: str = "ok") -> Entry:
    return Entry("2026-11-23T10:00:00Z", "ci", "app", action, version, color, result, 1.0)


def fact(color: str, version: Optional[str], status: str = "running", image: str = "",
         restarts: int = 0) -> ContainerFact:
    return ContainerFact(color, f"app-{color}", status, version, image or f"app:{version}", None, restarts)


def containers(*facts: ContainerFact) -> Dict[str, ContainerFact]:
    return {f.color: f for f in facts}


def image_of(version: str) -> str:
    return f"reg/app:{version}"


def rel(version: str, color: str, image: str = "") -> Release:
    return Release(version, color, image or f"reg/app:{version}")


DEPLOYED = [entry("deploy", "v1", "blue"), entry("deploy", "v2", "green")]

REBUILD = [
    # (name, history, nginx serves, containers, record)
    ("nothing at all", [], None, {}, ReleaseRecord()),
    ("two deploys: the live one from its labels, the other from the history",
     DEPLOYED, "green", containers(fact("green", "v2")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue"),
                   kept=(rel("v2", "green", "app:v2"), rel("v1", "blue")))),
    ("a kept container still running a release lends its image",
     DEPLOYED, "green", containers(fact("green", "v2"), fact("blue", "v1", "exited")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue", "app:v1"),
                   kept=(rel("v2", "green", "app:v2"), rel("v1", "blue", "app:v1")))),
    ("nginx serves neither color: nothing is live, the newest release is the previous one",
     DEPLOYED, None, containers(fact("green", "v2")),
     ReleaseRecord(live=None, previous=rel("v2", "green", "app:v2"),
                   kept=(rel("v2", "green", "app:v2"), rel("v1", "blue")))),
    ("the live container has no version label: nothing is live",
     DEPLOYED, "green", containers(fact("green", None)),
     ReleaseRecord(live=None, previous=rel("v2", "green"), kept=(rel("v2", "green"), rel("v1", "blue")))),
    ("the live container's image is unknown: the registry's name for it",
     DEPLOYED, "green", {"green": ContainerFact("green", "app-green", "running", "v2", "", None)},
     ReleaseRecord(live=rel("v2", "green"), previous=rel("v1", "blue"), kept=(rel("v2", "green"), rel("v1", "blue")))),
    ("the live container runs a release the history never saw made live: first, then the history",
     DEPLOYED, "blue", containers(fact("blue", "v9")),
     ReleaseRecord(live=rel("v9", "blue", "app:v9"), previous=rel("v2", "green"),
                   kept=(rel("v9", "blue", "app:v9"), rel("v2", "green"), rel("v1", "blue")))),
    ("failed runs, unknown colors and empty versions are not releases",
     DEPLOYED + [entry("deploy", "v3", "blue", "failed"), entry("deploy", "v4", "?"), entry("deploy", "", "blue")],
     "green", containers(fact("green", "v2")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue"),
                   kept=(rel("v2", "green", "app:v2"), rel("v1", "blue")))),
    ("a release made live twice is kept once, where it was live last",
     DEPLOYED + [entry("rollback", "v1", "blue"), entry("promote", "v3", "green")], "green",
     containers(fact("green", "v3")),
     ReleaseRecord(live=rel("v3", "green", "app:v3"), previous=rel("v1", "blue"),
                   kept=(rel("v3", "green", "app:v3"), rel("v1", "blue"), rel("v2", "green")))),
    ("the last stage after the last switch, its container running it in the idle color, is staged",
     DEPLOYED + [entry("stage", "v3", "blue")], "green", containers(fact("green", "v2"), fact("blue", "v3")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue"),
                   staged=rel("v3", "blue", "app:v3"), kept=(rel("v2", "green", "app:v2"), rel("v1", "blue")))),
    ("of two stages the last one counts",
     DEPLOYED + [entry("stage", "v3", "blue"), entry("stage", "v4", "blue")], "green",
     containers(fact("green", "v2"), fact("blue", "v4")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue"),
                   staged=rel("v4", "blue", "app:v4"), kept=(rel("v2", "green", "app:v2"), rel("v1", "blue")))),
    ("a stage before the last switch was promoted or replaced: nothing is staged",
     [entry("deploy", "v1", "blue"), entry("stage", "v2", "green"), entry("promote", "v2", "green")], "green",
     containers(fact("green", "v2"), fact("blue", "v1")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue", "app:v1"),
                   kept=(rel("v2", "green", "app:v2"), rel("v1", "blue", "app:v1")))),
    ("a staged container that stopped is not staged",
     DEPLOYED + [entry("stage", "v3", "blue")], "green", containers(fact("green", "v2"), fact("blue", "v3", "exited")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue"),
                   kept=(rel("v2", "green", "app:v2"), rel("v1", "blue")))),
    ("a staged container replaced by another release is not staged",
     DEPLOYED + [entry("stage", "v3", "blue")], "green", containers(fact("green", "v2"), fact("blue", "v1")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue", "app:v1"),
                   kept=(rel("v2", "green", "app:v2"), rel("v1", "blue", "app:v1")))),
    ("a staged container that is gone is not staged",
     DEPLOYED + [entry("stage", "v3", "blue")], "green", containers(fact("green", "v2")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue"),
                   kept=(rel("v2", "green", "app:v2"), rel("v1", "blue")))),
    ("a stage in the color nginx now serves is not staged",
     DEPLOYED + [entry("stage", "v3", "green")], "green", containers(fact("green", "v2")),
     ReleaseRecord(live=rel("v2", "green", "app:v2"), previous=rel("v1", "blue"),
                   kept=(rel("v2", "green", "app:v2"), rel("v1", "blue")))),
    ("with nothing live nothing is staged",
     [entry("stage", "v1", "blue")], None, containers(fact("blue", "v1")),
     ReleaseRecord()),
]


@pytest.mark.parametrize("history,live_color,facts,expected", [row[1:] for row in REBUILD],
                         ids=[row[0] for row in REBUILD])
def test_rebuild(history: Sequence[Entry], live_color: Optional[str], facts: Dict[str, ContainerFact],
                 expected: ReleaseRecord) -> None:
    assert rebuild(history, live_color, facts, image_of) == expected


def test_rebuild_keeps_at_most_kept_max_releases() -> None:
    history = [entry("deploy", f"v{n}", "blue" if n % 2 else "green") for n in range(KEPT_MAX + 10)]
    record = rebuild(history, None, {}, image_of)
    assert len(record.kept) == KEPT_MAX and record.kept[0].version == f"v{KEPT_MAX + 9}"


LIVE_V2 = ReleaseRecord(live=rel("v2", "green"), previous=rel("v1", "blue"),
                        kept=(rel("v2", "green"), rel("v1", "blue"), rel("v0", "green")))
ALL_IMAGES = ("reg/app:v0", "reg/app:v1", "reg/app:v2")

PLANS = [
    # (name, record, nginx serves, containers, images, --to, plan or the NothingToDo line)
    ("the previous release's container still runs", LIVE_V2, "green",
     containers(fact("blue", "v1", image="reg/app:v1")), ALL_IMAGES, None,
     RollbackPlan(rel("v1", "blue"), "blue", "running", None)),
    ("it runs but restarted: started again", LIVE_V2, "green",
     containers(fact("blue", "v1", image="reg/app:v1", restarts=2)), ALL_IMAGES, None,
     RollbackPlan(rel("v1", "blue"), "blue", "start", None)),
    ("it is kept, stopped", LIVE_V2, "green",
     containers(fact("blue", "v1", "exited", image="reg/app:v1")), ALL_IMAGES, None,
     RollbackPlan(rel("v1", "blue"), "blue", "start", None)),
    ("a swarm color scaled to 0", LIVE_V2, "green",
     containers(fact("blue", "v1", "stopped", image="reg/app:v1")), ALL_IMAGES, None,
     RollbackPlan(rel("v1", "blue"), "blue", "start", None)),
    ("it is in a state that cannot be started: recreated", LIVE_V2, "green",
     containers(fact("blue", "v1", "restarting", image="reg/app:v1")), ALL_IMAGES, None,
     RollbackPlan(rel("v1", "blue"), "blue", "recreate", None)),
    ("its container runs another image: recreated, replacing it", LIVE_V2, "green",
     containers(fact("blue", "v1", image="other/app:v1")), ALL_IMAGES, None,
     RollbackPlan(rel("v1", "blue"), "blue", "recreate", "v1")),
    ("a staged release sits in the idle color: recreated, replacing it", LIVE_V2, "green",
     containers(fact("blue", "v3")), ALL_IMAGES, None,
     RollbackPlan(rel("v1", "blue"), "blue", "recreate", "v3")),
    ("no idle container: recreated from its image", LIVE_V2, "green", {}, ALL_IMAGES, None,
     RollbackPlan(rel("v1", "blue"), "blue", "recreate", None)),
    ("--to an older kept release goes to the idle color", LIVE_V2, "green", {}, ALL_IMAGES, "v0",
     RollbackPlan(rel("v0", "blue"), "blue", "recreate", None)),
    ("its kept container is enough without its image", LIVE_V2, "green",
     containers(fact("blue", "v1", "exited", image="reg/app:v1")), (), None,
     RollbackPlan(rel("v1", "blue"), "blue", "start", None)),
    ("nginx serves neither color", LIVE_V2, None, {}, ALL_IMAGES, None,
     "no previous release to roll back to (nothing is live)"),
    ("the record says nothing is live", ReleaseRecord(), "green", {}, ALL_IMAGES, None,
     "no previous release to roll back to (nothing is live)"),
    ("a first release has no previous one",
     ReleaseRecord(live=rel("v1", "blue"), kept=(rel("v1", "blue"),)), "blue", {}, ALL_IMAGES, None,
     "no previous release to roll back to (live: v1 (blue))"),
    ("the previous release is gone", LIVE_V2, "green", {}, ("reg/app:v0",), None,
     "no previous release to roll back to: v1 has neither its container nor its image any more "
     "(live: v2 (green); can go to: v0)"),
    ("nothing can be gone to", LIVE_V2, "green", {}, (), None,
     "no previous release to roll back to: v1 has neither its container nor its image any more "
     "(live: v2 (green); can go to: none)"),
    ("--to the live release", LIVE_V2, "green", {}, ALL_IMAGES, "v2",
     "v2 is already live on green (can go to: v1, v0)"),
    ("--to a release never kept", LIVE_V2, "green", {}, ALL_IMAGES, "v7",
     "cannot roll back to v7: not a kept release (can go to: v1, v0)"),
    ("--to a kept release whose image is gone", LIVE_V2, "green", {}, ("reg/app:v1",), "v0",
     "cannot roll back to v0: not a kept release (can go to: v1)"),
]


@pytest.mark.parametrize("record,live_color,facts,images,to_version,expected", [row[1:] for row in PLANS],
                         ids=[row[0] for row in PLANS])
def test_plan_rollback(record: ReleaseRecord, live_color: Optional[str], facts: Dict[str, ContainerFact],
                       images: Tuple[str, ...], to_version: Optional[str], expected: object) -> None:
    if isinstance(expected, str):
        with pytest.raises(NothingToDo) as caught:
            plan_rollback(record, live_color, facts, lambda: images, to_version)
        assert str(caught.value) == expected
    else:
        assert plan_rollback(record, live_color, facts, lambda: images, to_version) == expected


def _no_image_list() -> Tuple[str, ...]:
    raise AssertionError("the engine's image list was asked for")


@pytest.mark.parametrize("to_version", [None, "v1"], ids=["rollback", "rollback-to"])
def test_a_rollback_to_the_kept_container_does_without_the_image_list(to_version: Optional[str]) -> None:
    # Issue 15: the image list is a round trip before `docker start`; the idle container that
    # holds the release gone back to is enough to plan (the table above: the same plan with it).
    kept = containers(fact("blue", "v1", "exited", image="reg/app:v1"))
    assert plan_rollback(LIVE_V2, "green", kept, _no_image_list, to_version) == \
        RollbackPlan(rel("v1", "blue"), "blue", "start", None)


@pytest.mark.parametrize("text", [
    '{"format": 1, "kept": [null]}',
    '{"format": 1, "kept": ["v1"]}',
    '{"format": 1, "live": {"version": "v1", "color": "red", "image": "app:v1"}}',
    '{"format": 2}',
    "[]",
], ids=["a-null-kept-release", "a-kept-release-that-is-text", "an-unknown-color", "another-format", "not-an-object"])
def test_a_record_this_tool_did_not_write_is_damaged(text: str) -> None:
    """Damaged is rebuilt with a warning (load); a kept release of null used to be taken as one and
    crash `rollback` and the next switch (exit 70)."""
    with pytest.raises(ValueError):
        ReleaseRecord.from_json(text)


def test_a_record_round_trips() -> None:
    record = ReleaseRecord(live=rel("v2", "green"), previous=rel("v1", "blue"), staged=rel("v3", "blue"),
                           kept=(rel("v2", "green"), rel("v1", "blue")))
    assert ReleaseRecord.from_json(record.to_json()) == record
