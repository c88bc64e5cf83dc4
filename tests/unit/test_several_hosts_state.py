"""Several nginx hosts (issue 17), what they keep: one deploy lock over all of them, taken in a fixed
order; the history and the release record on every one, their copies merged / reconciled on read
with a warning naming the host; `status` per host, loud when they disagree; a host lost at the end
of a run that did its work is exit 1 naming it. Over the strict fakes; the same on real nginx
hosts (each in a namespace of its own): tests/integration/test_several_hosts_state.py."""
from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import replace
from typing import List, Optional, Tuple

import pytest

from pipeline import cli
from pipeline.core.decide import ContainerFact
from pipeline.core.errors import LockHeld, NginxHostFailed
from pipeline.core.history import Entry, History, merge_copies
from pipeline.core.releases import Copy, Release, ReleaseRecord, ReleaseStore, reconcile
from pipeline.core.switch import LIVE
from pipeline.flows import deploy as flows
from pipeline.flows.lock import DeployLock, LockInfo, LockSet

from .fakes import FakeClock, FakeHost, FakeSwitch, World, no_network  # noqa: F401  (autouse)

LOCK = "/nginx/app.deploy.lock"


@pytest.fixture
def caplog(caplog, monkeypatch):
    """caplog, seeing the pipeline logger even after a test that set it up as the CLI does
    (which stops it from propagating)."""
    monkeypatch.setattr(logging.getLogger("pipeline"), "propagate", True)
    return caplog


class Recording(FakeHost):
    """A FakeHost that logs, in one list shared by several, which host created which file."""

    def __init__(self, description: str, log: List[Tuple[str, str]]) -> None:
        super().__init__(description=description)
        self.log = log

    def create_exclusive(self, path: str, text: str) -> bool:
        self.log.append((self.description, path))
        return super().create_exclusive(path, text)


def info(who: str) -> LockInfo:
    return LockInfo(who, "ci", 1, "deploy", "v1", "2026-12-05T03:00:00Z", boot_id="b", pid_ns="p", start_time="1")


def three_hosts(log: List[Tuple[str, str]]) -> List[Recording]:
    return [Recording(name, log) for name in ("nginx-b", "nginx-c", "nginx-a")]   # NGINX_HOSTS' order


# -- the lock ------------------------------------------------------------------------------------

def test_the_lock_is_taken_on_every_host_in_the_order_of_their_names_whatever_nginx_hosts_says():
    log: List[Tuple[str, str]] = []
    hosts = three_hosts(log)
    lock = LockSet.on(hosts, LOCK, clock=FakeClock())
    lock.acquire(info("me"))
    assert [host for host, _ in log] == ["nginx-a", "nginx-b", "nginx-c"]
    assert all(LockInfo.parse(str(h.files[LOCK])).who == "me" for h in hosts)
    assert lock.release() == []
    assert all(LOCK not in h.files for h in hosts)


def test_of_two_runs_listing_the_hosts_in_other_orders_one_takes_every_lock_the_other_none():
    log: List[Tuple[str, str]] = []
    hosts = three_hosts(log)
    first = LockSet.on(hosts, LOCK, clock=FakeClock())
    second = LockSet.on(list(reversed(hosts)), LOCK, clock=FakeClock())
    first.acquire(info("first"))
    with pytest.raises(LockHeld, match=r"^nginx host nginx-a: deploy lock /nginx/app.deploy.lock is held: first"):
        second.acquire(info("second"))
    assert all(LockInfo.parse(str(h.files[LOCK])).who == "first" for h in hosts)
    first.release()
    assert all(LOCK not in h.files for h in hosts)


def test_a_run_that_finds_the_last_host_locked_releases_the_ones_it_took():
    log: List[Tuple[str, str]] = []
    hosts = three_hosts(log)
    DeployLock(hosts[1], LOCK).acquire(info("someone else"))   # nginx-c only (another machine's run)
    with pytest.raises(LockHeld, match="nginx host nginx-c: .* is held: someone else"):
        LockSet.on(hosts, LOCK, clock=FakeClock()).acquire(info("me"))
    assert LOCK not in hosts[0].files and LOCK not in hosts[2].files   # nginx-b and nginx-a: released
    assert LockInfo.parse(str(hosts[1].files[LOCK])).who == "someone else"


def test_with_one_host_the_lock_says_what_it_always_said():
    host = FakeHost()
    DeployLock(host, LOCK).acquire(info("someone else"))
    with pytest.raises(LockHeld, match="^deploy lock /nginx/app.deploy.lock is held: someone else"):
        LockSet.on([host], LOCK, clock=FakeClock()).acquire(info("me"))


