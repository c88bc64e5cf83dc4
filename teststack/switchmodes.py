"""The three switch modes on the real stack, and deploys measured under keep-alive load.

    live             SWITCH_MODE=live, nginx/live/app-live.conf (Lua balancer, never reloaded)
    reload           SWITCH_MODE=reload, nginx/conf.d/app.conf (the seed's `proxy_pass $service_url`)
    reload-upstream  SWITCH_MODE=reload, nginx/conf.d/app-upstream.conf (upstream block + keepalive)

For each: the nginx (`make_nginx`) and the settings for a deploy through it (`deploy_env`); and
`measure`, deploys while wrk holds keep-alive connections open (bounded: at most `max_seconds`,
at most `connections` requests every `delay_ms`, to 127.0.0.1 only). wrk counts a "read" error
when a connection it holds is closed or reset under it. Used by tests/integration/test_live_mode.py
and test_verify.py, and by bench/live_vs_reload.py (which compares the modes), readiness.py,
rollback_running.py, rollback_under_load.py and verify_switchback.py.
"""
from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .realstack import LUA_MODULES, Nginx, demo_settings, free_port, run_pipeline

MODES = {"live": "live", "reload": "set", "reload-upstream": "upstream"}   # mode -> Nginx helper form

# wrk's Lua hooks: pace each connection (delay), tally the answers per thread, and print one
# machine-readable line per number at the end (done).
WRK_SCRIPT = r"""
answers = {}
local delay_ms = 50
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    delay_ms = tonumber(args[1]) or delay_ms
end

function delay()
    return delay_ms
end

function response(status, headers, body)
    local key = "HTTP " .. status
    if status == 200 then
        key = body:gsub("[\r\n]+", " "):gsub("%s+$", "")
    end
    answers[key] = (answers[key] or 0) + 1
end

function done(summary, latency, requests)
    io.write(string.format("PIPELINE requests %d\n", summary.requests))
    for kind, count in pairs(summary.errors) do
        io.write(string.format("PIPELINE errors.%s %d\n", kind, count))
    end
    io.write(string.format("PIPELINE p99_ms %.3f\n", latency:percentile(99) / 1000))
    for _, thread in ipairs(threads) do
        for key, count in pairs(thread:get("answers")) do
            io.write(string.format("PIPELINE answer %d %s\n", count, key))
        end
    end
end
"""


@dataclass
class WrkResult:
    requests: int
    connect: int
    read: int
    write: int
    timeout: int
    non_2xx: int
    p99_ms: float
    answers: Dict[str, int]
    seconds: float

    @property
    def errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout + self.non_2xx


def parse_wrk(text: str) -> WrkResult:
    """wrk's output with WRK_SCRIPT's lines; checked against wrk's own summary lines."""
    numbers: Dict[str, float] = {}
    answers: Dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^PIPELINE answer (\d+) (.*)$", line)
        if match:
            answers[match.group(2)] = answers.get(match.group(2), 0) + int(match.group(1))
            continue
        match = re.match(r"^PIPELINE (\S+) ([\d.]+)$", line)
        if match:
            numbers[match.group(1)] = float(match.group(2))
    summary = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", text)
    if summary is None or "requests" not in numbers:
        raise ValueError(f"not wrk output with the pipeline script:\n{text[-2000:]}")
    # wrk prints these lines only when a count is not zero.
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result = WrkResult(
        requests=int(numbers["requests"]),
        connect=int(numbers.get("errors.connect", 0)), read=int(numbers.get("errors.read", 0)),
        write=int(numbers.get("errors.write", 0)), timeout=int(numbers.get("errors.timeout", 0)),
        non_2xx=int(numbers.get("errors.status", 0)), p99_ms=numbers.get("p99_ms", 0.0),
        answers=answers, seconds=_seconds(float(summary.group(2)), summary.group(3)))
    printed = (tuple(int(n) for n in socket_errors.groups()) if socket_errors else (0, 0, 0, 0),
               int(non_2xx.group(1)) if non_2xx else 0, int(summary.group(1)))
    counted = ((result.connect, result.read, result.write, result.timeout), result.non_2xx, result.requests)
    if printed != counted:
        raise ValueError(f"wrk's summary {printed} disagrees with its script's counts {counted}")
    return result


def _seconds(value: float, unit: str) -> float:
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


