import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.core.errors import Interrupted, LockHeld, PreflightError
from dataclasses import replace

import pipeline.flows.lock as lock_module
from pipeline.flows.lock import DeployLock, LockInfo, ProcessTable, guard_path
from pipeline.adapters.nginx_host import LocalHost
from pipeline.signals import SignalGuard

from .fakes import FakeClock


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch):
    """Every wait of the lock is on the clock it is given: none of these tests sleeps on real time."""
    def refuse(seconds):
        raise AssertionError(f"time.sleep({seconds}) on the real clock")

    monkeypatch.setattr(time, "sleep", refuse)


def info(pid=None, machine=None, who="ci"):
    return LockInfo(who, machine or socket.gethostname(), pid or os.getpid(), "deploy", "v2", "2026-11-23T10:00:00Z")


def test_second_holder_is_refused_with_the_holders_name(tmp_path):
    path = str(tmp_path / "app.deploy.lock")
    first, second = DeployLock(LocalHost(), path), DeployLock(LocalHost(), path)
    first.acquire(info(who="jenkins-app-7"))
    with pytest.raises(LockHeld, match="jenkins-app-7 on .* is running deploy of v2 since"):
        second.acquire(info(who="alice"))
    first.release()
    second.acquire(info(who="alice"))
    assert json.loads(open(path).read())["who"] == "alice"


def test_waiting_gives_up_after_the_wait(tmp_path):
    path = str(tmp_path / "lock")
    DeployLock(LocalHost(), path).acquire(info())
    clock = FakeClock()
    waiting = DeployLock(LocalHost(), path, clock=clock)
    with pytest.raises(LockHeld, match=r"is held: .*\(its process is running\)$"):
        waiting.acquire(info(), wait_seconds=2)
    assert clock.sleeps == [lock_module.POLL_EVERY] * 4, "polled every POLL_EVERY until the wait was over"


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    proc = ProcessTable()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = proc.start_time(victim.pid)
    victim.kill()
    victim.wait()
    path = str(tmp_path / "lock")
    dead = replace(info(pid=victim.pid), boot_id=proc.boot_id(), pid_ns=proc.pid_namespace(), start_time=started)
    open(path, "w").write(dead.to_text())
    lock = DeployLock(LocalHost(), path)
    assert lock.is_stale(lock.read())
    lock.acquire(info())
    assert lock.read().pid == os.getpid()
    assert not os.path.exists(guard_path(path, dead.to_text())), "the takeover guard is removed"


def test_the_holder_of_a_stale_lock_taken_over_is_told_so_the_run_can_write_it_into_the_history(tmp_path):
    path = str(tmp_path / "lock")
    stale = _write_stale(path)
    lock = DeployLock(LocalHost(), path)
    lock.acquire(info(who="me"))
    assert lock.taken_over == stale
    lock.release()
    fresh = DeployLock(LocalHost(), path)
    fresh.acquire(info(who="me"))
    assert fresh.taken_over is None, "a free lock was taken over from nobody"


def test_a_lock_held_from_another_machine_is_not_stale(tmp_path):
    path = str(tmp_path / "lock")
    elsewhere = replace(info(pid=1, machine="build-7"), boot_id="another-kernel", pid_ns="pid:[1]", start_time="9")
    open(path, "w").write(elsewhere.to_text())
    lock = DeployLock(LocalHost(), path)
    assert not lock.is_stale(lock.read())
    with pytest.raises(LockHeld, match=r"build-7 .*another machine.*lock release"):
        lock.acquire(info())


def test_release_leaves_someone_elses_lock_alone(tmp_path):
    path = str(tmp_path / "lock")
    mine = DeployLock(LocalHost(), path)
    mine.acquire(info(who="me"))
    os.unlink(path)
    DeployLock(LocalHost(), path).acquire(info(who="other"))
    mine.release()
    assert json.loads(open(path).read())["who"] == "other"