class Gone(FakeHost):
    """A host whose connection is lost: every file operation fails."""

    def remove(self, path: str) -> None:
        raise NginxHostFailed("nginx host gone", f"removing {path}", "Connection reset")

    def append_text(self, path: str, text: str) -> None:
        raise NginxHostFailed("nginx host gone", f"appending to {path}", "Connection reset")


def test_a_host_whose_lock_cannot_be_released_is_named_and_the_others_are_released():
    hosts: List[FakeHost] = [FakeHost(description="nginx-a"), Gone(description="nginx-b")]
    lock = LockSet.on(hosts, LOCK, clock=FakeClock())
    lock.acquire(info("me"))
    failed = lock.release()
    assert [host for host, _ in failed] == ["nginx-b"]
    assert LOCK not in hosts[0].files


def test_lock_status_and_release_name_each_host():
    hosts = [FakeHost(description="nginx-a"), FakeHost(description="nginx-b")]
    settings = World().settings
    DeployLock(hosts[1], str(settings.lock_path())).acquire(info("someone"))
    status = flows.lock_command(hosts, settings, "status")
    assert status.splitlines()[0] == "nginx-a: unlocked"
    assert status.splitlines()[1].startswith("nginx-b: locked: someone on ci (pid 1)")
    released = flows.lock_command(hosts, settings, "release")
    assert released.splitlines() == ["nginx-a: unlocked; nothing to release",
                                     released.splitlines()[1]]
    assert released.splitlines()[1].startswith("nginx-b: released the lock held by: someone")
    assert str(settings.lock_path()) not in hosts[1].files


# -- the history: copies merged ------------------------------------------------------------------

def entry(version: str, time: str = "t") -> Entry:
    return Entry(time + version, "me", "app", "deploy", version, "blue", "ok", 1.0)


V1, V2, V3, V4 = (entry(v) for v in ("v1", "v2", "v3", "v4"))

MERGES = [
    # (copies per host, merged, hosts lacking entries and how many)
    ("the same everywhere", [("a", [V1, V2]), ("b", [V1, V2])], [V1, V2], []),
    ("b missed the last run", [("a", [V1, V2, V3]), ("b", [V1, V2])], [V1, V2, V3], [("b", 1)]),
    ("a missed a run in the middle", [("a", [V1, V3]), ("b", [V1, V2, V3])], [V1, V2, V3], [("a", 1)]),
    ("each missed another", [("a", [V1, V2, V4]), ("b", [V1, V3, V4])], [V1, V2, V3, V4], [("a", 1), ("b", 1)]),
    ("one host's history is new", [("a", []), ("b", [V1, V2])], [V1, V2], [("a", 2)]),
    ("three hosts", [("a", [V1]), ("b", [V1, V2]), ("c", [V2, V3])], [V1, V2, V3], [("a", 2), ("b", 1), ("c", 1)]),
]


@pytest.mark.parametrize("copies,merged,lacking", [m[1:] for m in MERGES], ids=[m[0] for m in MERGES])
def test_history_copies_merged(copies, merged, lacking):
    assert merge_copies(copies) == (merged, lacking)


def test_the_history_is_appended_on_every_host_and_read_merged_with_a_warning(caplog):
    a, b = FakeHost(description="nginx-a"), FakeHost(description="nginx-b")
    history = History(a, "/nginx/app.history.jsonl", [b])
    assert history.append(V1) == []
    assert a.files == b.files
    History(a, "/nginx/app.history.jsonl").append(V2)   # a run that reached only nginx-a
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert history.entries() == [V1, V2]
    assert "history /nginx/app.history.jsonl on the nginx host nginx-b lacks 1 entry" in caplog.text