class Wrk:
    """wrk in the background against a loopback URL, stopped with SIGINT (it then prints its
    summary). Bounded: at most `max_seconds`, and each connection waits `delay_ms` between requests."""

    def __init__(self, url: str, workdir: Path, connections: int = 32, threads: int = 2,
                 delay_ms: int = 50, max_seconds: int = 90) -> None:
        assert url.startswith("http://127."), "load goes to loopback only"
        self.script = workdir / "pipeline-wrk.lua"
        self.script.write_text(WRK_SCRIPT)
        self.argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max_seconds}s", "--timeout", "5s",
                     "--latency", "-s", str(self.script), url, "--", str(delay_ms)]
        self.max_seconds = max_seconds
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "Wrk":
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def stop(self) -> WrkResult:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            output, _ = self.process.communicate(timeout=self.max_seconds + 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return parse_wrk(output)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Measurement:
    mode: str
    wrk: WrkResult
    deploy_seconds: List[float]
    deploy_log: List[str] = field(default_factory=list)

    def row(self) -> Dict[str, object]:
        w = self.wrk
        return {"mode": self.mode, "requests": w.requests, "seconds": round(w.seconds, 1),
                "req_per_s": round(w.requests / w.seconds) if w.seconds else 0, "non_2xx": w.non_2xx,
                "connect": w.connect, "read": w.read, "write": w.write, "timeout": w.timeout,
                "p99_ms": round(w.p99_ms, 1), "deploys_s": "+".join(f"{s:.1f}" for s in self.deploy_seconds)}


class DeployFailed(RuntimeError):
    pass


def measure(mode: str, env: Dict[str, str], nginx: Nginx, cwd: Path, versions: List[str],
            connections: int = 32, threads: int = 2, delay_ms: int = 50, max_seconds: int = 90,
            settle: float = 1.5) -> Measurement:
    """Deploy each version in turn while wrk holds `connections` keep-alive connections to nginx.

    `env` is a complete settings environment whose first release is already live. Load runs
    `settle` seconds before the first deploy and after the last one.
    """
    load = Wrk(f"http://127.0.0.1:{nginx.port}/", cwd, connections, threads, delay_ms, max_seconds).start()
    timings, logs = [], []
    try:
        time.sleep(settle)
        for version in versions:
            started = time.monotonic()
            result = run_pipeline(["deploy"], {**env, "APP_VERSION": version}, cwd)
            timings.append(time.monotonic() - started)
            logs.append(result.stderr)
            if result.returncode != 0:
                raise DeployFailed(f"{mode}: deploy {version} exited {result.returncode}\n{result.stderr}")
        time.sleep(settle)
    except BaseException:
        load.kill()
        raise
    return Measurement(mode, load.stop(), timings, logs)


def deploy_env(app: str, network, nginx: Nginx, stack: Dict[str, str], cwd: Path,
               starts_at_once: bool = False) -> Dict[str, str]:
    """Settings for the demo service through `nginx`, locally; the release starts in ~2 s (an env
    file in `cwd`), or at once with `starts_at_once`."""
    env = {
        **demo_settings(app, network, stack), "APP_VERSION": "v1",
        "HEALTH_INTERVAL": "0.5", "HEALTH_TIMEOUT": "30", "DRAIN_SECONDS": "1", "STOP_TIMEOUT": "5",
        # This bench compares the switches; verification after them is measured in verify_switchback.py.
        "VERIFY_SECONDS": "0", "NGINX_ACCESS_LOG": str(nginx.access_log),
        "NGINX_HOST": "", "NGINX_INCLUDE": str(nginx.include),
        "NGINX_TEST_COMMAND": nginx.test_command, "NGINX_RELOAD_COMMAND": nginx.reload_command,
        "NGINX_PID_FILE": str(nginx.pid_file),
    }
    if not starts_at_once:
        env_file = cwd / "app.env"
        env_file.write_text("STARTUP_DELAY_MS=2000\n")
        env["CONTAINER_ENV_FILE"] = str(env_file)
    if nginx.form == "upstream":
        env["NGINX_INCLUDE_FORM"] = "upstream"
    if nginx.form == "live":
        # `false`: live mode must never test or reload nginx, and a deploy that did would fail.
        env.update(SWITCH_MODE="live", NGINX_ADMIN_URL=nginx.admin_url, NGINX_ADMIN_TOKEN_FILE=str(nginx.token_file),
                   NGINX_TEST_COMMAND="false", NGINX_RELOAD_COMMAND="false")
    return env


def make_nginx(mode: str, directory: Path, network) -> Nginx:
    """The nginx for `mode`; for live, its admin takes addresses on `network` only, and its token
    file is written when it starts."""
    form = MODES[mode]
    directory.mkdir(parents=True, exist_ok=True)
    return Nginx(directory, free_port(), free_port(), form=form,
                 extra_conf=list(LUA_MODULES) if form == "live" else [],
                 admin_port=free_port() if form == "live" else 0,
                 allowed_networks=[network.subnet] if form == "live" else [])
