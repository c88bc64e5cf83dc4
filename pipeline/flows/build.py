"""The build command (e.g. ./gradlew bootJar), the release version, and what a build must not do:
build over a release on record, or put secrets where the image keeps them."""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from pipeline.core.decide import ContainerFact
from pipeline.core.errors import BuildFailed, SettingsError
from pipeline.log import echo_output
from pipeline.core.releases import ReleaseRecord, rollback_targets
from pipeline.core.settings import is_secret_name, without_secrets

log = logging.getLogger("pipeline")


def run_build(argv: Sequence[str], cwd: Path, environ: Mapping[str, str]) -> None:
    """Run the build in `cwd`, streaming its output; raise BuildFailed with the last lines."""
    last: deque[str] = deque(maxlen=20)
    # The build has no business with the registry password, and its output goes to the log.
    env = without_secrets(environ)
    try:
        process = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
    except OSError as exc:
        raise BuildFailed(shlex.join(argv), 127, [str(exc)]) from exc
    try:
        assert process.stdout is not None
        echo_output(process.stdout, last)
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


def reused_version(version: str, record: ReleaseRecord, live_color: Optional[str],
                   containers: Mapping[str, ContainerFact], images: Iterable[str]) -> Optional[str]:
    """Why `version` must not be built again, or None.

    A release on record (live, staged, or one `rollback --to` can still go to: its container or
    image kept) is only ever the image it was: building the same tag again would silently change
    what the record, a rollback or a recreated container runs. A version that never went live
    (a failed deploy, a run killed before the switch: nothing on record uses it) may be built
    again: that is Jenkins re-running a job on the same commit after a failure.
    """
    shown = "set a new APP_VERSION (the default is HEAD's short git sha)"
    if record.live is not None and record.live.version == version:
        return f"already live on {record.live.color}; its image {record.live.image} is not built over: {shown}"
    if record.staged is not None and record.staged.version == version:
        return (f"staged on {record.staged.color}; its image {record.staged.image} is not built over: "
                f"`promote` makes it live, or {shown}")
    for release in rollback_targets(record, live_color, containers, images):
        if release.version == version:
            return (f"was live before and is kept for rollback; its image {release.image} is not built over: "
                    f"`rollback --to {version}` makes it live again, or {shown}")
    return None


def check_new_version(version: str, record: ReleaseRecord, live_color: Optional[str],
                      containers: Mapping[str, ContainerFact], images: Iterable[str]) -> None:
    """Before anything is built: a version on record is refused (exit 2, nothing changed)."""
    problem = reused_version(version, record, live_color, containers, images)
    if problem is not None:
        raise SettingsError("APP_VERSION", version, problem)


def warn_secret_build_args(build_args: Mapping[str, str]) -> None:
    """One warning naming every secret-looking BUILD_ARGS key (never a value): a build arg is
    written into the image's history (`docker history`, as `|1 KEY=VALUE` on each RUN step
    after its ARG) and goes to the registry with the image, whatever the log masks."""
    keys = [key for key in build_args if is_secret_name(key)]
    if keys:
        looks = "look like secrets" if len(keys) > 1 else "looks like a secret"
        log.warning("    BUILD_ARGS %s %s: build args are stored in the image (`docker history`) and pushed "
                    "with it to the registry; give secrets to BUILD_COMMAND in its environment, or to the "
                    "container in CONTAINER_ENV_FILE", ", ".join(keys), looks)
