"""Live switch vs reload, under keep-alive load: two deploys back to back while wrk keeps N
connections open and idle between requests, as browsers and API clients do.

    python -m bench.live_vs_reload [--modes live,reload,reload-upstream] [--json FILE]

Needs the real stack (`bash scripts/stack.sh start`), nginx with Debian's libnginx-mod-http-lua,
and wrk. Each mode gets its own nginx on free 127.0.0.1 ports, its own docker network and app
name, all removed afterwards. The new release takes STARTUP_DELAY_MS=2000 to start, like a small
Spring Boot service. The modes, and the measurement itself, are teststack/switchmodes.py's (the
tests run the same `measure`).

The load is bounded: wrk runs for at most --max-seconds and at most `connections` requests every
--delay-ms, to 127.0.0.1 only. wrk counts a "read" error when a connection it holds is closed or
reset under it (an idle keep-alive connection closed by an exiting nginx worker counts too: a
client that does not retry sees it as a failure).
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Dict, List

from bench import common
from teststack.realstack import run_pipeline, stack_env
from teststack.switchmodes import MODES, DeployFailed, Measurement, deploy_env, make_nginx, measure

COLUMNS = ["mode", "requests", "seconds", "req_per_s", "non_2xx", "connect", "read", "write", "timeout",
           "p99_ms", "deploys_s"]


def format_table(rows: List[Dict[str, object]]) -> str:
    return common.format_table(rows, COLUMNS)


def _run_mode(mode: str, args: argparse.Namespace, stack: Dict[str, str], client) -> Measurement:
    with common.nginx_world(client, f"bench-{mode}-", partial(make_nginx, mode)) as (cwd, network, app, nginx):
        env = deploy_env(app, network, nginx, stack, cwd)
        first = run_pipeline(["deploy"], env, cwd)
        if first.returncode != 0:
            raise DeployFailed(f"{mode}: first deploy exited {first.returncode}\n{first.stderr}")
        return measure(mode, env, nginx, cwd, ["v2", "v3"], args.connections, args.threads,
                       args.delay_ms, args.max_seconds)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="live,reload,reload-upstream")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--delay-ms", type=int, default=50, help="each connection's pause between requests")
    parser.add_argument("--max-seconds", type=int, default=90, help="wrk's hard limit per mode")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every mode this many times")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not 1 <= args.connections <= 256 or args.max_seconds > 300 or args.delay_ms < 5:
        parser.error(f"bad arguments (modes from {', '.join(MODES)}; connections 1-256; "
                     f"max-seconds up to 300; delay-ms at least 5)")

    import docker

    stack = stack_env()
    client = docker.from_env()
    common.ensure_demo_jar()
    rows = []
    for round_number in range(args.rounds):
        for mode in modes:
            measurement = _run_mode(mode, args, stack, client)
            rows.append({**measurement.row(), "round": round_number + 1,
                         "answers": measurement.wrk.answers})
            print(f"# {mode} round {round_number + 1}: {measurement.wrk.answers}", file=sys.stderr)
    common.write_rows(rows, COLUMNS, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
