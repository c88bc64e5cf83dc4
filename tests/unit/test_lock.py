import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from pipeline.errors import Interrupted, LockHeld
from pipeline.lock import DeployLock, LockInfo
from pipeline.nginx_host import LocalHost
from pipeline.signals import SignalGuard


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
    now = [0.0]
    waiting = DeployLock(LocalHost(), path, clock=lambda: now.__setitem__(0, now[0] + 1) or now[0])
    with pytest.raises(LockHeld):
        waiting.acquire(info(), wait_seconds=2)


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = str(tmp_path / "lock")
    DeployLock(LocalHost(), path).acquire(info(pid=dead.pid))
    lock = DeployLock(LocalHost(), path)
    assert lock.is_stale(lock.read())
    lock.acquire(info())
    assert lock.read().pid == os.getpid()


def test_a_lock_held_from_another_machine_is_not_stale(tmp_path):
    path = str(tmp_path / "lock")
    DeployLock(LocalHost(), path).acquire(info(pid=1, machine="build-7"))
    lock = DeployLock(LocalHost(), path)
    assert not lock.is_stale(lock.read())
    with pytest.raises(LockHeld, match="build-7"):
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
