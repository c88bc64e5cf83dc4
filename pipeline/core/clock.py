"""The one clock every wait of a run uses: monotonic seconds and a sleep, together.

A flow's context holds one; a wait never reads `time` itself, so a unit test hands in a fake clock
whose sleep moves its time forward and the whole flow runs without spinning on real time.
"""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (only differences mean anything)."""

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`; afterwards `now()` is at least that much later."""


class SystemClock:
    """Real time: time.monotonic and time.sleep."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


SYSTEM = SystemClock()
