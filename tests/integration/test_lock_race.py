"""The deploy lock under races (issue 8, section 3): six real deploys started at once against the
lock of a SIGKILLed run. Exactly one takes the stale lock over; the others exit 4, or with
--lock-wait wait and run one after another, never two at the same time."""
from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from .outside import pump
from teststack.realstack import run_pipeline, start_pipeline, wait_for

pytestmark = pytest.mark.integration

RUNS = 6


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def env_file(tmp_path, text):
    path = tmp_path / "slow-start.env"
    path.write_text(text + "\n")
    return str(path)


def leave_a_stale_lock(world, nginx, env, tmp_path):
    """A deploy SIGKILLed while it holds the lock (its new container still starting)."""
    lock_file = nginx.include.parent / f"{world.app}.deploy.lock"
    victim = start_pipeline(["deploy"], {**env, "APP_VERSION": "v0", "HEALTH_TIMEOUT": "60",
                                         "CONTAINER_ENV_FILE": env_file(tmp_path, "STARTUP_DELAY_MS=30000")},
                            tmp_path)
    wait_for(lock_file.exists, 60, 0.02, "the victim's lock")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    status = ok(run_pipeline(["lock", "status"], env, tmp_path)).stdout
    assert "stale: its process is gone" in status, status
    return lock_file


class StartingGate:
    """The docker socket behind a gate: every run's first call to the engine (connect's ping,
    before the lock) is held until all runs have made it, then all go on together. So six
    processes that start a few hundred ms apart reach the lock within milliseconds of each
    other. Past the gate it only forwards bytes to the real engine."""

    def __init__(self, directory: Path, runs: int, engine: str = "/var/run/docker.sock") -> None:
        self.path = str(directory / "gated-docker.sock")
        self.runs, self.engine = runs, engine
        self.open = threading.Event()
        self.arrived = 0
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(64)
        self.server.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.server.accept()
            except socket.timeout:
                continue
            self.arrived += 1
            if self.arrived >= self.runs:
                self.open.set()
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        if not self.open.wait(120):
            client.close()
            return
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(self.engine)
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()


def start_all(args, env, tmp_path, versions):
    gate = StartingGate(tmp_path, len(versions))
    try:
        return _start_all(args, {**env, "DOCKER_HOST": gate.docker_host}, tmp_path, versions)
    finally:
        gate.close()


def _start_all(args, env, tmp_path, versions):
    runs = [start_pipeline(args, {**env, "APP_VERSION": v, "BUILD_TAG": f"run-{v}"}, tmp_path) for v in versions]
    results = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=600)
        results.append((run.returncode, stderr))
    return results


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_six_deploys_at_once_on_a_killed_runs_lock_one_runs_five_exit_4(world, nginx, settings_env, ssh_env,
                                                                         tmp_path, where):
    env = ssh_env if where == "ssh" else settings_env
    lock_file = leave_a_stale_lock(world, nginx, env, tmp_path)
    # The winner's release starts slowly, so it still holds the lock when the last of six looks.
    slow = {**env, "HEALTH_TIMEOUT": "90", "CONTAINER_ENV_FILE": env_file(tmp_path, "STARTUP_DELAY_MS=8000")}
    versions = [f"v{n}" for n in range(1, RUNS + 1)]
    results = start_all(["deploy"], slow, tmp_path, versions)

    codes = [code for code, _ in results]
    assert sorted(codes) == [0] + [4] * (RUNS - 1), "\n\n".join(err for _, err in results)
    winner = versions[codes.index(0)]
    winner_err = results[codes.index(0)][1]
    assert "taking over a stale lock" in winner_err and "deploy of v0" in winner_err
    for code, stderr in results:
        if code == 4:
            assert "taking over" not in stderr
            lines = [line for line in stderr.splitlines() if line.startswith("pipeline: error:")]
            assert len(lines) == 1 and f"is held: run-{winner} on" in lines[0], stderr
            assert "its process is running" in lines[0]
    assert nginx.get().text.startswith(f"version={winner} ")
    assert not lock_file.exists()
    assert list(lock_file.parent.glob(f".{lock_file.name}.takeover-*")) == [], "no takeover guard left"


def _log_seconds(line: str) -> float:
    hh, mm, ss = line.split(" ", 1)[0].split(":")
    return int(hh) * 3600 + int(mm) * 60 + float(ss)


def test_six_deploys_with_lock_wait_take_turns(world, nginx, settings_env, tmp_path):
    lock_file = leave_a_stale_lock(world, nginx, settings_env, tmp_path)
    versions = [f"v{n}" for n in range(1, RUNS + 1)]
    t0 = time.time()
    results = start_all(["deploy", "--lock-wait", "400"], settings_env, tmp_path, versions)

    assert [code for code, _ in results] == [0] * RUNS, "\n\n".join(err for _, err in results)
    assert sum("taking over a stale lock" in err for _, err in results) == 1
    assert sum("waiting up to 400s for the deploy lock" in err for _, err in results) == RUNS - 1

    # From preflight (right after the lock is taken) to done (right before it is released): no two
    # runs overlap. Log times are the local wall clock; made relative to the test's start.
    local = time.localtime(t0)
    t0_of_day = local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + t0 % 1
    spans = []
    for version, (_, stderr) in zip(versions, results):
        lines = stderr.splitlines()
        first = next(line for line in lines if re.search(r"^\S+ ==> preflight$", line))
        last = next(line for line in lines if " ==> done: " in line)
        begin = (_log_seconds(first) - t0_of_day) % 86400
        end = (_log_seconds(last) - t0_of_day) % 86400
        spans.append((begin, end, version))
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        assert end <= begin, f"{a} and {b} ran at the same time: {spans}"
    last_version = spans[-1][2]
    assert nginx.get().text.startswith(f"version={last_version} ")
    assert not lock_file.exists()

    history = json.loads(ok(run_pipeline(["history", "--json"], settings_env, tmp_path)).stdout)
    entries = [e for e in history if e["action"] == "deploy" and e["result"] == "ok"]
    assert sorted(e["version"] for e in entries) == versions


def test_a_damaged_lock_is_one_line_and_exit_4_until_released(world, nginx, settings_env, tmp_path):
    lock_file = nginx.include.parent / f"{world.app}.deploy.lock"
    lock_file.write_text("<<<<<<< HEAD\n")
    include = nginx.include.read_text()
    started = time.monotonic()
    blocked = run_pipeline(["deploy", "--lock-wait", "300"], settings_env, tmp_path)
    assert blocked.returncode == 4, blocked.stderr
    assert time.monotonic() - started < 60, "no waiting on a lock that waiting cannot repair"
    errors = [line for line in blocked.stderr.splitlines() if line.startswith("pipeline:")]
    assert errors == [f"pipeline: error: deploy lock {lock_file} is damaged: not a lock pipeline wrote "
                      "('<<<<<<< HEAD'); if no deploy is running, remove it with "
                      "`python -m pipeline lock release`"], blocked.stderr
    assert nginx.include.read_text() == include and world.running_containers() == []
    assert "damaged lock file" in ok(run_pipeline(["lock", "status"], settings_env, tmp_path)).stdout
    ok(run_pipeline(["lock", "release"], settings_env, tmp_path))
    ok(run_pipeline(["deploy"], settings_env, tmp_path))
    assert nginx.get().text == "version=v1 color=blue\n"
