"""Several nginx hosts switched as one (issue 17): the switch skew, and the deploy wall time for 1
host vs 2.

    bash scripts/stack.sh start
    python -m bench.several_hosts [--rounds 3] [--json out.json]

For each switch mode (reload, live) and each number of nginx hosts (1, 2): nginx hosts of their
own (teststack/severalhosts.py: nginx + sshd each in its own network and mount namespace, no
default route, in front of the single engine's containers), a first deploy, then `--rounds`
deploys through `python -m pipeline deploy` over SSH while wrk sends load to every host in use
(inside each host's namespace, to its own nginx: a new connection per request, 8 connections
paced 10 ms, bounded by time), then `--rounds` more without load (the wall time of the same deploy
on a quiet machine: the load on two hosts is twice the load on one). Per deploy under load: the
command's wall time, failed requests, and with two hosts the skew between the first and the last
host serving the new release, twice:

- reported: what the tool logs (when each host's commit completed: the reload seen to apply, or
  the PUT read back; first to last);
- observed: from the hosts' own access logs (`msec=$msec` added to the bench's copy of the log
  format): the first request each host sent to the new release, first host to last.

Results: docs/benchmarks.md, "Several nginx hosts".
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import docker

from bench.common import QUICK_TIMINGS, demo_settings
from pipeline.core.answers import parse_log_line
from teststack.realstack import remove_app, reserve_network, run_pipeline, stack_env
from teststack.severalhosts import HostsOnNetwork

_SKEW = re.compile(r"nginx hosts switched the live route to \S+; skew ([\d.]+) ms")
_MSEC = re.compile(r" msec=(\d+\.\d+)")


def log_msec(hosts: HostsOnNetwork) -> None:
    """`msec=$msec` at the end of every host's `pipeline` log format (the tool's fields parse as
    before), then nginx reloaded there."""
    marker = "upstream_response_time=$upstream_response_time'"
    for host in hosts.hosts:
        path = host.file("/etc/nginx/conf.d/00-log-format.conf")
        text = path.read_text()
        assert marker in text, "the shipped log format changed; update bench/several_hosts.py"
        path.write_text(text.replace(marker, "upstream_response_time=$upstream_response_time msec=$msec'"))
        host.run("nginx", "-s", "reload")
    time.sleep(1)


def first_new(path: Path, offset: int, address: str) -> Optional[float]:
    """$msec of the first request logged after `offset` that went to `address`."""
    with open(path, "rb") as log:
        log.seek(offset)
        for line in log.read().decode("utf-8", "replace").splitlines():
            parsed, msec = parse_log_line(line), _MSEC.search(line)
            if parsed is not None and parsed[0] == address and msec:
                return float(msec.group(1))
    return None


def run_config(mode: str, count: int, rounds: int, stack: Dict[str, str]) -> List[dict]:
    client = docker.from_env()
    network = reserve_network(client)
    app = f"bench{uuid.uuid4().hex[:6]}"
    hosts = HostsOnNetwork.start(client, network, mode, count)
    work = hosts.dir / "work"
    work.mkdir()
    env = {**demo_settings(app, network, stack), **QUICK_TIMINGS, "DRAIN_SECONDS": "1", "VERIFY_SECONDS": "0",
           **hosts.env()}
    rows = []
    try:
        log_msec(hosts)
        first = run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, work, timeout=240)
        if first.returncode != 0:
            raise SystemExit(f"{mode} x{count}: deploy v1 failed (exit {first.returncode}):\n{first.stderr}")
        new_ip = network.green_ip
        for number in range(2, rounds + 2):
            version = f"v{number}"
            sizes = [h.access_log.stat().st_size for h in hosts.hosts]
            loads = hosts.load(seconds=120)
            time.sleep(1)
            started = time.monotonic()
            result = run_pipeline(["deploy"], {**env, "APP_VERSION": version}, work, timeout=240)
            wall = time.monotonic() - started
            time.sleep(0.5)
            results = [load.stop() for load in loads]
            if result.returncode != 0:
                raise SystemExit(f"{mode} x{count}: deploy {version} failed (exit {result.returncode}):\n"
                                 f"{result.stderr}")
            reported = _SKEW.search(result.stderr)
            seen = [first_new(h.access_log, size, f"{new_ip}:8080") for h, size in zip(hosts.hosts, sizes)]
            observed = (max(seen) - min(seen)) * 1000 if count > 1 and None not in seen else None   # type: ignore[operator]
            row = {"mode": mode, "hosts": count, "version": version, "wall_s": round(wall, 2),
                   "skew_reported_ms": float(reported.group(1)) if reported else None,
                   "skew_observed_ms": round(observed, 1) if observed is not None else None,
                   "requests": sum(r.sent for r in results), "failed": sum(r.failed for r in results)}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
            new_ip = network.blue_ip if new_ip == network.green_ip else network.green_ip
        for number in range(rounds + 2, 2 * rounds + 2):   # the same deploys without load
            version = f"v{number}"
            started = time.monotonic()
            result = run_pipeline(["deploy"], {**env, "APP_VERSION": version}, work, timeout=240)
            wall = time.monotonic() - started
            if result.returncode != 0:
                raise SystemExit(f"{mode} x{count}: deploy {version} failed (exit {result.returncode}):\n"
                                 f"{result.stderr}")
            reported = _SKEW.search(result.stderr)
            row = {"mode": mode, "hosts": count, "version": version, "quiet": True, "wall_s": round(wall, 2),
                   "skew_reported_ms": float(reported.group(1)) if reported else None}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        remove_app(client, app)
        hosts.stop()
    return rows


def summary(rows: List[dict]) -> List[dict]:
    out = []
    for mode in ("reload", "live"):
        for count in (1, 2):
            mine = [r for r in rows if r["mode"] == mode and r["hosts"] == count and not r.get("quiet")]
            quiet = [r["wall_s"] for r in rows if r["mode"] == mode and r["hosts"] == count and r.get("quiet")]
            if not mine:
                continue

            def med(key: str) -> Optional[float]:
                values = [r[key] for r in mine if r[key] is not None]
                return round(statistics.median(values), 1) if values else None

            out.append({"mode": mode, "hosts": count, "deploys": len(mine), "wall_s_median": med("wall_s"),
                        "quiet_wall_s_median": round(statistics.median(quiet), 1) if quiet else None,
                        "skew_reported_ms_median": med("skew_reported_ms"),
                        "skew_reported_ms_max": max((r["skew_reported_ms"] for r in mine
                                                     if r["skew_reported_ms"] is not None), default=None),
                        "skew_observed_ms_median": med("skew_observed_ms"),
                        "skew_observed_ms_max": max((r["skew_observed_ms"] for r in mine
                                                     if r["skew_observed_ms"] is not None), default=None),
                        "requests": sum(r["requests"] for r in mine), "failed": sum(r["failed"] for r in mine)})
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="reload,live")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    stack = stack_env()
    rows: List[dict] = []
    for mode in args.modes.split(","):
        for count in (1, 2):
            rows += run_config(mode, count, args.rounds, stack)
    table = summary(rows)
    for line in table:
        print(json.dumps(line))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
