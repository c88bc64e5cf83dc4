"""Hooks: the team's own executables, run on the tool's side before and after a run that changes
what serves (as Kamal's `.kamal/hooks`).

HOOKS_DIR (default `.pipeline/hooks`, relative to the working directory) may hold

    pre-deploy, post-deploy        around `deploy`, `deploy --no-promote` and `promote`
    pre-rollback, post-rollback    around `rollback`

Any other file there is ignored (`pre-deploy.sample` turns one off). A pre hook runs once the run
knows what it releases (the version, the color, what is live) and before it changes anything:
before the build, the start, the switch; a non-zero exit (or running longer than HOOK_TIMEOUT)
stops the run there, exit 1. A post hook runs when the run ends, however it ends, if its pre hook
stage was passed; its failure is a warning and never changes the run's result. Both run while the
deploy lock is held, so what they do (a migration, a notice) cannot race the next run.

Their environment is built from an allow-list (ALLOWED, plus the PIPELINE_* facts), not from the
tool's environment minus what looks secret: the registry password, the nginx host's key file
variable, Jenkins' bound credentials and whatever else the tool was given never reach a hook.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from pipeline.core.errors import HookFailed, SettingsError
from pipeline.core.runlog import RunLog
from pipeline.flows.local import run_bounded

log = logging.getLogger("pipeline")

# Each action's hooks: (pre, post).
HOOKS: Dict[str, Tuple[str, str]] = {
    "deploy": ("pre-deploy", "post-deploy"),
    "stage": ("pre-deploy", "post-deploy"),
    "promote": ("pre-deploy", "post-deploy"),
    "rollback": ("pre-rollback", "post-rollback"),
}
# What a hook gets of the tool's environment: what any program needs to run, and which Jenkins
# build this is. Nothing else: a name not listed here never reaches a hook, whatever it holds.
ALLOWED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
                     "BUILD_TAG", "BUILD_NUMBER", "BUILD_URL", "JOB_NAME", "JOB_URL"})
ALLOWED_PREFIXES = ("LC_",)   # the locale's categories
TAIL_LINES = 20


def directory(hooks_dir: Path, cwd: Path) -> Path:
    return hooks_dir if hooks_dir.is_absolute() else cwd / hooks_dir


def check(hooks_dir: Path, cwd: Path, action: str) -> None:
    """Before anything is connected or changed: every hook the action would run that is there is
    a file this user may execute. Bad input otherwise (exit 2), naming the file and the fix."""
    where = directory(hooks_dir, cwd)
    if where.exists() and not where.is_dir():
        raise SettingsError("HOOKS_DIR", hooks_dir, "not a directory")
    for name in HOOKS[action]:
        path = where / name
        if not os.path.lexists(path):
            continue
        if not path.is_file():
            raise SettingsError("HOOKS_DIR", hooks_dir, f"{name} is not a file (a directory, or a link to nothing)")
        if not os.access(path, os.X_OK):
            raise SettingsError("HOOKS_DIR", hooks_dir, f"the {name} hook {path} is not executable: "
                                                       f"`chmod +x {path}`, or rename it (e.g. {name}.sample) to "
                                                       f"turn it off")


def find(hooks_dir: Path, cwd: Path, name: str) -> Optional[Path]:
    """The hook called `name`, if there is one."""
    path = directory(hooks_dir, cwd) / name
    return path if os.path.lexists(path) else None


def environment(environ: Mapping[str, str], runlog: RunLog, performer: str, nginx_hosts: str, duration: float,
                result: Optional[str] = None) -> Dict[str, str]:
    """A hook's whole environment: the allowed part of the tool's, and what the run is.
    `result` (post hooks only): how the run ended, as the history says it (ok, failed, ...)."""
    env = {k: v for k, v in environ.items() if k in ALLOWED or k.startswith(ALLOWED_PREFIXES)}
    env.setdefault("PATH", os.defpath)
    env.update({
        "PIPELINE_ACTION": runlog.action,
        "PIPELINE_VERSION": runlog.version or "",
        "PIPELINE_PREVIOUS_VERSION": runlog.previous_version or "",
        "PIPELINE_COLOR": runlog.color or "",
        "PIPELINE_DURATION": f"{duration:.1f}",
        "PIPELINE_PERFORMER": performer,
        "PIPELINE_NGINX_HOSTS": nginx_hosts,
    })
    if result is not None:
        env["PIPELINE_RESULT"] = result
    return env


def run(path: Path, name: str, env: Mapping[str, str], cwd: Path, timeout: float, must_pass: bool) -> None:
    """Run one hook in `cwd`, its output streamed to the log. `must_pass` (a pre hook): a failure
    raises HookFailed; otherwise it is a warning. A signal stops the hook (its whole process group)
    and goes on: an interruption is never swallowed."""
    problem, tail = _run(path, name, env, cwd, timeout)
    if problem is None:
        return
    if must_pass:
        raise HookFailed(f"the {name} hook {problem}; nothing was changed", tail)
    log.warning("==> the %s hook %s; the run's result stands", name, problem)
    for line in tail[-5:]:
        log.warning("    %s", line)


def _run(path: Path, name: str, env: Mapping[str, str], cwd: Path, timeout: float) -> Tuple[Optional[str], List[str]]:
    """Why the hook failed (None: it exited 0), and its last lines of output."""
    log.info("==> running the %s hook %s", name, path)
    try:
        ended = run_bounded([str(path)], env, timeout, cwd=cwd, keep=TAIL_LINES)
    except OSError as exc:
        hint = " (a script needs a #! line)" if getattr(exc, "errno", None) == 8 else ""
        return f"{path} could not start: {exc.strerror or exc}{hint}", []
    if ended.code is None:
        return f"{path} did not finish within {timeout:g}s (HOOK_TIMEOUT) and was killed", ended.last
    if ended.code != 0:
        return f"{path} exited with {ended.code}", ended.last
    log.info("    the %s hook passed (%.1fs)", name, ended.seconds)
    return None, ended.last
