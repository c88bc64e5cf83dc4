"""SIGKILL anywhere (issue 15): a deploy killed at any instant, then a plain `deploy`.

Nothing of the killed run cleans up: no `finally`, no history entry, the lock left behind. From a
live v1, under steady traffic through the test's nginx, a deploy of v2 is SIGKILLed

- at named instants: while taking over a stale lock (left by a deploy killed before it), during
  the build, right after its container started, during the health wait, right after the live
  include is renamed (before nginx is told), by the reload command before it reloads, right after
  nginx reloaded (before the record is written), with the record's new text written aside but
  not yet renamed, right after the record is replaced, during verification and during the drain;
  in live mode (SWITCH_MODE=live) right after the include's rename (before nginx's balancer is
  told) and at the record's rename;
- at random delays across a whole deploy (seeded: the seed is in every failure message; set
  PIPELINE_SIGKILL_SEED to run one again, PIPELINE_SIGKILL_KILLS for a longer hunt).

Right after the kill, `status --json` must name what nginx serves (or say it cannot tell). Then a
plain `deploy` of the next version must succeed (and write the killed run into the history),
nginx must serve it, `status --json` must say so (`live_version` and the record's live release),
exactly one container of the app must be running, the lock (and any takeover guard of it) must be
gone, and not one request through nginx may have failed, from before the kill to the end.

How the exact instants are reached: the include by `NGINX_TEST_COMMAND` (which the switch runs
right after the rename) SIGKILLing the deploy, whose pid the test wrote to a file; the reload by
`NGINX_RELOAD_COMMAND` doing the same after `nginx -s reload`; the record by running the CLI
through `KILL_AT_RENAME` below, which SIGKILLs the process itself just before or just after
`os.replace` puts a file at a given path (the tool's atomic write: temp file, then rename): the
record, the include (live mode), the lock (a takeover replaces a stale lock that way).
"""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from teststack.realstack import Nginx, pipeline_env, run_pipeline, wait_for
from teststack.traffic import Traffic

pytestmark = pytest.mark.integration

# The CLI as `python -m pipeline` runs it, except that `os.replace(src, dst)` with dst equal to
# $SIGKILL_AT_PATH kills the process with SIGKILL before ($SIGKILL_AT_WHEN=before) or after
# (=after) the rename. Nothing of the tool is changed: the kill comes from outside its code, at
# one system call, as `strace -e inject=rename:signal=KILL` would.
KILL_AT_RENAME = r"""
import os, runpy, signal, sys
_path, _when = os.environ.pop("SIGKILL_AT_PATH"), os.environ.pop("SIGKILL_AT_WHEN")
_replace = os.replace
def _kill_at(src, dst, *args, **kwargs):
    hit = os.fspath(dst) == _path
    if hit and _when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    _replace(src, dst, *args, **kwargs)
    if hit and _when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = _kill_at
sys.argv = ["pipeline", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""

# Run by the tool as NGINX_TEST_COMMAND / NGINX_RELOAD_COMMAND: SIGKILL the deploy (its pid in
# the file the test wrote) and exit.
KILL_FROM_FILE = 'kill -9 "$(cat {pid_file})"'


@dataclass
class Killed:
    """One deploy run in the background, its log in a file, to be SIGKILLed."""

    process: subprocess.Popen
    log_path: Path
    killed_at: Optional[float] = None   # time.monotonic() of the test's kill, if the test killed it
    notes: List[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged(self, text: str) -> bool:
        return text in self.log()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.killed_at = time.monotonic()
        self.process.wait(timeout=30)

    def kill_when(self, predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.002) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                raise AssertionError(f"the deploy ended (exit {self.process.returncode}) before {what}:\n"
                                     f"{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.log()[-3000:]}")
            time.sleep(every)
        self.kill()

    def wait_killed(self, timeout: float = 120) -> None:
        """For a run that kills itself (or is killed by a command it runs)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the deploy was not killed within {timeout}s:\n{self.log()[-3000:]}")

    def assert_sigkilled(self) -> None:
        assert self.process.returncode == -signal.SIGKILL, (
            f"the deploy ended with {self.process.returncode}, not by SIGKILL:\n{self.log()[-3000:]}")


