"""Rollback over SSH to a kept (stopped) release, on a saturated machine: the tool against a bare shell.

    bash scripts/stack.sh start
    python -m bench.rollback_under_load [--rounds 3] [--burners 2] [--connections 32]
                                        [--against DIR] [--as-installed] [--source] [--json FILE]

Set-up: a docker network of its own (created by the tool's first deploy, removed after the last
request), an nginx of its own on 127.0.0.1 (the shipped `app.conf`, the seed's `set $service_url`
form), switched over the stack's sshd on 127.0.0.1:2222 as a remote nginx host would be
(NGINX_HOST=127.0.0.1), and the demo service (no STARTUP_DELAY_MS: its JVM listens within about a
second). v1 then v2 are deployed without load, so v2 is live and v1 is kept, stopped.

Each measurement runs under the same load, started afresh for it and stopped after it (both also
end by themselves after `--load-seconds`):
  - wrk through nginx, `--connections` connections on 2 threads, a new connection per request
    (`Connection: close`), unpaced: as many requests as nginx, the service and wrk can turn over;
  - `--burners` CPU burners (`sh -c 'while :; do :; done'` under `timeout`), one per core by
    default, at the same priority as everything else.
"Saturated" is measured, not assumed: for every measurement the table shows the CPUs' idle share
and the mean number of runnable tasks (`procs_running` of /proc/stat, sampled every 0.1 s).

Two ways to do the same rollback, each timed from just before its process is spawned to the first
answer of the rolled-back release through nginx (a poller, GET / every 10 ms, loopback only):
  - tool:  `python -m pipeline rollback` (reload mode, over SSH), with its bytecode compiled first
    as `pip install` does (`--source`: without);
  - shell: the bare floor, one bash script doing the same steps: `docker start` of the kept
    container, a curl health poll every 0.1 s (as the tool's port check), then ONE ssh command that
    writes the include (temp file + mv), runs `nginx -t` and reloads.
Both then drain `DRAIN_SECONDS` and stop the release rolled back from, after the measured point.
A round is the tool rolling back and back again (v2 -> v1 -> v2), and the shell doing the same
two switches, the order of the two alternating from round to round. Two switches each keep the
tool's release record true: the shell's pair leaves everything as the tool left it.
`--against DIR` adds a third pair per round: another copy of the `pipeline` package (e.g. a
`git archive` of an older commit), for the figures of a change under the same load.
`--as-installed` adds another: this tree run by a Python that skips this machine's site-packages
start-up hooks (the editable install's finder, a sandbox CA hook: ~0.035 s of CPU per start that a
user's `pip install` does not have), labelled `installed`.

Printed: a table of every measurement, then one summary line with the medians and the ratio
tool / shell (goal: <= 1.5). Exits 1 if a measurement went wrong (a rollback exited non-zero,
nginx never served the release, a request failed), not for the ratio: that is for reading.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bench.common import compile_trees, ensure_demo_jar, format_table, nginx_world, tool_trees
from teststack import loadgen
from teststack.realstack import demo_settings, pipeline_env, run_pipeline, stack_env
from teststack.switchmodes import make_nginx
from teststack.timeline import Timeline

REPO = Path(__file__).resolve().parents[1]

COLUMNS = ["round", "who", "to", "served_s", "first_log_s", "exit_s", "cpu_idle_pct", "runnable",
           "wrk_rps", "failed"]
SERVING = {"v1": "version=v1 color=blue", "v2": "version=v2 color=green"}
COLOR = {"v1": "blue", "v2": "green"}


# -- load -------------------------------------------------------------------------------------------

class CpuSampler:
    """The CPUs' idle share and the mean number of runnable tasks while it runs."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.runnable: List[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._first = self._last = (0, 0)

    @staticmethod
    def _stat() -> Tuple[Tuple[int, int], int]:
        text = Path("/proc/stat").read_text()
        cpu = [int(x) for x in text.splitlines()[0].split()[1:]]
        running = int(re.search(r"^procs_running (\d+)$", text, re.M).group(1))
        return (cpu[3] + cpu[4], sum(cpu)), running   # idle + iowait, total

    def start(self) -> "CpuSampler":
        self._first, _ = self._stat()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            _, running = self._stat()
            self.runnable.append(running - 1)   # not counting this sampler itself

    def stop(self) -> Dict[str, float]:
        self._stop.set()
        self._thread.join(timeout=5)
        last, _ = self._stat()
        idle = last[0] - self._first[0]
        total = last[1] - self._first[1]
        return {"cpu_idle_pct": round(100.0 * idle / total, 1) if total else 0.0,
                "runnable": round(statistics.mean(self.runnable), 1) if self.runnable else 0.0}