def test_signal_inside_a_critical_step_waits_for_its_end():
    guard = SignalGuard()
    previous = signal.getsignal(signal.SIGTERM)
    guard.install()
    steps = []
    try:
        with pytest.raises(Interrupted) as caught:
            with guard.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("finished the step")
        assert steps == ["finished the step"]
        assert caught.value.exit_code == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_cleanup_is_logged_and_does_not_cut_the_cleanup(second):
    """What a user pressing Ctrl-C twice, or Jenkins sending SIGTERM then SIGINT, gets: the first
    signal starts the cleanup; the second one only says to wait."""
    guard = SignalGuard()
    previous = signal.getsignal(signal.SIGTERM)
    messages = _Messages()
    logger = logging.getLogger("pipeline")
    logger.addHandler(messages)
    level = logger.level
    logger.setLevel(logging.INFO)
    guard.install()
    cleanup = []
    try:
        with pytest.raises(Interrupted) as caught:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
                cleanup.append("never reached: the first signal interrupts")
            except Interrupted:
                with guard.critical():
                    os.kill(os.getpid(), second)       # arrives in the middle of the cleanup
                    for _ in range(1000):
                        pass
                    cleanup.append("cleanup finished")
                raise
        # The first signal decides the exit code; the second one did not raise or replace it.
        assert caught.value.signum == signal.SIGTERM and caught.value.exit_code == 143
        assert cleanup == ["cleanup finished"]
        assert messages.lines == [f"==> {second.name} again: still cleaning up, please wait"]
    finally:
        logger.removeHandler(messages)
        logger.setLevel(level)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_signal_outside_a_critical_step_interrupts_at_once():
    guard = SignalGuard()
    guard.install()
    try:
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        assert caught.value.exit_code == 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


# -- liveness: what tells a live holder from a dead one -------------------------------------------

class FakeProcesses:
    """/proc as a test tells it: a boot id, a pid namespace and the start time of each live pid."""

    def __init__(self, boot_id="boot-a", pid_ns="pid:[1]", running=None):
        self._boot_id, self._pid_ns = boot_id, pid_ns
        self.running = dict(running or {})

    def boot_id(self):
        return self._boot_id

    def pid_namespace(self):
        return self._pid_ns

    def start_time(self, pid):
        return self.running.get(pid)


def holder(boot_id="boot-a", pid_ns="pid:[1]", pid=7, start_time="1000"):
    return replace(info(pid=pid, machine="agent"), boot_id=boot_id, pid_ns=pid_ns, start_time=start_time)


@pytest.mark.parametrize("lock_holder,running,expected", [
    (holder(), {7: "1000"}, "its process is running"),
    (holder(), {}, None),                                        # pid gone: stale
    (holder(), {7: "2000"}, None),                               # pid reused by another process
    (holder(boot_id="boot-b"), {}, "held from another machine, or from before a reboot"),
    (holder(boot_id=""), {}, "held from another machine, or from before a reboot"),   # older pipeline
    (holder(pid_ns="pid:[2]"), {}, "held from another container on this machine"),
    (holder(pid_ns=""), {}, "held from another container on this machine"),
    (holder(start_time=""), {}, "its process's start time is not recorded"),
], ids=["alive", "pid-gone", "pid-reused", "other-boot", "no-boot-id", "other-container",
        "no-namespace", "no-start-time"])
def test_a_holder_is_stale_only_when_provably_gone(tmp_path, lock_holder, running, expected):
    lock = DeployLock(LocalHost(), str(tmp_path / "lock"), processes=FakeProcesses(running=running))
    assert lock.why_not_stale(lock_holder) == expected
    assert lock.is_stale(lock_holder) == (expected is None)


def test_same_host_name_and_a_dead_pid_is_not_enough(tmp_path):
    # Two Jenkins agent containers named alike: the other one's pid 7 is not ours to judge.
    other_container = holder(pid_ns="pid:[2]")
    path = str(tmp_path / "lock")
    open(path, "w").write(other_container.to_text())
    lock = DeployLock(LocalHost(), path, processes=FakeProcesses(running={}))
    with pytest.raises(LockHeld, match=r"another container on this machine.*lock release"):
        lock.acquire(info(pid=8))


def test_the_lock_records_boot_id_namespace_and_start_time(tmp_path):
    path = str(tmp_path / "lock")
    processes = FakeProcesses(running={os.getpid(): "4242"})
    DeployLock(LocalHost(), path, processes=processes).acquire(info())
    written = json.loads(open(path).read())
    assert (written["boot_id"], written["pid_ns"], written["start_time"]) == ("boot-a", "pid:[1]", "4242")
    assert "damaged" not in written


