"""SMOKE_COMMAND: the operator's own check of the new release, after health and before any switch.

It runs on the tool's side through `sh -c`, with SMOKE_URL=http://IP:PORT of the new release in
its environment, its output streamed to the log. A non-zero exit fails the deploy with nothing
switched. It is bounded by HEALTH_TIMEOUT, like the wait for health.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Mapping

from pipeline.core.errors import SmokeFailed
from pipeline.log import echo_output
from pipeline.core.settings import without_secrets

log = logging.getLogger("pipeline")


def run_smoke(command: str, url: str, environ: Mapping[str, str], timeout: float) -> None:
    env = dict(without_secrets(environ))
    env["SMOKE_URL"] = url
    last: deque[str] = deque(maxlen=20)
    started = time.monotonic()
    try:
        process = subprocess.Popen(["sh", "-c", command], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                   start_new_session=True)   # its own process group: stopped whole
    except OSError as exc:
        raise SmokeFailed(f"SMOKE_COMMAND could not start: {exc}") from exc
    def stream() -> None:
        assert process.stdout is not None
        echo_output(process.stdout, last)

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill(process)
        raise SmokeFailed(f"SMOKE_COMMAND did not finish within {timeout:g}s (HEALTH_TIMEOUT); nothing was switched",
                          list(last)) from exc
    except BaseException:   # SIGINT/SIGTERM: the command goes too
        _kill(process)
        raise
    reader.join(timeout=2)
    if code != 0:
        raise SmokeFailed(f"SMOKE_COMMAND exited with {code} against {url}; nothing was switched", list(last))
    log.info("    smoke command passed (%.1fs)", time.monotonic() - started)


def _kill(process: subprocess.Popen[str]) -> None:
    """The command and whatever it started (curl, a test runner): the whole process group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