def start_deploy(env: Dict[str, str], cwd: Path, name: str, kill_at_rename: Optional[tuple] = None) -> Killed:
    """`deploy` in the background; its pid in cwd/<name>.pid (for KILL_FROM_FILE)."""
    log_path = cwd / f"{name}.log"
    full = pipeline_env(env)
    argv = [sys.executable, "-m", "pipeline", "deploy"]
    if kill_at_rename is not None:
        path, when = kill_at_rename
        full.update(SIGKILL_AT_PATH=str(path), SIGKILL_AT_WHEN=when)
        argv = [sys.executable, "-c", KILL_AT_RENAME, "deploy"]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(argv, cwd=cwd, env=full, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    (cwd / f"{name}.pid").write_text(f"{process.pid}\n")
    return Killed(process, log_path)


def killer(pid_file: Path, then: str = "") -> str:
    """A command for NGINX_TEST_COMMAND / NGINX_RELOAD_COMMAND: `then` (if any), then SIGKILL the deploy."""
    script = KILL_FROM_FILE.format(pid_file=shlex.quote(str(pid_file)))
    return shlex.join(["sh", "-c", f"{then} && {script}" if then else script])


# -- the checks after the next deploy ------------------------------------------------------------

@dataclass
class Scene:
    world: object
    nginx: Nginx
    env: Dict[str, str]
    cwd: Path

    @property
    def record_path(self) -> Path:
        return self.nginx.include.parent / f"{self.world.app}.releases.json"

    @property
    def lock_path(self) -> Path:
        return self.nginx.include.parent / f"{self.world.app}.deploy.lock"

    def record(self) -> dict:
        try:
            return json.loads(self.record_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def history(self) -> List[dict]:
        path = self.nginx.include.parent / f"{self.world.app}.history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def served(self) -> str:
        return self.nginx.get().text.strip()

    def deploy(self, version: str, context: str = "") -> subprocess.CompletedProcess:
        result = run_pipeline(["deploy"], {**self.env, "APP_VERSION": version}, self.cwd, timeout=180)
        assert result.returncode == 0, f"{context}deploy {version}: exit {result.returncode}\n{result.stderr}"
        return result

    def status(self) -> dict:
        result = run_pipeline(["status", "--json"], self.env, self.cwd, timeout=60)
        assert result.returncode == 0, f"status: exit {result.returncode}\n{result.stderr}"
        return json.loads(result.stdout)

    def assert_status_tells_what_nginx_serves(self, context: str) -> None:
        """Right after a kill, before anything else runs: `status --json` names what nginx serves
        (live color and version, and the record's live release), or, when it cannot tell, says
        so (no live color, and why under switch_problem); never another release."""
        time.sleep(0.5)   # a reload the killed run asked for takes effect within ~0.1 s
        served = self.served()
        status = self.status()
        if status["live_color"] is None and status["switch_problem"]:
            assert status["live_version"] is None, f"{context}{status}"
            return
        live = status["releases"]["live"] or {}
        said = f"version={status['live_version']} color={status['live_color']}"
        assert said == served, (f"{context}nginx serves {served!r}, status says {said!r} "
                                f"(switch_problem: {status['switch_problem']})")
        assert f"version={live.get('version')} color={live.get('color')}" == served, (
            f"{context}nginx serves {served!r}, status's record says {live}")

    def deploy_and_check(self, version: str, context: str) -> str:
        """A plain deploy of `version`, then: nginx serves it, status and the record say so, one
        container of ours runs, no lock is left. The live color."""
        result = self.deploy(version, context)
        try:
            return self._assert_true_state(version, context)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- the deploy of {version}:\n{result.stderr[-3000:]}") from None

    def _assert_true_state(self, version: str, context: str) -> str:
        status = self.status()
        color = status["live_color"]
        where = f"{context}after the deploy of {version}: "
        assert color in ("blue", "green"), f"{where}status says nothing is live: {status}"
        assert self.served() == f"version={version} color={color}", f"{where}nginx serves {self.served()!r}"
        assert status["live_version"] == version, f"{where}status live_version {status['live_version']}"
        live = status["releases"]["live"] or {}
        assert (live.get("version"), live.get("color")) == (version, color), f"{where}record's live is {live}"
        running = sorted(c.name for c in self.world.running_containers())
        assert running == [f"{self.world.app}-{color}"], f"{where}running containers {running}"
        assert not self.lock_path.exists(), f"{where}the lock is left: {self.lock_path.read_text()}"
        guards = sorted(p.name for p in self.lock_path.parent.glob(f".{self.lock_path.name}.takeover-*"))
        assert not guards, f"{where}lock takeover guards are left: {guards}"
        return color


@pytest.fixture
def mode(request) -> str:
    return getattr(request, "param", "reload")


@pytest.fixture
def nginx(mode_nginx: Nginx) -> Nginx:
    """Overrides conftest's: the seed's `set` include, or for mode "live" the Lua balancer whose
    admin takes addresses on the test's network only (conftest's mode_nginx)."""
    return mode_nginx


@pytest.fixture
def scene(world, nginx, settings_env, tmp_path, mode) -> Scene:
    env = {**settings_env, "NGINX_ACCESS_LOG": str(nginx.access_log)}
    if mode == "live":
        # `false`: live mode never tests or reloads nginx; a deploy that did would fail.
        env.update(SWITCH_MODE="live", NGINX_ADMIN_URL=nginx.admin_url, NGINX_ADMIN_TOKEN_FILE=str(nginx.token_file),
                   NGINX_TEST_COMMAND="false", NGINX_RELOAD_COMMAND="false")
    scene = Scene(world, nginx, env, tmp_path)
    scene.deploy("v1")
    assert scene.served() == "version=v1 color=blue"
    return scene


def container_env(tmp_path: Path, **values: str) -> str:
    path = tmp_path / "container.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return str(path)


# -- the named instants ------------------------------------------------------------------------------

def during_build(scene: Scene) -> Killed:
    build = shlex.join(["sh", "-c", "echo build started; sleep 3; echo build done"])
    run = start_deploy({**scene.env, "APP_VERSION": "v2", "BUILD_COMMAND": build}, scene.cwd, "v2")
    run.kill_when(lambda: run.logged("| build started"), 60, "the build to start")
    assert scene.world.state("green") == "absent"
    return run


def after_container_start(scene: Scene) -> Killed:
    env = {**scene.env, "APP_VERSION": "v2",
           "CONTAINER_ENV_FILE": container_env(scene.cwd, STARTUP_DELAY_MS="1500")}
    run = start_deploy(env, scene.cwd, "v2")
    run.kill_when(lambda: run.logged("==> waiting for"), 60, "the container to start")
    assert scene.world.state("green") == "running"
    return run


def during_health(scene: Scene) -> Killed:
    env = {**scene.env, "APP_VERSION": "v2", "HEALTH_TIMEOUT": "60",
           "CONTAINER_ENV_FILE": container_env(scene.cwd, STARTUP_DELAY_MS="30000")}
    run = start_deploy(env, scene.cwd, "v2")
    wait_for(lambda: run.logged("==> waiting for"), 60, 0.05, "the health wait")
    time.sleep(1.0)   # a second into the wait: the release is still starting
    run.kill()
    assert "switching" not in run.log() and scene.world.state("green") == "running"
    return run


def include_renamed_live(scene: Scene) -> Killed:
    """Live mode: killed right after the include's rename, before nginx's balancer is told."""
    run = start_deploy({**scene.env, "APP_VERSION": "v2"}, scene.cwd, "v2",
                       kill_at_rename=(scene.nginx.include, "after"))
    run.wait_killed()
    assert scene.world.network.green_ip in scene.nginx.include.read_text()
    assert scene.served() == "version=v1 color=blue", "nginx was not told: it still serves blue"
    return run


def taking_over_a_stale_lock(scene: Scene) -> Killed:
    """A deploy killed holding the lock, then the next one killed while taking that stale lock
    over (its takeover guard created, the lock not yet replaced)."""
    first = start_deploy({**scene.env, "APP_VERSION": "v2"}, scene.cwd, "v2")
    first.kill_when(lambda: first.logged("==> preflight"), 60, "the lock to be taken")
    first.assert_sigkilled()
    assert scene.lock_path.exists()
    run = start_deploy({**scene.env, "APP_VERSION": "v2b"}, scene.cwd, "v2b",
                       kill_at_rename=(scene.lock_path, "before"))
    run.wait_killed()
    assert list(scene.lock_path.parent.glob(f".{scene.lock_path.name}.takeover-*")), "killed mid-takeover"
    return run


def include_renamed(scene: Scene) -> Killed:
    """NGINX_TEST_COMMAND runs right after the include's rename: killed there, the include names
    green while nginx still serves blue."""
    pid_file = scene.cwd / "v2.pid"
    run = start_deploy({**scene.env, "APP_VERSION": "v2", "NGINX_TEST_COMMAND": killer(pid_file)}, scene.cwd, "v2")
    run.wait_killed()
    assert scene.world.network.green_ip in scene.nginx.include.read_text()
    assert scene.served() == "version=v1 color=blue", "nginx was not told: it still serves blue"
    return run


def reload_started(scene: Scene) -> Killed:
    """Killed by the reload command itself, before it reloads: the switch's check around it had
    begun (it runs on, orphaned, and sees no reload), nginx was never told."""
    pid_file = scene.cwd / "v2.pid"
    run = start_deploy({**scene.env, "APP_VERSION": "v2", "NGINX_RELOAD_COMMAND": killer(pid_file)}, scene.cwd, "v2")
    run.wait_killed()
    assert scene.world.network.green_ip in scene.nginx.include.read_text()
    assert scene.served() == "version=v1 color=blue", "nginx was not told: it still serves blue"
    return run


def after_reload(scene: Scene) -> Killed:
    """Killed by the reload command once `nginx -s reload` returned: before the record is written."""
    pid_file = scene.cwd / "v2.pid"
    reload = killer(pid_file, then=scene.nginx.reload_command)
    run = start_deploy({**scene.env, "APP_VERSION": "v2", "NGINX_RELOAD_COMMAND": reload}, scene.cwd, "v2")
    run.wait_killed()
    assert (scene.record().get("live") or {}).get("version") == "v1", "killed before the record write"
    wait_for(lambda: scene.served() == "version=v2 color=green", 10, 0.05, "nginx to serve v2 after its reload")
    return run


def record_written_aside(scene: Scene) -> Killed:
    """The record's new text is in its temp file; killed at the rename that would replace it."""
    run = start_deploy({**scene.env, "APP_VERSION": "v2"}, scene.cwd, "v2",
                       kill_at_rename=(scene.record_path, "before"))
    run.wait_killed()
    assert (scene.record().get("live") or {}).get("version") == "v1", "killed before the record's rename"
    leftovers = list(scene.record_path.parent.glob(f".{scene.record_path.name}.*.tmp"))
    assert leftovers and '"v2"' in leftovers[0].read_text(), "its new text was written aside"
    return run


def record_replaced(scene: Scene) -> Killed:
    run = start_deploy({**scene.env, "APP_VERSION": "v2"}, scene.cwd, "v2",
                       kill_at_rename=(scene.record_path, "after"))
    run.wait_killed()
    assert (scene.record().get("live") or {}).get("version") == "v2", "killed right after the record's rename"
    assert "draining" not in run.log()
    return run


def during_verification(scene: Scene) -> Killed:
    run = start_deploy({**scene.env, "APP_VERSION": "v2", "VERIFY_SECONDS": "20"}, scene.cwd, "v2")
    run.kill_when(lambda: run.logged("==> verifying"), 60, "verification to start")
    assert scene.world.state("blue") == "running"
    return run


def during_drain(scene: Scene) -> Killed:
    run = start_deploy({**scene.env, "APP_VERSION": "v2", "DRAIN_SECONDS": "20"}, scene.cwd, "v2")
    run.kill_when(lambda: run.logged("==> draining"), 60, "the drain to start")
    assert scene.world.state("blue") == "running"
    return run


INSTANTS = {
    "lock-takeover": taking_over_a_stale_lock,
    "build": during_build,
    "container-started": after_container_start,
    "health": during_health,
    "include-renamed": include_renamed,
    "reload-started": reload_started,
    "nginx-reloaded": after_reload,
    "record-written-aside": record_written_aside,
    "record-replaced": record_replaced,
    "verification": during_verification,
    "drain": during_drain,
}
LIVE_INSTANTS = {
    "include-renamed": include_renamed_live,
    "record-written-aside": record_written_aside,
}
CASES = ([pytest.param("reload", name, id=name) for name in INSTANTS]
         + [pytest.param("live", name, id=f"live-{name}") for name in LIVE_INSTANTS])


@pytest.mark.parametrize("mode,instant", CASES, indirect=["mode"])
def test_sigkill_at_a_named_instant_then_deploy(scene, mode, instant):
    instants = LIVE_INSTANTS if mode == "live" else INSTANTS
    with Traffic(f"http://127.0.0.1:{scene.nginx.port}/", max_seconds=120, max_requests=100_000) as traffic:
        killed = instants[instant](scene)
        killed.assert_sigkilled()
        scene.assert_status_tells_what_nginx_serves(f"killed at {instant}: ")
        scene.deploy_and_check("v3", f"killed at {instant}: ")
        report = traffic.stop()
    # The killed run wrote no history; the run that took over its lock wrote it in for it.
    assert [(e["version"], e["result"]) for e in scene.history()][-2:] == [("v2", "killed"), ("v3", "ok")], \
        scene.history()
    print(f"\n{instant}: {report.ok} answered, {report.failed} failed, versions {dict(report.versions)}")
    assert report.failed == 0, (f"killed at {instant}: {report.failed} failed requests "
                                f"({collections_count(report.failures)})\n--- killed run:\n{killed.log()[-3000:]}")
    assert report.ok > 20


def collections_count(items: List[str]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


# -- random instants -----------------------------------------------------------------------------

KILLS = int(os.environ.get("PIPELINE_SIGKILL_KILLS") or 6)   # more for a long hunt


def test_sigkill_at_random_instants_then_deploy(scene):
    """KILLS deploys, each SIGKILLed after a random delay within a whole deploy's duration and
    followed by a plain deploy, one after the other on the same app, under one stream of traffic."""
    seed = int(os.environ.get("PIPELINE_SIGKILL_SEED") or random.SystemRandom().randrange(10**6))
    rng = random.Random(seed)
    print(f"\nPIPELINE_SIGKILL_SEED={seed}")
    started = time.monotonic()
    scene.deploy("p0")
    whole = time.monotonic() - started   # how long one deploy takes here, now
    with Traffic(f"http://127.0.0.1:{scene.nginx.port}/", max_seconds=240, max_requests=200_000) as traffic:
        for i in range(1, KILLS + 1):
            delay = rng.uniform(0, whole * 1.5)   # under traffic a deploy takes longer
            context = f"seed {seed}, kill {i} after {delay:.2f}s (a deploy takes {whole:.1f}s): "
            run = start_deploy({**scene.env, "APP_VERSION": f"k{i}"}, scene.cwd, f"k{i}")
            time.sleep(delay)
            run.kill()
            reached = run.log().strip().splitlines()[-1:] or ["(nothing logged)"]
            print(f"{context}last line: {reached[0]}")
            scene.assert_status_tells_what_nginx_serves(context)
            scene.deploy_and_check(f"r{i}", context)
            failed = len(traffic.report.failures)
            assert failed == 0, (f"{context}{failed} failed requests ({collections_count(traffic.report.failures)})"
                                 f"\n--- killed run:\n{run.log()[-3000:]}")
        report = traffic.stop()
    print(f"random kills (seed {seed}): {report.ok} answered, {report.failed} failed")
    assert report.failed == 0, f"seed {seed}: {report.failed} failed requests"
    assert report.ok > 20
