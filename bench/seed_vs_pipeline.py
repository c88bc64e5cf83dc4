"""The seed's bash flow and `python -m pipeline deploy`, side by side under the same load.

    bash scripts/stack.sh start
    python -m bench.seed_vs_pipeline [--profile close] [--connections 16]
                                     [--health-interval 10] [--drain 10] [--json out.json]

For each tool, on a docker network of its own (created first, fixed IPs, removed after the last
request) and an nginx of its own built from the shipped nginx/conf.d/app.conf (the seed's
`proxy_pass $service_url` form), switched over the stack's sshd on 127.0.0.1 as the seed does:

  1. deploy v1 with no load, and wait until nginx serves it;
  2. deploy v2, then v3, each under wrk (127.0.0.1 only, bounded by -d), from 1 s before the deploy
     until 1 s after nginx first serves the new release (at most 30 s after the deploy returns:
     the seed returns before its container is up).

The service takes STARTUP_DELAY_MS (default 2000) to start, like a Spring Boot app. For each
deploy it prints requests sent, requests lost (non-2xx + socket errors of every kind), the time
from the new container first answering its health URL to nginx first serving the new release
(both polled every 20 ms; negative: nginx pointed there before it was up), how long nginx's /
failed (first to last failed 20 ms poll), and the deploy's wall time. The seed is
bench/seed_deploy.sh (what was changed to make it run is listed there).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional


from bench.common import REPO, BenchNetwork, bench_env
from teststack import loadgen
from teststack.realstack import Nginx, free_port, pipeline_env, remove_app, run_pipeline
from teststack.switchwatch import Watch

SEED_SCRIPT = REPO / "bench" / "seed_deploy.sh"
BUILD_COMMAND = f"bash {REPO / 'demo' / 'build.sh'}"
AFTER_DEPLOY_LIMIT = 30.0


@dataclass
class Row:
    tool: str
    deploy: str
    exit_code: int
    sent: int
    lost: int
    non_2xx: int
    socket_errors: int
    healthy_to_served: Optional[float]
    unavailable: float
    wall: float
    load: dict


class Part(BenchNetwork):
    """What one tool's run owns: a network, an nginx, a working directory."""

    switch = "reload"     # how the tool switches this part's nginx (SWITCH_MODE)

    def __init__(self, tool: str, args) -> None:
        super().__init__(tool, build=False)     # each tool builds its own image
        self.tool, self.args = tool, args
        self.nginx = Nginx(self.work / "nginx", free_port(), free_port())
        self.env_file = self.work / "container.env"
        self.env_file.write_text(f"STARTUP_DELAY_MS={args.startup_delay_ms}\n")
        self.previous = "none"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx.port}/"

    def __enter__(self) -> "Part":
        super().__enter__()
        self.nginx.directory.mkdir()
        self.nginx.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Each measurement has stopped its own load and polls. nginx, then the pipeline's
        # containers and images; the rest (the seed's, the network) goes in BenchNetwork.
        self.nginx.stop()
        remove_app(self.client, self.name)
        if self.args.logs:
            self.args.logs.mkdir(parents=True, exist_ok=True)
            for log in self.work.glob("*.log"):
                shutil.copy(log, self.args.logs / log.name)
            shutil.copy(self.nginx.directory / "app.error.log", self.args.logs / f"nginx-{self.tool}.error.log")
        super().__exit__(*exc)

    # -- the two tools ---------------------------------------------------------------------------

    def deploy(self, version: str) -> int:
        if self.tool == "seed":
            return self._seed(version)
        return self._pipeline(version)

    def _ssh_target(self) -> str:
        s = self.stack
        return (f"-p {s['SSH_PORT']} -i {s['SSH_KEY']} -o UserKnownHostsFile={s['SSH_KNOWN_HOSTS']} "
                f"-o BatchMode=yes root@127.0.0.1")

    def _seed(self, version: str) -> int:
        s, n = self.stack, self.net
        env = {**pipeline_env({}), "NAME": self.name, "NETWORK": n.name, "BLUE_IP": n.blue_ip,
               "GREEN_IP": n.green_ip, "REGISTRY": s["REGISTRY_ADDR"], "REGISTRY_USER": s["REGISTRY_USER"],
               "REGISTRY_PASSWORD_FILE": s["REGISTRY_PASSWORD_FILE"], "VERSION": version,
               "BUILD_COMMAND": BUILD_COMMAND, "BUILD_CONTEXT": str(REPO / "demo"),
               "DOCKERFILE": str(REPO / "docker" / "Dockerfile"), "JRE_IMAGE": s["JRE_IMAGE"],
               "CONTAINER_ENV_FILE": str(self.env_file), "SSH_TARGET": self._ssh_target(),
               "NGINX_INCLUDE": str(self.nginx.include), "NGINX_RELOAD_COMMAND": self.nginx.reload_command,
               "DOCKER_CONFIG": str(self.work / "docker-config")}
        done = subprocess.run(["bash", str(SEED_SCRIPT)], cwd=self.work, env=env, capture_output=True,
                              text=True, timeout=600)
        (self.work / f"seed-{version}.log").write_text(done.stdout + done.stderr)
        return done.returncode

    def _pipeline(self, version: str) -> int:
        a = self.args
        # Like the seed: the tool builds the jar, reaches nginx over SSH. The seed has no
        # verification; compared like for like (bench/verify_switchback.py has it).
        env = {**bench_env(self.name, self.net, self.nginx, self.stack, switch=self.switch, over_ssh=True,
                           APP_VERSION=version, BUILD_COMMAND=BUILD_COMMAND,
                           HEALTH_INTERVAL=f"{a.health_interval:g}", DRAIN_SECONDS=f"{a.drain:g}",
                           CONTAINER_ENV_FILE=str(self.env_file), VERIFY_SECONDS="0"),
               **self.extra_settings()}
        done = run_pipeline(["deploy"], env, self.work, timeout=600)
        (self.work / f"pipeline-{version}.log").write_text(done.stdout + done.stderr)
        return done.returncode

    def extra_settings(self) -> dict:
        """Settings a variant of this part adds to the tool's (bench/deploy_timeline.py: verification)."""
        return {}

    # -- measuring -------------------------------------------------------------------------------

    def watch(self, version: str) -> Watch:
        names = [f"{self.name}-blue", f"{self.name}-green"]
        return Watch(self.client, self.net.name, names, version, self.url).start()

    def setup(self, version: str) -> None:
        watch = self.watch(version)
        try:
            code = self.deploy(version)
            wait_until(lambda: watch.served_at is not None, AFTER_DEPLOY_LIMIT)
        finally:
            watch.stop()
        if code != 0 or watch.served_at is None:
            raise SystemExit(f"{self.tool}: deploy {version} failed (exit {code}); logs in {self.work}")
        self.previous = version

    def measure(self, version: str) -> Row:
        watch = self.watch(version)
        load = loadgen.Load(self.url, profile=self.args.profile, connections=self.args.connections,
                            seconds=self.args.max_seconds).start()
        try:
            time.sleep(1)
            started = time.monotonic()
            code = self.deploy(version)
            wall = time.monotonic() - started
            wait_until(lambda: watch.served_at is not None, AFTER_DEPLOY_LIMIT)
            time.sleep(1)
        finally:
            result = load.stop()
            watch.stop()
        row = Row(self.tool, f"{self.previous} -> {version}", code, result.sent, result.failed, result.non_2xx,
                  result.socket_errors, watch.delay, watch.unavailable, wall, result.summary())
        self.previous = version
        return row


