"""Rollback to a kept, stopped container, under load: is traffic back on it within 3 s?

    bash scripts/stack.sh start
    python -m bench.rollback_speed [--rounds 3] [--limit 3.0] [--json out.json]

The demo service (it starts in well under a second: no STARTUP_DELAY_MS) is deployed twice with
`python -m pipeline deploy` through an nginx of the bench's own (the shipped app.conf), on a
docker network of its own (created by the tool, removed after the last request). Then, `--rounds`
times, `python -m pipeline rollback` runs while four client threads send GET / through nginx
(127.0.0.1 only, a new connection per request, bounded by time and count). Each rollback goes
back to the release the one before it left kept and stopped, so every round starts a stopped
container, health-checks it and switches.

For each round: the seconds from the command's start until nginx first answered with the rolled
back release, the command's wall time, and the requests that failed. It ASSERTS: every round must
serve the rolled-back release within `--limit` seconds of the command's start, lose no request,
and exit 0; otherwise this script exits 1. Results: docs/benchmarks.md, "Rollback" (the test
suite does not run it: tests/integration/test_rollback_rounds.py proves the same rounds lose
nothing, with a tripwire at 10x this figure).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import List, Optional

import docker

from bench.common import QUICK_TIMINGS, bench_env
from teststack.realstack import (Nginx, free_port, remove_app, remove_network,
                                 reserve_network, run_pipeline, stack_env)
from teststack.traffic import Traffic

REPO = Path(__file__).resolve().parents[1]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=float, default=3.0, help="seconds from the command's start")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    stack = stack_env()
    jar = REPO / "demo" / "build" / "libs" / "app.jar"
    if not jar.is_file():
        subprocess.run(["bash", str(REPO / "demo" / "build.sh")], check=True, cwd=REPO / "demo")
    client = docker.from_env()
    net = reserve_network(client)
    app = f"brb{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix=f"{app}-"))
    nginx = Nginx(work / "nginx", free_port(), free_port())
    nginx.directory.mkdir()
    # The rollback is measured, not the verification window of the deploys before it (this nginx
    # writes no `pipeline` access log for it to read).
    env = bench_env(app, net, nginx, stack, **QUICK_TIMINGS, VERIFY_SECONDS="0")
    rounds: List[dict] = []
    problems: List[str] = []
    nginx.start()
    try:
        for version in ("v1", "v2"):
            done = run_pipeline(["deploy"], {**env, "APP_VERSION": version}, work)
            if done.returncode != 0:
                print(f"deploy {version} failed (exit {done.returncode}):\n{done.stderr}", file=sys.stderr)
                return 1
        serving = {"v1": "version=v1 color=blue", "v2": "version=v2 color=green"}
        target = "v1"
        for number in range(1, args.rounds + 1):
            state = client.containers.get(f"{app}-{'blue' if target == 'v1' else 'green'}").status
            with Traffic(f"http://127.0.0.1:{nginx.port}/", threads=4, max_seconds=60) as traffic:
                started = time.monotonic()
                result = run_pipeline(["rollback"], env, work, timeout=60)
                wall = time.monotonic() - started
                time.sleep(0.3)
                report = traffic.stop()
            first = report.first_seen.get(serving[target])
            row = {"round": number, "to": target, "kept_container_was": state, "exit": result.returncode,
                   "served_after": round(first - started, 3) if first is not None else None,
                   "wall": round(wall, 3), "requests": report.sent, "failed": report.failed,
                   "phases": [line for line in result.stderr.splitlines() if "==>" in line or "healthy" in line]}
            rounds.append(row)
            print(f"round {number}: rollback to {target} (kept container {state}): served after "
                  f"{row['served_after']}s, command {row['wall']}s, {report.sent} requests, "
                  f"{report.failed} failed", file=sys.stderr, flush=True)
            for line in row["phases"]:
                print(f"    {line}", file=sys.stderr)
            if result.returncode != 0:
                problems.append(f"round {number}: rollback exited {result.returncode}: {result.stderr.strip()[-300:]}")
            if state != "exited":
                problems.append(f"round {number}: the kept container was {state}, not stopped")
            if row["served_after"] is None or row["served_after"] > args.limit:
                problems.append(f"round {number}: {target} served after {row['served_after']}s, limit {args.limit}s")
            if report.failed:
                problems.append(f"round {number}: {report.failed} requests failed: {report.failures[:3]}")
            target = "v2" if target == "v1" else "v1"
    finally:
        nginx.stop()
        remove_app(client, app)
        remove_network(client, net.name)
        shutil.rmtree(work, ignore_errors=True)

    served = [r["served_after"] for r in rounds if r["served_after"] is not None]
    summary = {"limit": args.limit, "rounds": rounds, "served_after_max": max(served) if served else None,
               "ok": not problems, "problems": problems}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}))
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