def test_the_real_process_table_knows_us_and_not_the_dead(tmp_path):
    proc = ProcessTable()
    assert len(proc.boot_id()) == 36 and proc.pid_namespace().startswith("pid:[")
    stat = open(f"/proc/{os.getpid()}/stat").read()
    assert proc.start_time(os.getpid()) == stat.rsplit(")", 1)[1].split()[19]
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while child.poll() is None and proc.start_time(child.pid) is not None:
        pass   # until it exits (a zombie until reaped counts as gone)
    assert proc.start_time(child.pid) is None
    child.wait()
    assert proc.start_time(child.pid) is None


def test_a_process_name_with_parentheses_and_spaces_is_read_right(tmp_path):
    script = tmp_path / "odd ) name"
    script.write_text("import time; time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, str(script)])
    try:
        fake_comm = ProcessTable().start_time(child.pid)
        stat = open(f"/proc/{child.pid}/stat").read()
        assert fake_comm == stat.rsplit(")", 1)[1].split()[19]
    finally:
        child.kill()
        child.wait()


# -- takeover under races -------------------------------------------------------------------------

def _write_stale(path):
    stale = holder(boot_id=ProcessTable().boot_id(), pid_ns=ProcessTable().pid_namespace(),
                   pid=2 ** 22 + 1, start_time="1")   # above pid_max's default: never a process
    open(path, "w").write(stale.to_text())
    return stale


class AllReadFirstHost(LocalHost):
    """Each run's first look at the lock waits until all six have looked: all find it stale."""

    def __init__(self, barrier):
        self.barrier, self.looked = barrier, False

    def read_text(self, path):
        text = super().read_text(path)
        if not self.looked:
            self.looked = True
            self.barrier.wait(10)
        return text


def test_six_takeovers_at_once_leave_exactly_one_holder(tmp_path):
    import threading

    for round_ in range(5):
        path = str(tmp_path / f"lock{round_}")
        _write_stale(path)
        barrier = threading.Barrier(6)
        outcomes = {}

        def contender(n):
            lock = DeployLock(AllReadFirstHost(barrier), path, clock=FakeClock())
            try:
                lock.acquire(info(who=f"run-{n}"))
                outcomes[n] = "holds"
            except LockHeld as exc:
                outcomes[n] = str(exc)

        threads = [threading.Thread(target=contender, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners = [n for n, o in outcomes.items() if o == "holds"]
        assert len(outcomes) == 6 and len(winners) == 1, outcomes
        assert json.loads(open(path).read())["who"] == f"run-{winners[0]}"
        assert sorted(os.listdir(tmp_path)) == sorted(f"lock{r}" for r in range(round_ + 1))


class ScriptedHost(LocalHost):
    """LocalHost that runs `before(name, path)` ahead of chosen calls: to interleave another run."""

    def __init__(self, before):
        self.before = before

    def create_exclusive(self, path, text):
        self.before("create_exclusive", path)
        return super().create_exclusive(path, text)

    def write_text_atomic(self, path, text):
        self.before("write_text_atomic", path)
        return super().write_text_atomic(path, text)


def test_a_lock_taken_over_meanwhile_is_not_taken_again(tmp_path):
    path = str(tmp_path / "lock")
    _write_stale(path)
    other = DeployLock(LocalHost(), path)
    calls = []

    def before(name, target):
        # Right after we read the stale lock and before we take its guard, another run takes over.
        if ".takeover-" in target and not calls:
            calls.append(name)
            other.acquire(info(who="other"))

    clock = FakeClock()
    with pytest.raises(LockHeld, match="other on"):
        DeployLock(ScriptedHost(before), path, clock=clock).acquire(info(who="me"))
    assert json.loads(open(path).read())["who"] == "other"
    assert clock.sleeps == [lock_module.RETRY_EVERY], "one short pause, then the new holder is seen alive"


def test_a_takeover_cut_short_by_sigkill_is_itself_taken_over(tmp_path):
    path = str(tmp_path / "lock")
    stale = _write_stale(path)
    # A run died holding the takeover guard: its guard names a dead process too.
    dead_guard_holder = replace(stale, who="killed mid-takeover")
    open(guard_path(path, stale.to_text()), "w").write(dead_guard_holder.to_text())
    lock = DeployLock(LocalHost(), path)
    lock.acquire(info(who="me"))
    assert json.loads(open(path).read())["who"] == "me"
    assert os.listdir(tmp_path) == ["lock"]


def test_a_live_takeover_in_progress_is_waited_for_briefly_then_reported(tmp_path):
    path = str(tmp_path / "lock")
    stale = _write_stale(path)
    # Someone alive (this process) holds the guard and never finishes.
    open(guard_path(path, stale.to_text()), "w").write(DeployLock(LocalHost(), path).stamped(info()).to_text())
    clock = FakeClock()
    with pytest.raises(LockHeld, match="being taken over by another run"):
        DeployLock(LocalHost(), path, clock=clock).acquire(info(who="me"))
    assert clock.sleeps == [lock_module.RETRY_EVERY] * lock_module.RETRY_LIMIT


# -- what cannot be read --------------------------------------------------------------------------

GOOD_LOCK = LockInfo("ci", "m", 7, "deploy", "v2", "2026-11-23T10:00:00Z").to_text().encode()


@pytest.mark.parametrize("content", ["garbage\n", "", '{"who": "x"}', '{"who": "x", "machine": "m", "pid": "7", '
                                     '"action": "deploy", "version": "", "since": ""}', "[1, 2]",
                                     GOOD_LOCK[:20] + b"\xff" + GOOD_LOCK[20:], GOOD_LOCK[:-3] + b"\xe2\x82"],
                         ids=["text", "empty", "missing-fields", "pid-not-a-number", "not-an-object",
                              "not-utf8", "cut-mid-character"])
def test_a_damaged_lock_is_one_clear_line_at_once_even_when_waiting(tmp_path, content):
    path = str(tmp_path / "lock")
    open(path, "wb").write(content if isinstance(content, bytes) else content.encode())
    clock = FakeClock()
    lock = DeployLock(LocalHost(), path, clock=clock)
    with pytest.raises(LockHeld, match=r"is damaged: not a lock pipeline wrote .*lock release"):
        lock.acquire(info(), wait_seconds=3600)
    assert clock.sleeps == [], "refused at once, not after the wait"
    assert lock.force_release().damaged is not None
    lock.acquire(info())


class UnreadableHost(LocalHost):
    def read_text(self, path):
        raise PermissionError(13, "Permission denied")


def test_an_unreadable_lock_is_a_preflight_error_not_a_loop(tmp_path):
    path = str(tmp_path / "lock")
    open(path, "w").write(info().to_text())
    with pytest.raises(PreflightError, match="cannot read the deploy lock .*Permission denied"):
        DeployLock(UnreadableHost(), path).acquire(info(), wait_seconds=3600)


class NoCreateHost(LocalHost):
    def __init__(self):
        self.creates = 0

    def create_exclusive(self, path, text):
        self.creates += 1
        return False   # as SshHost answers when the rename is refused


def test_a_lock_that_cannot_be_created_gives_up_after_bounded_pauses(tmp_path):
    host, clock = NoCreateHost(), FakeClock()
    with pytest.raises(PreflightError, match="cannot create the deploy lock"):
        DeployLock(host, str(tmp_path / "lock"), clock=clock).acquire(info(), wait_seconds=3600)
    assert host.creates == lock_module.RETRY_LIMIT + 1
    assert clock.sleeps == [lock_module.RETRY_EVERY] * lock_module.RETRY_LIMIT


class NoRenameHost(LocalHost):
    def write_text_atomic(self, path, text):
        raise PermissionError(13, "Permission denied")


def test_a_stale_lock_that_cannot_be_replaced_is_one_line_and_leaves_no_guard(tmp_path):
    path = str(tmp_path / "lock")
    stale = _write_stale(path)
    with pytest.raises(PreflightError, match="cannot replace the stale deploy lock .*Permission denied"):
        DeployLock(NoRenameHost(), path).acquire(info(), wait_seconds=3600)
    assert os.listdir(tmp_path) == ["lock"] and open(path).read() == stale.to_text()


def test_a_lock_that_is_not_utf8_is_damaged_at_every_byte(tmp_path):
    """A bad byte anywhere (in a string, between fields, at the end) is damage, never a holder."""
    path = tmp_path / "lock"
    lock = DeployLock(LocalHost(), str(path))
    for at in range(len(GOOD_LOCK) + 1):
        path.write_bytes(GOOD_LOCK[:at] + b"\xff" + GOOD_LOCK[at:])
        assert lock.read().damaged is not None, at
    path.write_bytes(GOOD_LOCK)
    assert lock.read().damaged is None
    # Text, but not what pipeline writes (its JSON escapes all but ASCII): a hand edit.
    assert LockInfo.parse(GOOD_LOCK.decode().replace('"ci"', '"c\u00ef"')).damaged is not None
