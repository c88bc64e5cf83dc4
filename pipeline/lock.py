"""The deploy lock: one file beside the include on the nginx host, created atomically.

Whoever holds it is written inside (who, where, pid, action, version, since), so a second run can
say who is in the way. A lock whose holder ran on this machine and is gone (killed with SIGKILL)
is stale and taken over; one held from another machine is released by hand with `lock release`.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import socket
import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Optional

from .errors import LockHeld
from .nginx_host import NginxHost

log = logging.getLogger("pipeline")

POLL_EVERY = 0.5


@dataclass(frozen=True)
class LockInfo:
    who: str
    machine: str
    pid: int
    action: str
    version: str
    since: str

    def describe(self) -> str:
        return (f"{self.who} on {self.machine} (pid {self.pid}) is running {self.action} "
                f"of {self.version or '?'} since {self.since}")

    @classmethod
    def parse(cls, text: str) -> Optional["LockInfo"]:
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):
            return None


# What a lock file that is not one of ours reads as (garbage, cut short, another tool's).
DAMAGED = LockInfo("unknown", "unknown", 0, "unknown", "", "unknown")


def who_am_i(environ: Mapping[str, str]) -> str:
    """Jenkins' build tag when run by Jenkins, else the user."""
    if environ.get("BUILD_TAG"):
        return environ["BUILD_TAG"]
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = environ.get("USER") or str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DeployLock:
    def __init__(self, host: NginxHost, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.path = path
        self.clock = clock
        self.mine: Optional[LockInfo] = None

    def read(self) -> Optional[LockInfo]:
        text = self.host.read_text(self.path)
        if text is None:
            return None
        return LockInfo.parse(text) or DAMAGED

    def is_stale(self, info: LockInfo) -> bool:
        """Only provable for a holder on this machine: its process is gone."""
        return info.machine == socket.gethostname() and not _pid_alive(info.pid)

    def acquire(self, info: LockInfo, wait_seconds: float = 0.0) -> None:
        deadline = self.clock() + wait_seconds
        text = json.dumps(asdict(info)) + "\n"
        announced = False
        while True:
            if self.host.create_exclusive(self.path, text):
                self.mine = info
                return
            holder = self.read()
            if holder is not None and self.is_stale(holder):
                log.warning("    taking over a stale lock: %s (process gone)", holder.describe())
                self.host.remove(self.path)
                continue
            if holder is None:
                continue  # released between our two looks
            if self.clock() >= deadline and holder is DAMAGED:
                raise LockHeld(f"deploy lock {self.path} is damaged: it does not say who holds it; if no "
                               f"deploy is running, release it with `python -m pipeline lock release`")
            if self.clock() >= deadline:
                raise LockHeld(f"deploy lock {self.path} is held: {holder.describe()}"
                               + ("" if wait_seconds else "; retry later or pass --lock-wait SECONDS"))
            if not announced:
                log.info("    waiting up to %gs for the deploy lock: %s", wait_seconds, holder.describe())
                announced = True
            time.sleep(POLL_EVERY)

    def release(self) -> None:
        if self.mine is None:
            return
        holder = self.read()
        if holder == self.mine:
            self.host.remove(self.path)
        self.mine = None

    def force_release(self) -> Optional[LockInfo]:
        holder = self.read()
        self.host.remove(self.path)
        return holder
