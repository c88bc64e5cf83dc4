"""Deploy wall time and healthy->served: REPLICAS=3 on the test swarm against the single host.

    bash scripts/stack.sh start            # the single host's dockerd, registry, JRE image
    python -m bench.swarm_vs_single [--rounds 3] [--json out.json]

For each target the demo service is deployed once (v1), then `--rounds` more times (v2, v3, ...)
with `python -m pipeline deploy` through a local nginx of the bench's own (reload mode; the
single host uses the shipped app.conf, the swarm app-upstream.conf with one server per task),
while four client threads send GET / through nginx (127.0.0.1 only, a new connection per request,
bounded by time and count). For each deploy: the command's wall time, the time from the health
gate passing (its "healthy" log line) until nginx first answered with the new release, and the
requests that failed. The swarm is started with scripts/swarm.sh (3 nodes in network namespaces
on this machine, left running). Results: docs/benchmarks.md, "Swarm".
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

import docker

from bench.common import QUICK_TIMINGS, bench_env, nginx_settings
from pipeline.compose import make_target
from teststack.realstack import (Nginx, free_port, remove_app, remove_network,
                                 reserve_network, run_pipeline, stack_env)
from teststack.swarmstack import start_swarm, swarm_env, swarm_settings
from teststack.traffic import Traffic

REPO = Path(__file__).resolve().parents[1]

_HEALTHY = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) +healthy", re.M)


def healthy_at(stderr: str, started_wall: float) -> Optional[float]:
    """The wall-clock time of the gate's "healthy" line (the log shows HH:MM:SS.mmm, local time)."""
    match = _HEALTHY.search(stderr)
    if not match:
        return None
    day = datetime.fromtimestamp(started_wall).strftime("%Y-%m-%d")
    return datetime.strptime(f"{day} {match.group(1)}", "%Y-%m-%d %H:%M:%S.%f").timestamp()


def rounds_for(target: str, env: Dict[str, str], nginx: Nginx, work: Path, rounds: int) -> List[dict]:
    first = run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, work)
    if first.returncode != 0:
        raise SystemExit(f"{target}: deploy v1 failed (exit {first.returncode}):\n{first.stderr}")
    out = []
    for number in range(2, rounds + 2):
        version = f"v{number}"
        with Traffic(f"http://127.0.0.1:{nginx.port}/", threads=4, max_seconds=240) as traffic:
            started, started_wall = time.monotonic(), time.time()
            result = run_pipeline(["deploy"], {**env, "APP_VERSION": version}, work, timeout=240)
            wall = time.monotonic() - started
            time.sleep(0.3)
            report = traffic.stop()
        if result.returncode != 0:
            raise SystemExit(f"{target}: deploy {version} failed (exit {result.returncode}):\n{result.stderr}")
        seen = [t for body, t in report.first_seen.items() if body.startswith(f"version={version} ")]
        healthy = healthy_at(result.stderr, started_wall)
        served = (min(seen) - started + started_wall) if seen else None
        row = {"target": target, "version": version, "wall": round(wall, 2),
               "healthy_to_served": round(served - healthy, 3) if served and healthy else None,
               "requests": report.sent, "failed": report.failed}
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.append(row)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    stack = stack_env()
    jar = REPO / "demo" / "build" / "libs" / "app.jar"
    if not jar.is_file():
        subprocess.run(["bash", str(REPO / "demo" / "build.sh")], check=True, cwd=REPO / "demo")
    rows: List[dict] = []

    # The single host.
    client = docker.from_env()
    net = reserve_network(client)
    app = f"bsv{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix=f"{app}-"))
    nginx = Nginx(work / "nginx", free_port(), free_port())
    nginx.directory.mkdir()
    timings = {**QUICK_TIMINGS, "VERIFY_SECONDS": "0"}
    env = bench_env(app, net, nginx, stack, **timings)
    nginx.start()
    try:
        rows += rounds_for("docker", env, nginx, work, args.rounds)
    finally:
        nginx.stop()
        remove_app(client, app)
        remove_network(client, net.name)
        shutil.rmtree(work, ignore_errors=True)

    # The swarm, REPLICAS=3.
    swarm = start_swarm(stack)
    app = f"s{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix=f"{app}-"))
    nginx = Nginx(work / "nginx", free_port(), free_port(), form="upstream")
    nginx.directory.mkdir()
    env = swarm_env(swarm, app, **{**timings, **nginx_settings(nginx), "REPLICAS": "3", "HEALTH_TIMEOUT": "120"})
    nginx.start()
    try:
        rows += rounds_for("swarm", env, nginx, work, args.rounds)
    finally:
        nginx.stop()
        engine = make_target(swarm_settings(swarm, app), {})
        for color in ("blue", "green"):
            engine.remove(color)
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
