"""The deploy lock: one file beside the include on the nginx host, created atomically.

Whoever holds it is written inside (who, where, pid, action, version, since), so a second run can
say who is in the way, together with what tells a live holder from a dead one: the kernel's boot
id, the pid namespace and the process's start time (/proc/PID/stat field 22). Hostname and pid
alone do not: Jenkins agents in containers share host names and low pids.

A holder is provably gone only when it ran under this kernel (same boot id) in this pid namespace
and its pid is gone, a zombie, or now a different process (another start time). Such a stale lock
is taken over; anything else (another machine, another container, a lock from before a reboot, a
lock file pipeline did not write) is released by hand with `lock release`.

Taking over is atomic: the stale file is replaced in one step (rename over it) by whoever holds the
takeover guard, a file named after the stale lock's exact content and created exclusively. Of any
number of runs that find the same stale lock, one gets the guard; it checks the lock is still the
stale one it read, replaces it with its own and removes the guard. A guard whose holder died
mid-takeover is itself stale and taken over the same way.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import socket
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import List, Mapping, Optional, Sequence, Tuple

from pipeline.core.clock import SYSTEM, Clock
from pipeline.core.errors import LockHeld, NginxHostFailed, NotText, PreflightError
from pipeline.core.host import NginxHost

log = logging.getLogger("pipeline")

POLL_EVERY = 0.5          # while waiting (--lock-wait) for a live holder
RETRY_EVERY = 0.05        # after a state that passes in milliseconds (released, taken over)
RETRY_LIMIT = 60          # such states in a row before giving up: ~3 s, never a busy loop
ALIVE = "its process is running"
GUARD_DEPTH = 3           # takeovers of takeovers cut short by SIGKILL before we stop and say so


@dataclass(frozen=True)
class LockInfo:
    who: str
    machine: str
    pid: int
    action: str
    version: str
    since: str
    # What tells a live holder from a dead one; filled in by DeployLock.acquire.
    boot_id: str = ""
    pid_ns: str = ""
    start_time: str = ""
    # Set only by `parse` for a file that is not a lock pipeline wrote: a short excerpt of it.
    damaged: Optional[str] = None

    def describe(self) -> str:
        if self.damaged is not None:
            return f"a damaged lock file that pipeline did not write ({self.damaged!r})"
        return (f"{self.who} on {self.machine} (pid {self.pid}) is running {self.action} "
                f"of {self.version or '?'} since {self.since}")

    def to_text(self) -> str:
        data = asdict(self)
        del data["damaged"]
        return json.dumps(data) + "\n"

    @classmethod
    def parse(cls, text: str) -> "LockInfo":
        """The holder written in `text`; a damaged LockInfo if it is not a lock we wrote (which is
        JSON of these fields, and ASCII: `to_text` escapes everything else)."""
        try:
            if not text.isascii():
                raise ValueError("not ASCII")
            data = json.loads(text)
            values = {}
            for f in fields(cls):
                if f.name == "damaged":
                    continue
                if f.name not in data:
                    if f.default is not MISSING:   # written by an older pipeline
                        continue
                    raise KeyError(f.name)
                value = data[f.name]
                if f.name == "pid" and not (isinstance(value, int) and not isinstance(value, bool)):
                    raise TypeError("pid")
                if f.name != "pid" and not isinstance(value, str):
                    raise TypeError(f.name)
                values[f.name] = value
            return cls(**values)
        except (ValueError, KeyError, TypeError, AttributeError):
            excerpt = " ".join(text.split())[:60]
            return cls("unknown", "unknown", 0, "unknown", "", "unknown", damaged=excerpt)


def who_am_i(environ: Mapping[str, str]) -> str:
    """Jenkins' build tag when run by Jenkins, else the user."""
    if environ.get("BUILD_TAG"):
        return environ["BUILD_TAG"]
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = environ.get("USER") or str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class ProcessTable:
    """What this machine's /proc says about its kernel and processes (the seam tests fake)."""

    def boot_id(self) -> str:
        """Changes at every boot; shared by the containers on one kernel. "" if unknown."""
        try:
            with open("/proc/sys/kernel/random/boot_id") as handle:
                return handle.read().strip()
        except OSError:
            return ""

    def pid_namespace(self) -> str:
        """Our pid namespace (e.g. pid:[4026531836]): pids mean something only inside it."""
        try:
            return os.readlink("/proc/self/ns/pid")
        except OSError:
            return ""

    def start_time(self, pid: int) -> Optional[str]:
        """When process `pid` started (clock ticks since boot); None if there is none or a zombie."""
        if pid <= 0:
            return None
        try:
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
        except OSError:
            return None
        # The command name (field 2) is in parentheses and may hold spaces or ')': split after it.
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) < 20 or rest[0] in ("Z", "X"):
            return None
        return rest[19]   # field 22: rest[0] is field 3


