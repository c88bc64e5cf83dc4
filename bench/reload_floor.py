"""How many keep-alive clients does one bare `nginx -s reload` cost? The "reload floor".

    bash scripts/stack.sh start
    python -m bench.reload_floor [--reloads 20] [--connections 32] [--form set] [--json out.json]

nginx (the shipped app.conf, or app-upstream.conf with --form upstream) in front of the demo
service on a bench network. For each reload: a fresh 3 s wrk run (keep-alive, unpaced, 127.0.0.1
only), one `nginx -s reload` 1.2 s into it, and the read + write errors wrk saw. A reload closes
the old workers' idle client connections; a client that has just written its next request on
one sees a read error, so the count is how many of the connections happened to be idle at that
instant, which CPU scheduling decides.

Prints each reload's count and a summary, including how often the sum over two reloads exceeds
the sum over two others (all pairs of disjoint pairs): what a test asserting "two deploys <= two
bare reloads" would see as its failure rate if deploys added nothing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from bench.common import BenchNetwork
from teststack import loadgen
from teststack.realstack import Nginx, free_port


def pair_exceedance(counts: List[int]) -> float:
    """Over all ordered pairs of disjoint pairs (a, b), the share where sum(a) > sum(b)."""
    pairs = list(itertools.combinations(range(len(counts)), 2))
    total = exceed = 0
    for a, b in itertools.product(pairs, pairs):
        if set(a) & set(b):
            continue
        total += 1
        exceed += counts[a[0]] + counts[a[1]] > counts[b[0]] + counts[b[1]]
    return exceed / total if total else 0.0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--form", choices=("set", "upstream"), default="set")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    counts, rates = [], []
    with BenchNetwork("floor") as bench:
        bench.run("backend", bench.net.blue_ip, environment={"APP_VERSION": "v1", "APP_COLOR": "blue"})
        nginx = Nginx(bench.work / "nginx", free_port(), free_port(), form=args.form)
        nginx.directory.mkdir()
        backend = f"{bench.net.blue_ip}:8080"
        nginx.include.write_text(f"upstream app_live {{\n    server {backend};\n    keepalive 32;\n}}\n"
                                 if args.form == "upstream" else f"set $service_url http://{backend};\n")
        nginx.start()
        try:
            url = f"http://127.0.0.1:{nginx.port}/"
            for i in range(args.reloads):
                with loadgen.Load(url, profile="keepalive", connections=args.connections, seconds=3) as load:
                    time.sleep(1.2)
                    subprocess.run(nginx.argv("-s", "reload"), check=True, capture_output=True)
                    time.sleep(1.5)
                result = load.result
                if result.non_2xx or result.connect_errors or result.timeouts:
                    print(f"reload {i + 1}: unexpected errors: {result.line()}", file=sys.stderr)
                counts.append(result.read_errors + result.write_errors)
                rates.append(result.rate)
                print(f"reload {i + 1}: {counts[-1]} reset ({result.rate:.0f} req/s)", file=sys.stderr, flush=True)
        finally:
            nginx.stop()

    summary = {
        "form": args.form, "connections": args.connections, "reloads": len(counts), "resets": counts,
        "mean": round(statistics.mean(counts), 1), "median": statistics.median(counts),
        "min": min(counts), "max": max(counts), "zero": counts.count(0),
        "mean_rate": round(statistics.mean(rates)),
        "two_exceed_two_other": round(pair_exceedance(counts), 2),
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
