"""SIGINT/SIGTERM become an exception in the main thread, so every cleanup path runs.

Inside `critical()` (writing the include and reloading, creating a container, cleaning up) the
signal is held until the step ends: a deploy is never cut between "include written" and
"nginx reloaded", which would leave the include pointing at a container about to be removed.

Interrupted is a BaseException (as KeyboardInterrupt is), so no `except PipelineError` around a
step can mistake the signal for that step's failure and carry on.
"""
from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from typing import Iterator, Optional

from pipeline.core.errors import Interrupted

log = logging.getLogger("pipeline")


class SignalGuard:
    def __init__(self) -> None:
        self._depth = 0
        self._pending: Optional[int] = None
        self._raised = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self._raised or self._pending is not None:
            log.warning("==> %s again: still cleaning up, please wait", signal.Signals(signum).name)
            return
        self._pending = signum
        if self._depth == 0:
            self._raised = True
            raise Interrupted(signum)
        log.warning("==> %s received: finishing the current step, then cleaning up",
                    signal.Signals(signum).name)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        # Reached only when the step ended normally: raise the signal held meanwhile.
        if self._depth == 0 and self._pending is not None and not self._raised:
            self._raised = True
            raise Interrupted(self._pending)
