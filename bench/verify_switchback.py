"""A bad release under load: how soon is traffic back on the old one, and how many requests failed?

    python -m bench.verify_switchback [--modes reload,reload-ssh,live] [--rounds 3] [--json FILE]

Needs the real stack (`bash scripts/stack.sh start`), nginx with Debian's libnginx-mod-http-lua and
wrk. For each mode and round: a fresh nginx of its own (127.0.0.1, free ports), its own docker
network and app name; v1 is deployed; then, while wrk sends steady load (a new connection per
request, 16 connections each pausing 20 ms: at most 800 req/s, bounded by --max-seconds), v2 is
deployed with FAIL_RATE=0.3 (the demo answers
500 to 30% of requests, its health stays fine) and VERIFY_SECONDS=10. The tool switches back.

The bench's nginx logs $msec too (its own copy of the log format; see timeline.log_msec), so
nginx's access log places every request to the millisecond. Reported per run:
  back_s      from the first 500 v2 answered to the last request nginx sent to v2
  failed      requests v2 answered 5xx meanwhile (from the log)
  to_v2       requests nginx sent to v2 in all
  wrk_failed  what wrk counted as failed over the whole run (non-2xx and socket errors)
  rate        wrk's req/s over the run
  tool        what the tool counted before it switched back (from its error line)

Modes: reload (SWITCH_MODE=reload, app.conf, access log read locally), reload-ssh (the same, the
nginx host reached over SSH on 127.0.0.1:2222 and the access log over SFTP), live (SWITCH_MODE=live,
app-live.conf, the Lua counters through the admin).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Dict, List

from bench.common import ensure_demo_jar, nginx_world, ssh_settings, write_rows
from teststack import loadgen
from teststack.realstack import run_pipeline, stack_env
from teststack.switchmodes import deploy_env, make_nginx
from teststack.timeline import bad_window, log_msec

MODES = {"reload": ("reload", False), "reload-ssh": ("reload", True), "live": ("live", False)}

COLUMNS = ["mode", "round", "back_s", "failed", "to_v2", "wrk_failed", "rate", "tool"]


def one_run(mode: str, stack: Dict[str, str], client, max_seconds: int) -> Dict[str, object]:
    switch_mode, over_ssh = MODES[mode]
    with nginx_world(client, f"bench-verify-{mode}-",
                     partial(make_nginx, switch_mode)) as (cwd, network, app, nginx):
        log_msec(nginx)
        env = deploy_env(app, network, nginx, stack, cwd, starts_at_once=True)
        env.update(VERIFY_SECONDS="10", NGINX_ACCESS_LOG=str(nginx.access_log), DRAIN_SECONDS="0.5")
        if over_ssh:
            env.update(ssh_settings(stack))
        first = run_pipeline(["deploy"], env, cwd)
        if first.returncode != 0:
            raise SystemExit(f"{mode}: deploy v1 exited {first.returncode}\n{first.stderr}")
        bad = cwd / "bad.env"
        bad.write_text("FAIL_RATE=0.3\n")
        url = f"http://127.0.0.1:{nginx.port}/"
        with loadgen.Load(url, profile="close", connections=16, seconds=max_seconds, pause_ms=20) as wrk:
            time.sleep(1)
            result = run_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "CONTAINER_ENV_FILE": str(bad)}, cwd)
            time.sleep(1)
        if result.returncode != 1 or "switched back to blue" not in result.stderr:
            raise SystemExit(f"{mode}: the bad deploy was not switched back (exit {result.returncode})\n"
                             f"{result.stderr}")
        load = wrk.result
        green = bad_window(nginx.access_log, f"{network.green_ip}:8080")
        counted = re.search(r"answered 5xx to ([\d.]+%) of (\d+) requests", result.stderr)
        return {"mode": mode, "back_s": round(green.back_after, 2) if green.back_after is not None else None,
                "failed": green.errors, "to_v2": green.requests, "wrk_failed": load.failed,
                "rate": round(load.rate), "tool": f"{counted.group(1)} of {counted.group(2)}" if counted else _error_line(result.stderr)}


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("pipeline: error:")]
    return lines[-1][len("pipeline: error: "):][:100] if lines else "?"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="reload,reload-ssh,live")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seconds", type=int, default=60, help="wrk's and the poller's hard limit per run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes) or not 1 <= args.rounds <= 10 or not 10 <= args.max_seconds <= 300:
        parser.error(f"modes from {', '.join(MODES)}; rounds 1-10; max-seconds 10-300")

    import docker

    stack = stack_env()
    client = docker.from_env()
    ensure_demo_jar()
    rows = []
    for round_number in range(args.rounds):
        for mode in modes:
            rows.append({**one_run(mode, stack, client, args.max_seconds), "round": round_number + 1})
            print(f"# {rows[-1]}", file=sys.stderr)
    write_rows(rows, COLUMNS, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
