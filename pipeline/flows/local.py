"""Commands on the tool's side that belong to the team (SMOKE_COMMAND, the hooks): each started in
a process group of its own, its output streamed to the log as it comes (masked there, as every
line) with the last lines kept for the message, bounded by a timeout, and killed whole (with what
it started: curl, a test runner) when the wait ends any other way than by its exit."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from pipeline.log import echo_output


@dataclass(frozen=True)
class Ended:
    code: Optional[int]   # None: still running at the timeout, and killed
    last: List[str]       # its last lines of output
    seconds: float


def run_bounded(argv: Sequence[str], env: Mapping[str, str], timeout: float, cwd: Optional[Path] = None,
                keep: int = 20) -> Ended:
    """Run `argv` until it exits or `timeout` passes. OSError: it could not start. A signal
    (Interrupted) while waiting kills it too, and goes on."""
    last: deque[str] = deque(maxlen=keep)
    started = time.monotonic()
    process = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                               errors="replace", start_new_session=True)   # its own group: stopped whole

    def stream() -> None:
        assert process.stdout is not None
        echo_output(process.stdout, last)

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    try:
        code: Optional[int] = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        code = None
    except BaseException:   # SIGINT/SIGTERM: the command goes too, the signal goes on
        _kill(process)
        raise
    reader.join(timeout=2)
    return Ended(code, list(last), time.monotonic() - started)


def _kill(process: "subprocess.Popen[str]") -> None:
    """The command and whatever it started: the whole process group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