class DeployLock:
    """Every pause (--lock-wait's polls, the short retries while a lock is released or taken
    over) is a sleep on `clock`, and the wait is measured on it."""

    def __init__(self, host: NginxHost, path: str, clock: Clock = SYSTEM,
                 processes: Optional[ProcessTable] = None) -> None:
        self.host = host
        self.path = path
        self.clock = clock
        self.processes = processes or ProcessTable()
        self.mine: Optional[LockInfo] = None
        # The holder whose stale lock `acquire` took over: a run that died holding it (SIGKILL,
        # a crash) and so never wrote its own history entry.
        self.taken_over: Optional[LockInfo] = None

    # -- looking ---------------------------------------------------------------------------------

    def _read_text(self, path: str) -> Optional[str]:
        """The file's text; bytes that are not UTF-8 (a hand edit, a write cut short) come back
        as U+FFFD, which `LockInfo.parse` calls damaged (exit 4; `lock release` removes it)."""
        try:
            return self.host.read_text(path)
        except NotText as exc:
            return exc.data.decode("utf-8", "replace")
        except (OSError, NginxHostFailed) as exc:
            raise self._cannot(f"read the deploy lock {path}", exc) from exc

    def _create(self, path: str, text: str) -> bool:
        try:
            return self.host.create_exclusive(path, text)
        except (OSError, NginxHostFailed) as exc:
            raise self._cannot(f"create the deploy lock {path}", exc) from exc

    def _cannot(self, what: str, exc: BaseException) -> PreflightError:
        """A file operation on the nginx host that failed, as one line naming the host and the cause."""
        return PreflightError(f"cannot {what} on the nginx host ({self.host.description}): {_why(exc)}")

    def read(self) -> Optional[LockInfo]:
        text = self._read_text(self.path)
        return None if text is None else LockInfo.parse(text)

    def is_stale(self, info: LockInfo) -> bool:
        """True only when the holder is provably gone; see the module's docstring."""
        return self.why_not_stale(info) is None

    def why_not_stale(self, info: LockInfo) -> Optional[str]:
        """None for a provably dead holder, else why it must be taken as alive (for messages)."""
        if info.damaged is not None:
            return "pipeline cannot tell who holds it"
        here = self.processes.boot_id()
        if not info.boot_id or not here or info.boot_id != here:
            return "held from another machine, or from before a reboot"
        namespace = self.processes.pid_namespace()
        if not info.pid_ns or info.pid_ns != namespace:
            return "held from another container on this machine"
        if not info.start_time:
            return "its process's start time is not recorded"
        if self.processes.start_time(info.pid) == info.start_time:
            return ALIVE
        return None

    def stamped(self, info: LockInfo) -> LockInfo:
        """`info` with what proves its process alive, read from /proc for `info.pid`."""
        if info.boot_id:
            return info
        return replace(info, boot_id=self.processes.boot_id(), pid_ns=self.processes.pid_namespace(),
                       start_time=self.processes.start_time(info.pid) or "")

    # -- taking ----------------------------------------------------------------------------------

    def acquire(self, info: LockInfo, wait_seconds: float = 0.0) -> None:
        info = self.stamped(info)
        text = info.to_text()
        deadline = self.clock.now() + wait_seconds
        announced = False
        passing = 0   # states in a row that pass in milliseconds: bounded, each one paused
        while True:
            if self._create(self.path, text):
                self.mine = info
                return
            held_text = self._read_text(self.path)
            if held_text is None:
                # Released between our two looks, or the lock cannot be created at all.
                passing += 1
                if passing > RETRY_LIMIT:
                    raise PreflightError(f"cannot create the deploy lock {self.path} on the nginx host "
                                         f"({self.host.description})")
                self.clock.sleep(RETRY_EVERY)
                continue
            holder = LockInfo.parse(held_text)
            if holder.damaged is not None:
                raise LockHeld(f"deploy lock {self.path} is damaged: not a lock pipeline wrote "
                               f"({holder.damaged!r}); if no deploy is running, remove it with "
                               f"`python -m pipeline lock release`")
            if self.is_stale(holder):
                if self._take_over(self.path, held_text, text, 0):
                    log.warning("    taking over a stale lock: %s (its process is gone)", holder.describe())
                    self.mine, self.taken_over = info, holder
                    return
                # Another run is taking it over this very moment: look again shortly.
                passing += 1
                if passing <= RETRY_LIMIT:
                    self.clock.sleep(RETRY_EVERY)
                    continue
            passing = 0
            if self.clock.now() >= deadline:
                raise self._held(holder, wait_seconds)
            if not announced:
                log.info("    waiting up to %gs for the deploy lock: %s", wait_seconds, holder.describe())
                announced = True
            self.clock.sleep(POLL_EVERY)

    def _held(self, holder: LockInfo, wait_seconds: float) -> LockHeld:
        """Who holds the lock and why it is not taken over, with what the user can do about it."""
        reason = self.why_not_stale(holder)
        if reason is None or reason == ALIVE:
            reason = reason or "being taken over by another run"
            hint = "" if wait_seconds else "; retry later or pass --lock-wait SECONDS"
        else:
            hint = "; if that run is gone, release it with `python -m pipeline lock release`"
        return LockHeld(f"deploy lock {self.path} is held: {holder.describe()} ({reason}){hint}")

    def _take_over(self, path: str, stale_text: str, text: str, depth: int) -> bool:
        """Replace the stale file at `path` (its content `stale_text`) with `text`, atomically
        against every other run doing the same; False if another run got there first."""
        guard = guard_path(path, stale_text)
        if not self._create(guard, text):
            guard_text = self._read_text(guard)
            if guard_text is None:
                return False    # the other run just finished its takeover
            guard_holder = LockInfo.parse(guard_text)
            if guard_holder.damaged is None and not self.is_stale(guard_holder):
                return False    # a live run is taking over
            if depth >= GUARD_DEPTH:
                raise LockHeld(f"deploy lock {self.path}: takeovers of its stale lock were cut short "
                               f"{depth + 1} times; remove {guard} and the lock by hand "
                               f"(`python -m pipeline lock release`)")
            if not self._take_over(guard, guard_text, text, depth + 1):
                return False
        try:
            # Only the guard's holder changes a stale lock; it is still the one we judged stale?
            if self._read_text(path) != stale_text:
                return False
            try:
                self.host.write_text_atomic(path, text)   # one rename over it: never absent
            except (OSError, NginxHostFailed) as exc:
                raise self._cannot(f"replace the stale deploy lock {path}", exc) from exc
            return True
        finally:
            try:
                self.host.remove(guard)
            except (OSError, NginxHostFailed) as exc:
                log.warning("    could not remove the takeover guard %s: %s", guard, _why(exc))

    def release(self) -> None:
        if self.mine is None:
            return
        holder = self.read()
        if holder == self.mine:
            self.host.remove(self.path)
        self.mine = None

    def force_release(self) -> Optional[LockInfo]:
        """`lock release`: remove whatever lock there is (and a takeover of it cut short)."""
        text = self._read_text(self.path)
        if text is None:
            return None
        self.host.remove(guard_path(self.path, text))
        self.host.remove(self.path)
        return LockInfo.parse(text)


