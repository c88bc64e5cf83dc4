"""The build command (e.g. ./gradlew bootJar) and the release version."""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from .errors import BuildFailed
from .settings import without_secrets

log = logging.getLogger("pipeline")


def run_build(argv: Sequence[str], cwd: Path, environ: Mapping[str, str]) -> None:
    """Run the build in `cwd`, streaming its output; raise BuildFailed with the last lines."""
    last: deque = deque(maxlen=20)
    # The build has no business with the registry password, and its output goes to the log.
    env = without_secrets(environ)
    try:
        process = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
    except OSError as exc:
        raise BuildFailed(shlex.join(argv), 127, [str(exc)]) from exc
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            last.append(line)
            log.info("    | %s", line)
        code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    if code != 0:
        raise BuildFailed(shlex.join(argv), code, list(last))


def default_version(cwd: Path) -> str:
    """The short git sha of HEAD, else a UTC timestamp: one image tag per release."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=10, check=False, env=without_secrets(os.environ))
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
