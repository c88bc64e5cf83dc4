"""One deploy, second by second: requests answered and requests failed under the same load, for
the seed's flow, the tool in reload mode, the tool in live mode, and a bad release that the tool's
verification switches back. Draws docs/deploy-timeline.png.

    bash scripts/stack.sh start && eval "$(bash scripts/stack.sh env)"
    pip install '.[bench]'        # matplotlib, for the picture only
    python -m bench.deploy_timeline [--flows seed,reload,live,switch-back] [--png docs/deploy-timeline.png]
                                    [--json FILE] [--startup-delay-ms 5000]

Each flow gets what bench/seed_vs_pipeline.py gives a tool: a docker network of its own (fixed
IPs, created first, removed after the last request), an nginx of its own on free 127.0.0.1 ports
switched over the stack's sshd on 127.0.0.1, and an app name. v1 is deployed without load; then
v2 is deployed under the load, which runs from `--before` seconds before the deploy until
`--after` seconds after both the deploy has returned and nginx serves v2.

  seed    bench/seed_deploy.sh, nginx/conf.d/app.conf (the seed's `proxy_pass $service_url`)
  reload  `pipeline deploy`, SWITCH_MODE=reload, the same nginx config
  live    `pipeline deploy`, SWITCH_MODE=live, nginx/live/app-live.conf (Lua balancer)
  switch-back  as live, but v2 is a bad release: the demo's FAIL_RATE=0.3 (500 to 30% of
          requests, health fine) and verification on at its defaults (VERIFY_SECONDS=30,
          VERIFY_MAX_ERROR_RATE=0.01, VERIFY_MIN_REQUESTS=20). The tool switches back to v1 and
          exits 1; the picture marks when nginx answered from v1 again.

The tool runs with its defaults (HEALTH_INTERVAL=10, DRAIN_SECONDS=10); seed, reload and live run
with VERIFY_SECONDS=0, like for like with the seed, which has no verification. The release takes
--startup-delay-ms to start (the demo service's STARTUP_DELAY_MS, passed in CONTAINER_ENV_FILE).

The load: wrk, keep-alive connections (as browsers and API clients hold them), each pausing
--pause-ms between requests, to 127.0.0.1 only, run as back-to-back one-second wrk runs
(teststack/loadgen.py `Sliced`) so that every answer and every error is placed in its
second. "Failed" is every request that did not get a 2xx: non-2xx answers (nginx's 502 when it
points at a release that is not up) and socket errors (a connection reset under the client).
Bounded: at most --max-seconds per flow and `connections` requests per --pause-ms.

Adding a series (e.g. a release that verification switches back) is one function that returns
a context manager with `url`, `setup(version)`, `deploy(version) -> exit code` and
`watch(version)` (a seed_vs_pipeline.Part or a subclass), registered in FLOWS. With
`--from-json docs/deploy-timeline.json --flows seed,reload,live,NEW` only the new one is measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from bench.seed_vs_pipeline import Part, wait_until
from teststack import loadgen
from teststack.realstack import LUA_MODULES, Nginx, free_port
from teststack.switchwatch import Watch

REPO = Path(__file__).resolve().parents[1]

PNG = REPO / "docs" / "deploy-timeline.png"
OK_COLOR, FAILED_COLOR, SERVED_COLOR, MARK_COLOR = "#4c9f70", "#d1495b", "#1f5fa8", "#555555"
BACK_COLOR = "#e08e0b"


# -- the flows -----------------------------------------------------------------------------------

class LivePart(Part):
    """The tool in live mode: nginx/live/app-live.conf, switched through its admin (over SSH)."""

    switch = "live"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("pipeline", args)
        self.tool = "live"
        self.nginx = Nginx(self.work / "nginx", free_port(), free_port(), form="live",
                           extra_conf=list(LUA_MODULES), admin_port=free_port(),
                           allowed_networks=[self.net.subnet])


class BackWatch(Watch):
    """A Watch that also notes when nginx, having served `version`, answers from `back` again."""

    def __init__(self, *args, back: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.back = back
        self.back_at: Optional[float] = None

    def _answered(self, now: float, ok: bool, body: str) -> None:
        served_before = self.served_at
        super()._answered(now, ok, body)
        if ok and served_before is not None and self.back_at is None and body.startswith(f"version={self.back} "):
            self.back_at = now


class SwitchBackPart(LivePart):
    """Live mode with verification on at its defaults; every release after v1 is a bad one: the
    demo answers 500 to 30% of requests (FAIL_RATE=0.3) while its health stays fine."""

    def extra_settings(self) -> dict:
        # Part sets VERIFY_SECONDS=0 for the like-for-like flows; this one verifies, at the default.
        return {**super().extra_settings(), "VERIFY_SECONDS": "30"}

    def deploy(self, version: str) -> int:
        bad = "" if version == "v1" else "FAIL_RATE=0.3\n"
        self.env_file.write_text(f"STARTUP_DELAY_MS={self.args.startup_delay_ms}\n{bad}")
        return super().deploy(version)

    def watch(self, version: str) -> Watch:
        if version == "v1":
            return super().watch(version)
        names = [f"{self.name}-blue", f"{self.name}-green"]
        return BackWatch(self.client, self.net.name, names, version, self.url, back="v1").start()


def seed_flow(args: argparse.Namespace) -> Part:
    return Part("seed", args)


def reload_flow(args: argparse.Namespace) -> Part:
    part = Part("pipeline", args)
    part.tool = "reload"
    return part


def live_flow(args: argparse.Namespace) -> Part:
    return LivePart(args)


def switch_back_flow(args: argparse.Namespace) -> Part:
    return SwitchBackPart(args)


@dataclass(frozen=True)
class Flow:
    title: str                                      # above its panel in the picture
    make: Callable[[argparse.Namespace], Part]      # a context manager: url, setup, deploy, watch
    exit_code: int = 0                              # what its v2 deploy should exit with


# The series, in the order drawn.
FLOWS: Dict[str, Flow] = {
    "seed": Flow("the seed's flow (bench/seed_deploy.sh)", seed_flow),
    "reload": Flow("pipeline deploy, SWITCH_MODE=reload", reload_flow),
    "live": Flow("pipeline deploy, SWITCH_MODE=live", live_flow),
    "switch-back": Flow("pipeline deploy, SWITCH_MODE=live, verification on: a bad release (500 to 30%) "
                        "switched back", switch_back_flow, exit_code=1),
}


# -- measuring -----------------------------------------------------------------------------------

@dataclass
class Second:
    at: float           # the slice's start, seconds after the deploy started
    length: float       # the slice's length (about 1 s)
    ok: int
    failed: int
    versions: Dict[str, int]


@dataclass
class Series:
    flow: str
    title: str
    exit_code: int
    deploy_seconds: float                  # from the deploy's start until it returned
    served_at: Optional[float]             # nginx's first answer from v2, after the deploy's start
    seconds: List[Second] = field(default_factory=list)
    back_at: Optional[float] = None        # switch-back: nginx's first answer from v1 again

    @property
    def ok(self) -> int:
        return sum(s.ok for s in self.seconds)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.seconds)


def record(name: str, args: argparse.Namespace) -> Series:
    flow = FLOWS[name]
    print(f"# {name}: v1 (setup, no load) ...", file=sys.stderr, flush=True)
    with flow.make(args) as part:
        part.setup("v1")
        watch = part.watch("v2")
        load = loadgen.Sliced(part.url, seconds=args.max_seconds, profile="keepalive",
                              connections=args.connections, pause_ms=args.pause_ms)
        print(f"# {name}: v2 under load ...", file=sys.stderr, flush=True)
        with load:
            try:
                time.sleep(args.before)
                started_wall, started = time.time(), time.monotonic()
                code = part.deploy("v2")
                took = time.monotonic() - started
                wait_until(lambda: watch.served_at is not None, 30)
                time.sleep(args.after)
            finally:
                watch.stop()
    series = Series(name, flow.title, code, round(took, 2),
                    None if watch.served_at is None else round(watch.served_at - started, 2))
    back_at = getattr(watch, "back_at", None)
    if back_at is not None:
        series.back_at = round(back_at - started, 2)
    for piece in load.slices:
        result = piece.result
        series.seconds.append(Second(round(piece.started - started_wall, 3), round(piece.ended - piece.started, 3),
                                     result.requests - result.non_2xx, result.failed, result.versions()))
    print(f"#   {series.ok} ok, {series.failed} failed; deploy {series.deploy_seconds} s (exit {code}), "
          f"nginx served v2 at {series.served_at} s, v1 again at {series.back_at} s", file=sys.stderr, flush=True)
    return series


# -- the picture ---------------------------------------------------------------------------------

def draw(series: List[Series], png: Path, note: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    start = min(s.at for one in series for s in one.seconds)
    end = max(s.at + s.length for one in series for s in one.seconds)
    peak = max(max(s.ok, s.failed) / s.length for one in series for s in one.seconds)
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.2 * len(series) + 1.2), sharex=True, squeeze=False)
    for ax, one in zip(axes[:, 0], series):
        x = [s.at for s in one.seconds]
        width = [s.length for s in one.seconds]
        ok = [s.ok / s.length for s in one.seconds]
        failed = [s.failed / s.length for s in one.seconds]
        ax.bar(x, ok, width=width, align="edge", color=OK_COLOR, linewidth=0)
        ax.bar(x, failed, width=width, align="edge", bottom=ok, color=FAILED_COLOR, linewidth=0)
        for s in one.seconds:
            if s.failed:     # a few failures are too thin a bar to see: say how many
                ax.annotate(f"{s.failed:,}", (s.at + s.length / 2, (s.ok + s.failed) / s.length),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                            fontsize=7, color=FAILED_COLOR)
        ax.axvline(0, color=MARK_COLOR, linestyle="--", linewidth=1)
        ax.axvline(one.deploy_seconds, color=MARK_COLOR, linestyle=":", linewidth=1.2)
        if one.served_at is not None:
            ax.axvline(one.served_at, color=SERVED_COLOR, linewidth=1.5)
        if one.back_at is not None:
            ax.axvline(one.back_at, color=BACK_COLOR, linewidth=1.5)
        ax.set_ylim(0, peak * 1.3)
        ax.set_xlim(start, end)
        ax.set_ylabel("requests / s")
        expected = FLOWS[one.flow].exit_code if one.flow in FLOWS else 0
        code = "" if one.exit_code == expected else f" (exit {one.exit_code})"
        ax.set_title(f"{one.title}{code}: {one.failed:,} failed of {one.ok + one.failed:,}", loc="left", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the deploy started")
    handles = [Patch(color=OK_COLOR), Patch(color=FAILED_COLOR),
               Line2D([], [], color=MARK_COLOR, linestyle="--"), Line2D([], [], color=SERVED_COLOR),
               Line2D([], [], color=MARK_COLOR, linestyle=":")]
    labels = ["answered 2xx", "failed (non-2xx or socket error)", "deploy starts", "nginx serves v2",
              "deploy returns"]
    if any(one.back_at is not None for one in series):
        handles.append(Line2D([], [], color=BACK_COLOR))
        labels.append("nginx serves v1 again")
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=len(labels),
               fontsize=8, frameon=False)
    fig.suptitle("One deploy (v1 -> v2) under the same keep-alive load, second by second", fontsize=12)
    fig.text(0.01, 0.005, note, fontsize=7, color=MARK_COLOR)
    lines = note.count("\n") + 1          # room at the bottom for the note, about 0.12 in a line
    fig.tight_layout(rect=(0, 0.13 * lines / fig.get_figheight(), 1, 0.93))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", default=",".join(FLOWS), help=f"comma-separated, from {', '.join(FLOWS)}")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pause-ms", type=int, default=50, help="each connection's pause between requests")
    parser.add_argument("--startup-delay-ms", type=int, default=5000)
    parser.add_argument("--before", type=float, default=3.0, help="seconds of load before the deploy")
    parser.add_argument("--after", type=float, default=3.0, help="seconds of load after it is done and served")
    parser.add_argument("--max-seconds", type=int, default=120, help="the load's hard limit per flow")
    parser.add_argument("--png", type=Path, default=PNG)
    parser.add_argument("--json", type=Path, help="also write the series here")
    parser.add_argument("--from-json", type=Path,
                        help="take the flows a --json file holds from it, measure only the others")
    parser.add_argument("--logs", type=Path, help="keep each deploy's output and nginx's error log here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.flows.split(",") if n.strip()]
    if any(n not in FLOWS for n in names) or not 1 <= args.connections <= 128 or args.pause_ms < 10 \
            or args.max_seconds > 300:
        parser.error(f"flows from {', '.join(FLOWS)}; connections 1-128; pause-ms at least 10; "
                     "max-seconds up to 300")
    # What Part expects of its arguments: the tool's defaults for health and drain.
    args.health_interval, args.drain = 10.0, 10.0

    saved: Dict[str, Series] = {}
    note = ""
    if args.from_json:
        # Flows found there are drawn as they were measured; only the others are measured now.
        kept = json.loads(args.from_json.read_text())
        saved = {s["flow"]: Series(**{**s, "seconds": [Second(**x) for x in s["seconds"]]}) for s in kept["series"]}
        note = kept["note"]
    series = [saved[name] if name in saved else record(name, args) for name in names]
    measured = [name for name in names if name not in saved]
    if note and measured:
        # The kept note describes the kept series' run; say when and under what load the rest ran.
        note += (f"\n{', '.join(measured)}: measured {time.strftime('%Y-%m-%d')}, load average "
                 f"{os.getloadavg()[0]:.0f} on {os.cpu_count()} CPUs, same load and settings")
    if not note:
        note = (f"python -m bench.deploy_timeline: wrk, {args.connections} keep-alive connections pausing "
                f"{args.pause_ms} ms between requests, to 127.0.0.1; the release starts in "
                f"{args.startup_delay_ms / 1000:g} s;\ntool defaults (HEALTH_INTERVAL=10, DRAIN_SECONDS=10); "
                f"nginx switched over SSH; {time.strftime('%Y-%m-%d')}, load average "
                f"{os.getloadavg()[0]:.0f} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"note": note, "series": [asdict(s) for s in series]}, indent=2) + "\n")
    for one in series:
        print(f"{one.flow}: {one.ok} ok, {one.failed} failed, deploy {one.deploy_seconds} s (exit {one.exit_code}), "
              f"served v2 at {one.served_at} s")
    draw(series, args.png, note)
    print(f"drew {args.png}")
    return 0 if all(s.exit_code == FLOWS[s.flow].exit_code for s in series) else 1


if __name__ == "__main__":
    sys.exit(main())