def guard_path(path: str, content: str) -> str:
    """The takeover guard of the lock file at `path` whose content is `content`."""
    directory, _, name = path.rpartition("/")
    digest = hashlib.sha256(content.encode()).hexdigest()[:16]
    return f"{directory}/.{name}.takeover-{digest}"


def _why(exc: BaseException) -> str:
    """The cause of a failed file operation on the nginx host, as it reports it."""
    return getattr(exc, "cause", None) or getattr(exc, "strerror", None) or str(exc)


class LockSet:
    """One deploy lock for several nginx hosts (NGINX_HOSTS): each host's own DeployLock, taken
    in one fixed order, the hosts sorted by their description (`user@host:port`), whatever order
    NGINX_HOSTS lists them in. Two runs then both start at the same first host, so exactly one of
    them gets past it and neither ever holds a lock the other waits for (no deadlock); a run that
    finds a lock held (or cannot take one) releases every one it took before it says so. Released
    on every host; stale locks are taken over per host as DeployLock does. With one host it is that
    host's DeployLock, messages included."""

    def __init__(self, locks: Sequence[DeployLock]) -> None:
        assert locks, "a lock set of no host"
        self.locks = sorted(locks, key=lambda lock: lock.host.description)
        self.clock = self.locks[0].clock

    @classmethod
    def on(cls, hosts: Sequence[NginxHost], path: str, clock: Clock = SYSTEM,
           processes: Optional[ProcessTable] = None) -> "LockSet":
        return cls([DeployLock(host, path, clock=clock, processes=processes) for host in hosts])

    @property
    def path(self) -> str:
        return self.locks[0].path

    @property
    def taken_over(self) -> Optional[LockInfo]:
        """A run that died holding the lock (on any host; the same run held them all)."""
        return next((lock.taken_over for lock in self.locks if lock.taken_over is not None), None)

    def acquire(self, info: LockInfo, wait_seconds: float = 0.0) -> None:
        """Every host's lock in order, `wait_seconds` for all of them together."""
        deadline = self.clock.now() + wait_seconds
        taken: List[DeployLock] = []
        try:
            for lock in self.locks:
                try:
                    lock.acquire(info, max(0.0, deadline - self.clock.now()))
                except LockHeld as exc:
                    if len(self.locks) == 1:
                        raise
                    raise LockHeld(f"nginx host {lock.host.description}: {exc}") from exc
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                _release_quietly(lock)
            raise

    def release(self) -> List[Tuple[str, BaseException]]:
        """Every lock this run holds; the hosts where that failed (their description, the error),
        each already logged. Never raises for one host: the others are released all the same."""
        failed: List[Tuple[str, BaseException]] = []
        for lock in self.locks:
            error = _release_quietly(lock)
            if error is not None:
                failed.append((lock.host.description, error))
        return failed

    def status(self) -> str:
        """`lock status`: one line, or one per host when there are several."""
        if len(self.locks) == 1:
            return _status_of(self.locks[0])
        return "\n".join(f"{lock.host.description}: {_status_of(lock)}" for lock in self.locks)

    def force_release(self) -> str:
        """`lock release`: every host's lock, whoever holds it."""
        lines = []
        for lock in self.locks:
            holder = lock.force_release()
            line = (f"released the lock held by: {holder.describe()}" if holder is not None
                    else "unlocked; nothing to release")
            lines.append(line if len(self.locks) == 1 else f"{lock.host.description}: {line}")
        return "\n".join(lines)


def _status_of(lock: DeployLock) -> str:
    holder = lock.read()
    if holder is None:
        return "unlocked"
    stale = " (stale: its process is gone)" if lock.is_stale(holder) else ""
    return f"locked: {holder.describe()}{stale}"


def _release_quietly(lock: DeployLock) -> Optional[BaseException]:
    """Release one host's lock; a failure is logged with what to run, and returned."""
    try:
        lock.release()
    except (NginxHostFailed, PreflightError, OSError) as exc:
        log.error("==> could not release the deploy lock %s on the nginx host %s (%s); when no run is "
                  "active: `python -m pipeline lock release`", lock.path, lock.host.description, _why(exc))
        lock.mine = None
        return exc
    return None
