"""How soon after a release is ready does nginx serve it? Startups of 1-30 s, the tool's defaults.

    bash scripts/stack.sh start && eval "$(bash scripts/stack.sh env)"
    python -m bench.readiness [--modes reload,live] [--startups 1,2,5,8,12,20,30] [--rounds 1]
                              [--tool-tree DIR] [--json FILE]

For each switch mode, an nginx of its own on free 127.0.0.1 ports (reload: the shipped
nginx/conf.d/app.conf; live: nginx/live/app-live.conf), a docker network of its own (created by
the tool, removed after the last probe) and an app name. v1 is deployed once, then one release
per startup time, each started with STARTUP_DELAY_MS set to it in CONTAINER_ENV_FILE (the demo
service sleeps that long before it listens, as a Spring Boot app does while its framework starts).

Every setting that decides the timing is the tool's default: HEALTH_INTERVAL=10, HEALTH_TIMEOUT,
DRAIN_SECONDS=10 (--drain changes it; it runs after the switch and does not change the figure).
nginx is local (NGINX_HOST empty, the default).

The figure is "ready -> served": from the new container's first 200 on its health URL to nginx's
first answer from the new release, both polled every 20 ms by teststack/switchwatch.py
(the health URL only once a running container of that release holds an address on the network).
The goal (issue 10) is at most 0.5 s for every startup, in both modes.

--tool-tree runs another copy of the `pipeline` package (e.g. `git archive` of an older commit
into a directory) to measure before and after with the same bench.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

from bench.common import ensure_demo_jar, nginx_world
from teststack.realstack import pipeline_env, stack_env
from teststack.switchmodes import MODES as NGINX_FORMS, DeployFailed, deploy_env, make_nginx
from teststack.switchwatch import Watch

REPO = Path(__file__).resolve().parents[1]

MODES = ("reload", "live")
# deploy_env's fast test timings; the bench drops them so the tool's defaults apply.
NOT_DEFAULTS = ("HEALTH_INTERVAL", "HEALTH_TIMEOUT", "DRAIN_SECONDS", "STOP_TIMEOUT")
GOAL = 0.5


@dataclass
class Row:
    mode: str
    startup: float
    version: str
    ready_to_served: Optional[float]
    deploy_seconds: float
    health_attempts: Optional[int]
    round: int


class Deployer:
    """Runs `python -m pipeline deploy` from `tree` (this repo unless --tool-tree)."""

    def __init__(self, tree: Path, timeout: float = 600) -> None:
        self.tree, self.timeout = tree, timeout

    def __call__(self, env: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
        full = {**pipeline_env(env), "PYTHONPATH": str(self.tree)}
        return subprocess.run([sys.executable, "-m", "pipeline", "deploy"], cwd=cwd, env=full,
                              capture_output=True, text=True, timeout=self.timeout)


def attempts_from(log: str) -> Optional[int]:
    for line in log.splitlines():
        if "healthy after" in line:
            words = line.split("healthy after", 1)[1].split()
            if words and words[0].isdigit():
                return int(words[0])
    return None


def run_mode(mode: str, startups: List[float], round_number: int, args: argparse.Namespace,
             stack: Dict[str, str], client) -> List[Row]:
    deploy = Deployer(args.tool_tree)
    rows: List[Row] = []
    with nginx_world(client, f"bench-readiness-{mode}-", partial(make_nginx, mode),
                     app_prefix="r") as (cwd, network, app, nginx):
        env = deploy_env(app, network, nginx, stack, cwd)
        for name in NOT_DEFAULTS:
            env.pop(name)
        if args.drain is not None:
            env["DRAIN_SECONDS"] = f"{args.drain:g}"
        env_file = Path(env["CONTAINER_ENV_FILE"])
        env_file.write_text("STARTUP_DELAY_MS=1000\n")
        first = deploy({**env, "APP_VERSION": "v1"}, cwd)
        if first.returncode != 0:
            raise DeployFailed(f"{mode}: first deploy exited {first.returncode}\n{first.stderr}")
        names = [f"{app}-blue", f"{app}-green"]
        for number, startup in enumerate(startups, start=2):
            version = f"v{number}"
            env_file.write_text(f"STARTUP_DELAY_MS={int(startup * 1000)}\n")
            print(f"# {mode} round {round_number}: {version} starts in {startup:g}s ...",
                  file=sys.stderr, flush=True)
            with Watch(client, network.name, names, version, f"http://127.0.0.1:{nginx.port}/") as watch:
                started = time.monotonic()
                result = deploy({**env, "APP_VERSION": version}, cwd)
                took = time.monotonic() - started
                time.sleep(0.1)
            if result.returncode != 0:
                raise DeployFailed(f"{mode}: deploy {version} exited {result.returncode}\n{result.stderr}")
            row = Row(mode, startup, version, watch.delay, round(took, 1), attempts_from(result.stderr),
                      round_number)
            rows.append(row)
            print(f"#   ready -> served {_fmt(row.ready_to_served)} s, health attempts {row.health_attempts}, "
                  f"deploy {row.deploy_seconds} s", file=sys.stderr, flush=True)
    return rows


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: List[Row], startups: List[float], modes: List[str]) -> str:
    """One line per startup, one column per mode (several rounds: their values, comma-separated)."""
    lines = ["| starts in (s) | " + " | ".join(f"{m}: ready -> served (s)" for m in modes) + " |",
             "|---|" + "---|" * len(modes)]
    for startup in startups:
        cells = []
        for mode in modes:
            values = [_fmt(r.ready_to_served) for r in rows if r.mode == mode and r.startup == startup]
            cells.append(", ".join(values) or "-")
        lines.append(f"| {startup:g} | " + " | ".join(cells) + " |")
    worst = []
    for mode in modes:
        measured = [r.ready_to_served for r in rows if r.mode == mode and r.ready_to_served is not None]
        worst.append(f"**{max(measured):.2f}**" if measured else "-")
    lines.append("| worst | " + " | ".join(worst) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--startups", default="1,2,5,8,12,20,30", help="seconds, comma-separated")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--drain", type=float, help="DRAIN_SECONDS (default: the tool's, 10)")
    parser.add_argument("--tool-tree", type=Path, default=REPO, help="directory holding the pipeline package")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    startups = [float(s) for s in args.startups.split(",") if s.strip()]
    if any(m not in MODES for m in modes) or any(not 0 <= s <= 120 for s in startups) or not 1 <= args.rounds <= 5:
        parser.error(f"modes from {', '.join(MODES)}; startups 0-120 s; rounds 1-5")
    if not (args.tool_tree / "pipeline" / "__init__.py").is_file():
        parser.error(f"--tool-tree {args.tool_tree}: no pipeline package there")
    assert all(m in NGINX_FORMS for m in modes)

    import docker

    stack = stack_env()
    client = docker.from_env()
    try:
        # Before any deploy: a client that cannot reach the engine could not clean up after one.
        client.ping()
    except Exception as exc:
        parser.error(f"docker engine not reachable ({exc}); run: eval \"$(bash scripts/stack.sh env)\"")
    ensure_demo_jar()
    rows: List[Row] = []
    for round_number in range(1, args.rounds + 1):
        for mode in modes:
            rows.extend(run_mode(mode, startups, round_number, args, stack, client))
    print(table(rows, startups, modes))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    missing = [r for r in rows if r.ready_to_served is None]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
