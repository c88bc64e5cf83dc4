"""Rollback to a previous release that is still running (KEEP_PREVIOUS_RUNNING=true): how soon
after the command starts does nginx serve it again?

    python -m bench.rollback_running [--modes reload,live] [--rounds 5] [--source] [--against DIR] [--json FILE]

Needs the real stack (`bash scripts/stack.sh start`) and nginx with Debian's libnginx-mod-http-lua.
For each mode: a fresh nginx of its own (127.0.0.1, free ports), its own docker network and app
name; v1 and v2 are deployed with KEEP_PREVIOUS_RUNNING=true (v1 stays running, out of traffic).
Then, --rounds times, `python -m pipeline rollback` runs while a poller sends GET / through nginx
every ~2 ms (one at a time, loopback only, bounded); each rollback goes to the other release.

Reported per rollback:
  served_s   from just before the command's process is started to the first answer from the
             release rolled back to (so Python's start-up and imports are included)
  done_s     until the command exited
  failed     answers other than 200 meanwhile
  tool_s     the tool's own "done ... in N s": from after its imports to the end
  startup_s  `python -m pipeline --help` just before, the same way: Python's start-up and the
             tool's imports alone, the floor under served_s on this machine at that moment

The tool's bytecode is compiled first (`python -m compileall pipeline`), as `pip install` does and
as any run does when Python may write __pycache__: with PYTHONDONTWRITEBYTECODE=1 (set on the
shared test machine) every run would compile the tool's modules from source again, ~0.1 s.
`--source` skips that, to measure that case.

`--against DIR` compares with another copy of the `pipeline` package (e.g. `git archive` of an
older commit into DIR): every round then runs one rollback with each (`tree` says which; the
order alternates), so both see the same load on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from bench.common import compile_trees, ensure_demo_jar, nginx_world, tool_trees, write_rows
from teststack.realstack import pipeline_env, run_pipeline, stack_env
from teststack.switchmodes import deploy_env, make_nginx
from teststack.timeline import Timeline

COLUMNS = ["mode", "tree", "round", "served_s", "done_s", "tool_s", "failed", "startup_s", "load_avg"]


def one_mode(mode: str, rounds: int, stack: Dict[str, str], client,
             trees: Sequence[Tuple[str, Path]]) -> List[Dict[str, object]]:
    with nginx_world(client, f"bench-rollback-{mode}-",
                     partial(make_nginx, mode)) as (cwd, network, app, nginx):
        env = deploy_env(app, network, nginx, stack, cwd, starts_at_once=True)
        env.update(KEEP_PREVIOUS_RUNNING="true", VERIFY_SECONDS="2", DRAIN_SECONDS="0",
                   NGINX_ACCESS_LOG=str(nginx.access_log))
        for version in ("v1", "v2"):
            done = run_pipeline(["deploy"], {**env, "APP_VERSION": version}, cwd)
            if done.returncode != 0:
                raise SystemExit(f"{mode}: deploy {version} exited {done.returncode}\n{done.stderr}")
        rows = []
        live = "version=v2 color=green"
        other = "version=v1 color=blue"
        url = f"http://127.0.0.1:{nginx.port}/"
        for round_number in range(rounds):
            for label, tree in (trees if round_number % 2 == 0 else list(reversed(trees))):
                full_env = {**pipeline_env(env), "PYTHONPATH": str(tree)}
                rows.append(_one_rollback(mode, label, round_number + 1, full_env, cwd, url, other))
                live, other = other, live
                time.sleep(1)
        return rows


def _one_rollback(mode: str, label: str, round_number: int, full_env: Dict[str, str], cwd: Path, url: str,
                  other: str) -> Dict[str, object]:
    """One `rollback` to the release answering `other`, timed from just before its process starts."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=cwd, env=full_env,
                   capture_output=True, timeout=60, check=True)
    startup = time.monotonic() - began
    with Timeline(url, every=0.002, max_seconds=60) as timeline:
        time.sleep(0.3)
        started = time.monotonic()
        process = subprocess.run([sys.executable, "-m", "pipeline", "rollback"], cwd=cwd, env=full_env,
                                 capture_output=True, text=True, timeout=120)
        finished = time.monotonic()
        time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"{mode}: rollback exited {process.returncode}\n{process.stderr}")
    served = timeline.first(lambda a: a.body == other and a.at > started)
    row = {"mode": mode, "tree": label, "round": round_number,
           "served_s": round(served.at - started, 2) if served else None,
           "done_s": round(finished - started, 2),
           "failed": sum(1 for a in timeline.answers if a.status != 200),
           "tool_s": float(re.search(r"==> done: .* in ([\d.]+)s", process.stderr).group(1)),
           "startup_s": round(startup, 2),
           "load_avg": round(os.getloadavg()[0], 1)}
    print(f"# {row}", file=sys.stderr)
    return row


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="reload,live")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--source", action="store_true",
                        help="do not compile the tool's bytecode first (and remove what is there)")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="directory holding another copy of the pipeline package, to compare with")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("reload", "live") for m in modes) or not 1 <= args.rounds <= 20:
        parser.error("modes from reload, live; rounds 1-20")
    trees = tool_trees(parser, args.against, "this")
    compile_trees(trees, args.source)
    import docker

    stack = stack_env()
    client = docker.from_env()
    ensure_demo_jar()
    rows = [row for mode in modes for row in one_mode(mode, args.rounds, stack, client, trees)]
    write_rows(rows, COLUMNS, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
