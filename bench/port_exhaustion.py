"""Does nginx's connection to the backend run out of local ports? The seed's set form against the
upstream (keepalive) form, for each value of net.ipv4.tcp_tw_reuse, at a steady ~1,000 req/s.

    bash scripts/stack.sh start
    python -m bench.port_exhaustion [--seconds 60] [--connections 24] [--pause-ms 19]
                                    [--cases set:2,set:0,set:1,upstream:2] [--json out.json]

tcp_tw_reuse belongs to a network namespace, and this machine's is shared with other users (and
set to 1 by scripts/stack.sh for the tests), so each case runs nginx in a namespace of its own: a
holder container on the bench network, created with `--sysctl net.ipv4.tcp_tw_reuse=N`, whose
namespace nginx (the shipped app.conf or app-upstream.conf) and wrk enter with nsenter. wrk
talks to 127.0.0.1 inside that namespace; nginx to the backend container on the bench network.
A new namespace starts with the kernel's default, 2 (reuse for loopback connections only), which
is what a stock nginx host has: nginx -> backend is not loopback, so it is not reused.

Per case: at most --seconds of keep-alive load, paced (each connection waits --pause-ms between
requests, so ~1,000 req/s with the defaults), in one-second wrk runs so the first failure can be
placed; the load stops 5 s after it. Prints the answers per second early and late in the run,
the worst latency late in it, non-2xx, socket errors, when the first failure came, the most
sockets in TIME_WAIT towards the backend, and nginx's "Cannot assign requested address" errors.
wrk is a closed loop (a connection sends its next request only after the answer), so when
nginx's connect() slows down the offered load drops with it: look at the rate and latency, not
only at the errors.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from bench.common import BenchNetwork
from teststack import loadgen
from teststack.realstack import Nginx


@dataclass
class Case:
    form: str
    tw_reuse: int
    seconds: float
    requests: int
    rate: float
    non_2xx: int
    socket_errors: int
    first_failure_after: Optional[float]
    time_wait_max: int
    cannot_assign: int
    local_port_range: str
    per_second: List[dict]           # each one-second slice: answers, max latency, failures


class Bench(BenchNetwork):
    def __init__(self, args) -> None:
        super().__init__("ports")
        self.args = args

    def __enter__(self) -> "Bench":
        super().__enter__()
        self.run("backend", self.net.blue_ip, environment={"APP_VERSION": "v1", "APP_COLOR": "blue"})
        return self

    def case(self, form: str, tw_reuse: int) -> Case:
        holder = self.run(f"ns-{form}-{tw_reuse}", self.net.green_ip, sysctls={"net.ipv4.tcp_tw_reuse": str(tw_reuse)},
                          environment={"APP_VERSION": "holder"})
        enter = ["nsenter", f"--net=/proc/{holder.attrs['State']['Pid']}/ns/net"]
        directory = self.work / f"nginx-{form}-{tw_reuse}"
        directory.mkdir()
        nginx = Nginx(directory, 8000, 8001, form=form)
        nginx.write_config()
        backend = f"{self.net.blue_ip}:8080"
        nginx.include.write_text(f"upstream app_live {{\n    server {backend};\n    keepalive 32;\n}}\n"
                                 if form == "upstream" else f"set $service_url http://{backend};\n")
        nginx.preview_include.write_text(f"set $preview_url http://{backend};\n")
        subprocess.run([*enter, *nginx.argv()], check=True)
        try:
            ports = subprocess.run([*enter, "cat", "/proc/sys/net/ipv4/ip_local_port_range"], capture_output=True,
                                   text=True, check=True).stdout.split()
            reuse = subprocess.run([*enter, "cat", "/proc/sys/net/ipv4/tcp_tw_reuse"], capture_output=True,
                                   text=True, check=True).stdout.strip()
            assert reuse == str(tw_reuse), f"namespace has tcp_tw_reuse={reuse}"
            return self.measure(form, tw_reuse, enter, nginx, backend, "-".join(ports))
        finally:
            subprocess.run([*enter, *nginx.argv("-s", "quit")], capture_output=True)
            time.sleep(0.5)
            holder.remove(force=True)

    def measure(self, form: str, tw_reuse: int, enter: List[str], nginx: Nginx, backend: str,
                port_range: str) -> Case:
        a = self.args
        time_wait = []
        first_failure = None
        started = time.time()
        with loadgen.Sliced(f"http://127.0.0.1:{nginx.port}/", seconds=a.seconds, profile="keepalive",
                            connections=a.connections, pause_ms=a.pause_ms, prefix=enter) as load:
            while time.time() - started < a.seconds:
                time.sleep(1)
                out = subprocess.run([*enter, "ss", "-Htan", "state", "time-wait", "dst", backend],
                                     capture_output=True, text=True).stdout
                time_wait.append(len(out.splitlines()))
                failed = [s for s in load.slices if s.result.failed]
                if failed and first_failure is None:
                    first_failure = failed[0].started - started
                if first_failure is not None and time.time() - started > first_failure + 5:
                    break
        result = load.result
        per_second = [{"answers": sl.result.requests, "max_ms": round(sl.result.max_latency_ms),
                       "failed": sl.result.failed} for sl in load.slices]
        print("    answers/s, max latency (ms): " + ", ".join(f"{x['answers']}/{x['max_ms']}" for x in per_second),
              file=sys.stderr, flush=True)
        log = (nginx.directory / "app.error.log")
        cannot_assign = log.read_text().count("Cannot assign requested address") if log.exists() else 0
        return Case(form, tw_reuse, round(result.seconds, 1), result.requests, round(result.rate),
                    result.non_2xx, result.socket_errors,
                    None if first_failure is None else round(first_failure, 1), max(time_wait, default=0),
                    cannot_assign, port_range, per_second)


def table(cases: List[Case]) -> str:
    lines = ["| include form | tcp_tw_reuse | seconds | requests | answers/s, seconds 3-12 "
             "| answers/s, last 30 s | max latency, last 30 s (ms) | non-2xx | socket errors "
             "| first failure after (s) | backend sockets in TIME_WAIT (max) | `Cannot assign requested address` |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        first = "-" if c.first_failure_after is None else f"{c.first_failure_after:.0f}"
        early, late = c.per_second[2:12], c.per_second[-30:]
        lines.append(f"| {c.form} | {c.tw_reuse} | {c.seconds:.0f} | {c.requests} | {mean_answers(early):.0f} "
                     f"| {mean_answers(late):.0f} | {max((x['max_ms'] for x in late), default=0)} | {c.non_2xx} "
                     f"| {c.socket_errors} | {first} | {c.time_wait_max} | {c.cannot_assign} |")
    return "\n".join(lines)


def mean_answers(slices: List[dict]) -> float:
    return sum(x["answers"] for x in slices) / len(slices) if slices else 0.0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument("--pause-ms", type=int, default=19, help="each connection's pause between requests")
    parser.add_argument("--cases", default="set:2,set:0,set:1,upstream:2", help="form:tcp_tw_reuse,...")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    cases = []
    with Bench(args) as bench:
        for spec in args.cases.split(","):
            form, reuse = spec.split(":")
            print(f"{form} form, tcp_tw_reuse={reuse} ...", file=sys.stderr, flush=True)
            cases.append(bench.case(form, int(reuse)))
            print(table(cases[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(cases))
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in cases], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