class Saturation:
    """wrk through nginx plus CPU burners, each bounded by `seconds` and stopped on exit."""

    def __init__(self, url: str, connections: int, burners: int, seconds: int) -> None:
        self.wrk = loadgen.Load(url, profile="close", seconds=seconds, connections=connections, threads=2)
        self.burners = burners
        self.seconds = seconds
        self._procs: List[subprocess.Popen] = []
        self.sampler = CpuSampler()
        self.result: Dict[str, object] = {}

    def __enter__(self) -> "Saturation":
        self.wrk.start()
        for _ in range(self.burners):
            self._procs.append(subprocess.Popen(["timeout", str(self.seconds), "sh", "-c", "while :; do :; done"]))
        time.sleep(1.0)   # let wrk's connections and the burners get going
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu = self.sampler.stop()
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            proc.wait(timeout=10)
        load = self.wrk.stop()
        self.result = {**cpu, "wrk_rps": round(load.rate), "failed": load.failed, "wrk": load.summary()}


# -- the two ways -----------------------------------------------------------------------------------

def shell_script(env: Dict[str, str], stack: Dict[str, str], app: str, to: str, include: Path) -> str:
    """The bare floor: start the kept container, poll its health, one ssh that writes the include,
    tests and reloads; then drain and stop the other one (after the measured point)."""
    color, other = COLOR[to], COLOR["v2" if to == "v1" else "v1"]
    ip = env["BLUE_IP"] if color == "blue" else env["GREEN_IP"]
    ssh = ["ssh", "-p", stack["SSH_PORT"], "-i", stack["SSH_KEY"], "-o", f"UserKnownHostsFile={stack['SSH_KNOWN_HOSTS']}",
           "-o", "BatchMode=yes", "root@127.0.0.1"]
    temp = f"{include.parent}/.{include.name}.shell"
    remote = (f"printf '%s\\n' {shlex.quote(f'set $service_url http://{ip}:8080;')} > {shlex.quote(temp)}"
              f" && mv {shlex.quote(temp)} {shlex.quote(str(include))}"
              f" && {env['NGINX_TEST_COMMAND']} && {env['NGINX_RELOAD_COMMAND']}")
    return "\n".join([
        "set -e",
        f"docker start {app}-{color} >/dev/null",
        f"until curl -fsS -o /dev/null --max-time 1 http://{ip}:8080/actuator/health; do sleep 0.1; done",
        f"{shlex.join(ssh)} {shlex.quote(remote)}",
        "echo switched >&2",
        f"sleep {env['DRAIN_SECONDS']}",
        f"docker stop -t {env['STOP_TIMEOUT']} {app}-{other} >/dev/null",
    ])


