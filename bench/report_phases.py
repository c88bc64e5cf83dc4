"""Where deploy time goes: a set of `--report` documents drawn as text.

    python -m bench.report_phases REPORT.json [REPORT.json | DIRECTORY ...] [--width 60]
    python -m bench.report_phases --sample 5 [--keep DIRECTORY]   # needs scripts/stack.sh start

Reads the reports `deploy`, `promote` and `rollback --report FILE` wrote (Jenkins archives one
per build: docs/report.schema.json), and prints

1. per phase, over every report: how many runs had it, the median and the longest seconds, its
   share of all the time the runs took, and a bar of that share; "(start-up)" is the time before
   the first phase (Python, the settings, connecting the nginx host and the docker engine) and
   "(between phases)" the time no phase covers (reading the facts and the release record,
   cleaning up old images);
2. the slowest run as a timeline: one row per phase, placed where it started.

`--sample N` makes its own reports first: N deploys of the demo service (v1 to vN) on the real
stack, through an nginx of its own, with verification on for 2 s under light load (four client
threads, 127.0.0.1 only, bounded by time), each with `--report`. docs/benchmarks.md ("Where
deploy time goes") shows one such picture.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
STARTUP = "(start-up)"
OTHER = "(between phases)"


def load(paths: Sequence[Path]) -> List[dict]:
    """Every report named, or found (*.json) in a directory named, in name order."""
    files: List[Path] = []
    for path in paths:
        files += sorted(path.glob("*.json")) if path.is_dir() else [path]
    return [json.loads(f.read_text()) for f in files]


def summary(reports: Sequence[dict], width: int = 50) -> str:
    """Per phase: runs, median and max seconds, share of all the runs' time, a bar."""
    seconds: Dict[str, List[float]] = {}
    total = sum(r["seconds"] for r in reports)
    for report in reports:
        for phase in report["phases"]:
            seconds.setdefault(phase["name"], []).append(phase["seconds"])
        startup = report["phases"][0]["started"] if report["phases"] else report["seconds"]
        covered = sum(p["seconds"] for p in report["phases"]) + startup
        seconds.setdefault(STARTUP, []).append(startup)
        seconds.setdefault(OTHER, []).append(max(0.0, report["seconds"] - covered))
    results: Dict[str, int] = {}
    for report in reports:
        key = f"{report['result']} (exit {report['exit_code']})"
        results[key] = results.get(key, 0) + 1
    lines = [f"{len(reports)} runs ({', '.join(f'{n} {k}' for k, n in sorted(results.items()))}), "
             f"{total:.1f} s in all, median run {statistics.median(r['seconds'] for r in reports):.1f} s",
             "",
             f"{'phase':<18} {'runs':>4} {'median':>7} {'max':>7} {'share':>6}"]
    order = sorted(seconds, key=lambda name: -sum(seconds[name]))
    for name in order:
        values = seconds[name]
        share = sum(values) / total if total else 0.0
        bar = "#" * round(share * width)
        lines.append(f"{name:<18} {len(values):>4} {statistics.median(values):>6.2f}s {max(values):>6.2f}s "
                     f"{share:>6.1%} {bar}")
    return "\n".join(lines) + "\n"


def timeline(report: dict, width: int = 60) -> str:
    """One run: each phase a bar placed where it started, on a scale of the whole run."""
    length = max(report["seconds"], 1e-6)
    scale = width / length
    head = (f"{report['action']} {report['version'] or '-'} -> {report['color'] or '-'}: {report['result']} "
            f"(exit {report['exit_code']}) in {report['seconds']:.1f} s")
    lines = [head, f"{'':<18} |{'0 s':<{width - 6}}{length:>5.1f}s|"]
    for phase in report["phases"]:
        start = min(width - 1, int(phase["started"] * scale))
        cells = max(1, round(phase["seconds"] * scale))
        bar = (" " * start + ("X" if phase.get("failed") else "=") * cells)[:width]
        counts = phase.get("counts")
        note = f" {phase['seconds']:.2f}s" + (f" ({', '.join(f'{k} {v}' for k, v in counts.items())})"
                                               if counts else "") + (" FAILED" if phase.get("failed") else "")
        lines.append(f"{phase['name']:<18} |{bar:<{width}}|{note}")
    return "\n".join(lines) + "\n"


def picture(reports: Sequence[dict], width: int = 50) -> str:
    slowest = max(reports, key=lambda r: r["seconds"])
    return summary(reports, width) + "\nthe slowest run:\n" + timeline(slowest, width + 10)


# -- --sample: reports of real deploys -------------------------------------------------------------

def sample(count: int, into: Path) -> None:
    import docker

    from bench.common import QUICK_TIMINGS, bench_env
    from teststack.realstack import Nginx, free_port, remove_app, remove_network, reserve_network, run_pipeline, \
        stack_env
    from teststack.traffic import Traffic

    stack = stack_env()
    if not (REPO / "demo" / "build" / "libs" / "app.jar").is_file():
        subprocess.run(["bash", str(REPO / "demo" / "build.sh")], check=True, cwd=REPO / "demo")
    client = docker.from_env()
    net = reserve_network(client)
    app = f"brp{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix=f"{app}-"))
    nginx = Nginx(work / "nginx", free_port(), free_port())
    nginx.directory.mkdir()
    env = bench_env(app, net, nginx, stack, **QUICK_TIMINGS, VERIFY_SECONDS="2", VERIFY_MIN_REQUESTS="1",
                    NGINX_ACCESS_LOG=str(nginx.access_log))
    nginx.start()
    try:
        for number in range(1, count + 1):
            version = f"v{number}"
            with Traffic(f"http://127.0.0.1:{nginx.port}/", threads=4, max_seconds=120):
                done = run_pipeline(["deploy", "--report", str(into / f"{number:03d}-{version}.json")],
                                    {**env, "APP_VERSION": version}, work, timeout=180)
            print(f"deploy {version}: exit {done.returncode}", file=sys.stderr, flush=True)
    finally:
        nginx.stop()
        remove_app(client, app)
        remove_network(client, net.name)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="*", type=Path, help="report files, or directories of them")
    parser.add_argument("--sample", type=int, metavar="N", help="first make N reports of real deploys")
    parser.add_argument("--keep", type=Path, metavar="DIRECTORY", help="where --sample keeps its reports")
    parser.add_argument("--width", type=int, default=50)
    args = parser.parse_args(argv)
    paths = list(args.reports)
    made: Optional[Path] = None
    if args.sample:
        made = args.keep or Path(tempfile.mkdtemp(prefix="pipeline-reports-"))
        made.mkdir(parents=True, exist_ok=True)
        sample(args.sample, made)
        paths.append(made)
    reports = load(paths)
    if not reports:
        parser.error("no reports: name report files or directories, or use --sample N")
    print(picture(reports, args.width), end="")
    if made is not None and args.keep is None:
        shutil.rmtree(made, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