def wait_until(predicate: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


def table(rows: List[Row]) -> str:
    lines = ["| tool | deploy | requests sent | requests lost | of which non-2xx | socket errors "
             "| healthy -> served (s) | unavailable (s) | deploy wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delay = "-" if r.healthy_to_served is None else f"{r.healthy_to_served:+.2f}"
        code = "" if r.exit_code == 0 else f" (exit {r.exit_code})"
        lines.append(f"| {r.tool} | {r.deploy}{code} | {r.sent} | {r.lost} | {r.non_2xx} | {r.socket_errors} "
                     f"| {delay} | {r.unavailable:.2f} | {r.wall:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tools", default="seed,pipeline", help="comma-separated: seed, pipeline")
    parser.add_argument("--profile", choices=loadgen.PROFILES, default="close")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--health-interval", type=float, default=10.0, help="pipeline HEALTH_INTERVAL (its default)")
    parser.add_argument("--drain", type=float, default=10.0, help="pipeline DRAIN_SECONDS (its default)")
    parser.add_argument("--startup-delay-ms", type=int, default=2000)
    parser.add_argument("--max-seconds", type=int, default=180, help="wrk -d for each measured deploy")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--logs", type=Path, help="keep each deploy's output and nginx's error log here")
    args = parser.parse_args(argv)

    rows: List[Row] = []
    for tool in args.tools.split(","):
        with Part(tool, args) as part:
            print(f"{tool}: v1 (setup, no load) ...", file=sys.stderr, flush=True)
            part.setup("v1")
            for version in ("v2", "v3"):
                print(f"{tool}: {version} under {args.profile} load, {args.connections} connections ...",
                      file=sys.stderr, flush=True)
                rows.append(part.measure(version))
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