def measure(who: str, argv: Sequence[str], env: Dict[str, str], cwd: Path, to: str, url: str,
            args: argparse.Namespace) -> Dict[str, object]:
    """One switch to `to` under a fresh Saturation; timed from just before the spawn."""
    with Saturation(url, args.connections, args.burners, args.load_seconds) as load:
        with Timeline(url, every=0.01, max_seconds=args.load_seconds) as timeline:
            wall_start = time.time()
            started = time.monotonic()
            process = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True,
                                     timeout=args.load_seconds)
            finished = time.monotonic()
            served = timeline.first(lambda a: a.body == SERVING[to] and a.at > started)
            if served is None:   # exited before the poller saw it: give it a moment
                deadline = time.monotonic() + 10
                while served is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                    served = timeline.first(lambda a: a.body == SERVING[to] and a.at > started)
    failed_polls = sum(1 for a in timeline.answers if a.status != 200)
    row: Dict[str, object] = {
        "who": who, "to": to, "exit": process.returncode,
        "served_s": round(served.at - started, 2) if served else None,
        "first_log_s": _first_log(process.stderr, wall_start),
        "exit_s": round(finished - started, 2),
        **{k: v for k, v in load.result.items() if k != "failed"},
        "failed": int(load.result["failed"]) + failed_polls,   # type: ignore[call-overload]
        "load_avg": round(os.getloadavg()[0], 1),
        "log": [line for line in process.stderr.splitlines() if line.strip()][-40:],
    }
    print(f"# {who} -> {to}: served {row['served_s']} s, first log line {row['first_log_s']} s, "
          f"exit {process.returncode} after {row['exit_s']} s; idle {row['cpu_idle_pct']}%, "
          f"runnable {row['runnable']}, wrk {row['wrk_rps']}/s, failed {row['failed']}",
          file=sys.stderr, flush=True)
    return row


def _first_log(stderr: str, wall_start: float) -> Optional[float]:
    """Seconds from the spawn to the tool's first log line (its stamps are HH:MM:SS.mmm, local)."""
    match = re.search(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) ", stderr, re.M)
    if match is None:
        return None
    day = datetime.fromtimestamp(wall_start).replace(hour=int(match.group(1)), minute=int(match.group(2)),
                                                     second=int(match.group(3)),
                                                     microsecond=int(match.group(4)) * 1000)
    seconds = day.timestamp() - wall_start
    if seconds < -43200:   # the first line came after midnight: its stamp is of the next day
        seconds += 86400
    return round(seconds, 2)


