"""SMOKE_COMMAND: the operator's own check of the new release, after health and before any switch.

It runs on the tool's side through `sh -c`, with SMOKE_URL=http://IP:PORT of the new release in
its environment, its output streamed to the log. A non-zero exit fails the deploy with nothing
switched. It is bounded by HEALTH_TIMEOUT, like the wait for health.
"""
from __future__ import annotations

import logging
from typing import Mapping

from pipeline.core.errors import SmokeFailed
from pipeline.flows.local import run_bounded
from pipeline.core.settings import without_secrets

log = logging.getLogger("pipeline")


def run_smoke(command: str, url: str, environ: Mapping[str, str], timeout: float) -> None:
    env = dict(without_secrets(environ))
    env["SMOKE_URL"] = url
    try:
        ended = run_bounded(["sh", "-c", command], env, timeout)
    except OSError as exc:
        raise SmokeFailed(f"SMOKE_COMMAND could not start: {exc}") from exc
    if ended.code is None:
        raise SmokeFailed(f"SMOKE_COMMAND did not finish within {timeout:g}s (HEALTH_TIMEOUT); nothing was switched",
                          ended.last)
    if ended.code != 0:
        raise SmokeFailed(f"SMOKE_COMMAND exited with {ended.code} against {url}; nothing was switched", ended.last)
    log.info("    smoke command passed (%.1fs)", ended.seconds)