def test_a_host_whose_history_lacks_entries_gets_the_merged_one_under_the_lock(caplog):
    a, b = FakeHost(description="nginx-a"), FakeHost(description="nginx-b")
    History(a, "/nginx/app.history.jsonl").append(V1)
    History(a, "/nginx/app.history.jsonl").append(V2)   # nginx-b was added to NGINX_HOSTS since
    history = History(a, "/nginx/app.history.jsonl", [b])
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        history.mend()
    assert "history /nginx/app.history.jsonl on the nginx host nginx-b lacked 2 entries" in caplog.text
    assert b.files["/nginx/app.history.jsonl"] == a.files["/nginx/app.history.jsonl"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        history.mend()
        assert history.entries() == [V1, V2]
    assert caplog.text == ""


# -- the release record: copies reconciled -------------------------------------------------------

R1, R2 = Release("v1", "blue", "app:v1"), Release("v2", "green", "app:v2")
ON_V1 = ReleaseRecord(live=R1, kept=(R1,))
ON_V2 = ON_V1.made_live(R2)
STAGED = ON_V1.with_staged(R2)
RUNNING = {"blue": ContainerFact("blue", "app-blue", "running", "v1", "app:v1", "172.20.0.2"),
           "green": ContainerFact("green", "app-green", "running", "v2", "app:v2", "172.20.0.3")}

RECONCILE = [
    # (copies, the color nginx serves, the record taken (None: rebuilt), hosts not taken)
    ("the same everywhere", [Copy("a", ON_V2), Copy("b", ON_V2)], "green", ON_V2, ()),
    ("missing everywhere", [Copy("a", None, "x does not exist"), Copy("b", None, "x does not exist")], None,
     None, ()),
    ("b missed the switch's write: a's agrees with nginx and the labels",
     [Copy("a", ON_V2), Copy("b", ON_V1)], "green", ON_V2, ("b",)),
    ("a missed it", [Copy("a", ON_V1), Copy("b", ON_V2)], "green", ON_V2, ("a",)),
    ("b's copy is missing", [Copy("a", ON_V2), Copy("b", None, "x does not exist")], "green", ON_V2, ("b",)),
    ("b's copy is damaged", [Copy("a", ON_V2), Copy("b", None, "x is damaged (y)")], "green", ON_V2, ("b",)),
    ("both agree with nginx but not with each other (a stage only a saw): rebuilt",
     [Copy("a", STAGED), Copy("b", ON_V1)], "blue", None, ("a", "b")),
    ("neither agrees with nginx: rebuilt", [Copy("a", ON_V1), Copy("b", ON_V2)], None, None, ("a", "b")),
    ("three hosts, one behind", [Copy("a", ON_V2), Copy("b", ON_V1), Copy("c", ON_V2)], "green", ON_V2, ("b",)),
]


@pytest.mark.parametrize("copies,live,record,stale", [r[1:] for r in RECONCILE], ids=[r[0] for r in RECONCILE])
def test_record_copies_reconciled(copies, live, record, stale):
    decision = reconcile(copies, live, RUNNING)
    assert decision.record == record
    assert decision.stale_hosts == stale
    for host in stale:
        assert f"{host}: " in decision.warning
    assert bool(decision.warning) == bool(stale)


def test_a_record_is_written_on_every_host_and_one_that_fails_is_named():
    a, b = FakeHost(description="nginx-a"), Gone(description="nginx-b")
    b.write_fails = NginxHostFailed("nginx host gone", "writing", "Connection reset")
    assert ReleaseStore(a, "/nginx/app.releases.json", [b]).write(ON_V1) == ["nginx-b"]
    assert ReleaseRecord.from_json(str(a.files["/nginx/app.releases.json"])) == ON_V1


# -- the flows over two hosts ------------------------------------------------------------------

class TwoHosts(World):
    """A World whose nginx is two hosts: the flows switch with the one switch (the other half of
    issue 17 makes it switch both), and keep lock, history and record on both."""

    def __init__(self, **settings: object) -> None:
        super().__init__(**settings)
        self.host.description = "nginx-a"
        self.other = FakeHost(description="nginx-b")
        self.other_switch = self.switch   # each host's own switch; a test may give b one of its own

    def context(self, version: Optional[str] = None) -> flows.Context:
        ctx = super().context(version)
        return replace(ctx, hosts=(self.host, self.other), switches=(self.switch, self.other_switch))

    def files(self, host: FakeHost, path: str) -> str:
        return str(host.files[path])


def deploy(world: TwoHosts, version: str) -> Tuple[int, str]:
    try:
        flows.deploy(world.context(version))
    except Exception as exc:
        return getattr(exc, "exit_code", 70), str(exc)
    return 0, ""


def test_a_deploy_writes_history_and_record_on_both_hosts_and_holds_the_lock_on_both():
    world = TwoHosts()
    assert deploy(world, "v1") == (0, "")
    assert deploy(world, "v2") == (0, "")
    for path in (str(world.settings.history_path()), world.record_path):
        assert world.files(world.host, path) == world.files(world.other, path), path
    assert [json.loads(line)["version"] for line in world.files(world.other, str(world.settings.history_path())).splitlines()] \
        == ["v1", "v2"]
    live = ReleaseRecord.from_json(world.files(world.other, world.record_path)).live
    assert live is not None and (live.version, live.color, live.image) == ("v2", "green", "app:v2")
    assert str(world.settings.lock_path()) not in world.host.files | world.other.files


def test_a_copy_of_the_record_left_behind_is_reconciled_named_and_written_again(caplog):
    world = TwoHosts()
    deploy(world, "v1")
    behind = world.other.files[world.record_path]
    deploy(world, "v2")
    world.other.files[world.record_path] = behind   # nginx-b missed v2's write
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert deploy(world, "v3") == (0, "")
    assert "the copy on nginx-b is out of date: taking nginx-a's" in caplog.text
    record = ReleaseRecord.from_json(world.files(world.other, world.record_path))
    assert (record.live and record.live.version, record.previous and record.previous.version) == ("v3", "v2")


class DiesAfterTheSwitch(FakeHost):
    """An nginx host that is lost once the release record has been written on it (the switch step):
    from then on every file operation fails, as over a dead SSH connection."""

    def __init__(self, description: str, record_path: str) -> None:
        super().__init__(description=description)
        self.record_path, self.dead, self.armed = record_path, False, True

    def _lost(self, what: str) -> None:
        if self.dead:
            raise NginxHostFailed(f"nginx host {self.description} over SFTP", what, "Socket is closed")

    def write_text_atomic(self, path: str, text: str) -> None:
        self._lost(f"writing {path}")
        super().write_text_atomic(path, text)
        if path == self.record_path and '"v2"' in text and self.armed:
            self.dead, self.armed = True, False   # once: back later, it stays up

    def append_text(self, path: str, text: str) -> None:
        self._lost(f"appending to {path}")
        super().append_text(path, text)

    def remove(self, path: str) -> None:
        self._lost(f"removing {path}")
        super().remove(path)

    def read_text(self, path: str) -> Optional[str]:
        self._lost(f"reading {path}")
        return super().read_text(path)


def test_a_host_lost_after_the_switch_is_exit_1_naming_it_and_the_new_release_serves():
    world = TwoHosts()
    world.other = DiesAfterTheSwitch("nginx-b", world.record_path)
    assert deploy(world, "v1") == (0, "")
    code, message = deploy(world, "v2")
    assert code == 1
    assert message.startswith("v2 live on green on the other nginx hosts, but the nginx host nginx-b could not be "
                              "reached at the end of the run (nginx-b: Socket is closed)"), message
    assert "until it is back or removed from NGINX_HOSTS" in message
    assert world.serving() == ("v2", "green")
    assert str(world.settings.lock_path()) not in world.host.files   # released where it could be
    last = json.loads(world.files(world.host, str(world.settings.history_path())).splitlines()[-1])
    assert (last["version"], last["result"]) == ("v2", "ok")


def test_a_lock_left_on_a_lost_host_by_a_run_that_ended_is_taken_over_and_not_called_killed():
    world = TwoHosts()
    world.other = DiesAfterTheSwitch("nginx-b", world.record_path)
    deploy(world, "v1")
    assert deploy(world, "v2")[0] == 1
    world.other.dead = False   # nginx-b is back, with v2's run's lock still on it
    left = LockInfo.parse(world.files(world.other, str(world.settings.lock_path())))
    assert (left.who, left.version) == ("unit", "v2")
    gone = subprocess.Popen(["true"])   # that run's process has ended since: a pid that is gone
    gone.wait()
    world.other.files[str(world.settings.lock_path())] = replace(left, pid=gone.pid).to_text()
    assert deploy(world, "v3") == (0, "")
    entries = [json.loads(line) for line in world.files(world.host, str(world.settings.history_path())).splitlines()]
    assert [(e["version"], e["result"]) for e in entries] == [("v1", "ok"), ("v2", "ok"), ("v3", "ok")]
    assert str(world.settings.lock_path()) not in world.other.files


# -- status ------------------------------------------------------------------------------------

def test_status_shows_what_each_host_serves_and_says_loudly_when_they_disagree():
    world = TwoHosts()
    deploy(world, "v1")
    deploy(world, "v2")
    world.other_switch = FakeSwitch.configured(world.settings)
    world.other_switch.routes[LIVE] = world.engine.addresses("blue")   # nginx-b still on v1
    report = flows.status(world.context(), probe=False)
    assert [(row["host"], row["color"], row["version"]) for row in report["nginx_hosts"]] == \
        [("nginx-a", "green", "v2"), ("nginx-b", "blue", "v1")]
    assert report["hosts_disagree"] is True
    text = "".join(cli._status_lines(report))
    assert "host:     nginx-a serves green (v2)" in text
    assert "host:     nginx-b serves blue (v1)" in text
    assert "WARNING:  THE NGINX HOSTS DISAGREE on what they serve (nginx-a: green, nginx-b: blue)" in text


def test_status_of_hosts_that_agree_has_no_warning_and_one_host_no_host_lines():
    world = TwoHosts()
    deploy(world, "v1")
    report = flows.status(world.context(), probe=False)
    assert report["hosts_disagree"] is False
    assert "DISAGREE" not in "".join(cli._status_lines(report))
    one = World()
    one.step("deploy v1")
    report = flows.status(one.context(), probe=False)
    assert [row["host"] for row in report["nginx_hosts"]] == [one.host.description]
    assert not any(line.startswith("host:") for line in cli._status_lines(report))