def hookless_python(where: Path) -> Path:
    """This Python, seeing the same packages, without the start-up hooks of its site-packages.

    Every start of this machine's Python runs the `.pth` files there: the editable install's
    finder (`pip install -e`, for the tests) and a sandbox hook that imports certifi to add a
    proxy's CA, ~0.02 s of CPU before the tool's first line, which a user's `pip install` does not
    have. A venv without the system's site-packages, given that directory as a plain path line
    (a path line is only added to sys.path; .pth files in it are not run), loads the same files.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site_packages = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    venv_site = next(where.glob("lib/python*/site-packages"))
    (venv_site / "_same_packages.pth").write_text("".join(f"{p}\n" for p in site_packages))
    return where / "bin" / "python"


# -- the run ----------------------------------------------------------------------------------------

def settings(app: str, network, nginx, stack: Dict[str, str]) -> Dict[str, str]:
    return {
        **demo_settings(app, network, stack),
        # The health settings are the tool's defaults; the drain only shortens the bench (it
        # comes after the measured point, in both ways).
        "DRAIN_SECONDS": "0.5", "STOP_TIMEOUT": "5",
        # rollback does not verify; the deploys before it are set-up, not measured.
        "VERIFY_SECONDS": "0",
        "NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": stack["SSH_PORT"], "NGINX_SSH_USER": "root",
        "NGINX_SSH_KEY": stack["SSH_KEY"], "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"],
        "NGINX_INCLUDE": str(nginx.include), "NGINX_TEST_COMMAND": nginx.test_command,
        "NGINX_RELOAD_COMMAND": nginx.reload_command, "NGINX_PID_FILE": str(nginx.pid_file),
    }


def summary_line(rows: List[Dict[str, object]], goal: float) -> Tuple[str, Dict[str, object]]:
    medians: Dict[str, Optional[float]] = {}
    for who in dict.fromkeys(str(r["who"]) for r in rows):
        values = [float(r["served_s"]) for r in rows if r["who"] == who and r["served_s"] is not None]
        medians[who] = round(statistics.median(values), 2) if values else None
    tool, shell = medians.get("tool"), medians.get("shell")
    ratio = round(tool / shell, 2) if tool and shell else None
    idle = [float(r["cpu_idle_pct"]) for r in rows]
    runnable = [float(r["runnable"]) for r in rows]
    verdict = "n/a" if ratio is None else ("MET" if ratio <= goal else "NOT MET")
    extra = "".join(f", {who} median {m} s" for who, m in medians.items() if who not in ("tool", "shell"))
    line = (f"rollback under load: tool median {tool} s, bare shell median {shell} s{extra}, "
            f"ratio {ratio} (goal <= {goal:g}: {verdict}); {len(rows)} measurements, "
            f"CPU idle {min(idle):.0f}-{max(idle):.0f}%, runnable {min(runnable):.1f}-{max(runnable):.1f}")
    return line, {"medians": medians, "ratio": ratio, "goal": goal, "verdict": verdict}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="each round: two tool rollbacks, two shell ones")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2, help="CPU burners (default: one per core)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections through nginx")
    parser.add_argument("--load-seconds", type=int, default=90, help="bound on each measurement's load")
    parser.add_argument("--goal", type=float, default=1.5, help="the ratio tool / shell aimed at")
    parser.add_argument("--against", type=Path, metavar="DIR", help="another copy of the pipeline package to add")
    parser.add_argument("--source", action="store_true", help="do not compile the tool's bytecode first")
    parser.add_argument("--as-installed", action="store_true",
                        help="also run this tree as an installed tool starts: without this machine's .pth start-up hooks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 0 <= args.burners <= 16 or not 1 <= args.connections <= 256:
        parser.error("rounds 1-20, burners 0-16, connections 1-256")
    trees = tool_trees(parser, args.against, "tool")
    compile_trees(trees, args.source)

    import docker

    stack = stack_env()
    client = docker.from_env()
    ensure_demo_jar()
    rows: List[Dict[str, object]] = []
    problems: List[str] = []
    with nginx_world(client, "bench-rbload-", partial(make_nginx, "reload"), app_prefix="rbl") as (
            cwd, network, app, nginx):
        env = settings(app, network, nginx, stack)
        for version in ("v1", "v2"):
            done = run_pipeline(["deploy"], {**env, "APP_VERSION": version}, cwd)
            if done.returncode != 0:
                raise SystemExit(f"deploy {version} exited {done.returncode}\n{done.stderr}")
        url = f"http://127.0.0.1:{nginx.port}/"
        shell_env = {k: v for k, v in os.environ.items() if not k.startswith(("NGINX_", "APP_"))}

        python = {label: sys.executable for label, _ in trees}
        if args.as_installed:
            trees.append(("installed", REPO))
            python["installed"] = str(hookless_python(cwd / "installed"))

        def tool_pair(label: str, tree: Path, number: int) -> None:
            full = {**pipeline_env(env), "PYTHONPATH": str(tree)}
            for to in ("v1", "v2"):
                rows.append({"round": number, **measure(label, [python[label], "-m", "pipeline", "rollback"],
                                                        full, cwd, to, url, args)})

        def shell_pair(number: int) -> None:
            for to in ("v1", "v2"):
                script = shell_script(env, stack, app, to, nginx.include)
                rows.append({"round": number, **measure("shell", ["bash", "-c", script], shell_env, cwd, to,
                                                        url, args)})

        for number in range(1, args.rounds + 1):
            pairs = [partial(tool_pair, label, tree, number) for label, tree in trees] + [partial(shell_pair, number)]
            for pair in (pairs if number % 2 else list(reversed(pairs))):
                pair()
    for row in rows:
        if row["exit"] != 0:
            problems.append(f"round {row['round']} {row['who']} -> {row['to']}: exit {row['exit']}: "
                            f"{' | '.join(row['log'][-3:])}")   # type: ignore[index]
        if row["served_s"] is None:
            problems.append(f"round {row['round']} {row['who']} -> {row['to']}: nginx never served it")
        if row["failed"]:
            problems.append(f"round {row['round']} {row['who']} -> {row['to']}: {row['failed']} requests failed")
    sys.stdout.write(format_table(rows, COLUMNS))
    line, summary = summary_line(rows, args.goal)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "line": line, "problems": problems,
                                         "rounds": rows}, indent=2) + "\n")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
