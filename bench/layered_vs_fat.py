"""Layered image (IMAGE_BUILD=layered) against the fat-jar Dockerfile image: what a code-only
release costs.

    bash scripts/stack.sh start
    python -m bench.layered_vs_fat [--rounds 3] [--json out.json] [--svg docs/layered-bytes.svg]

The Spring Boot-layout test service (demo/layered/build.py: demo.Demo, 35 MB of Debian's
dependency jars) is built as jar v0, then `--rounds` more times with one class changed each time
(v1, v2, ...). Each jar becomes an image both ways, on the stack's pipeline/jre:17:
- fat: docker/Dockerfile (`COPY app.jar`), built by the engine from a context holding the jar;
- layered: pipeline/adapters/layered.py, as `deploy` runs it with IMAGE_BUILD=layered.
Every image is pushed to the stack's registry (127.0.0.1:5000, a repository per way and run).

Measured per code-only release (v1 and on, each after the one before it is in the registry):
- bytes the registry received: the blobs of the new manifest that the previous manifest did not
  have, read from the registry's HTTP API (the compressed sizes a push sends and a node that holds
  the previous release pulls);
- the image build time and the push time (wall clock, this machine: 2 cores shared);
- what a node holding the previous release pulls: the release is removed from the local engine
  (the previous one stays) and pulled back from the registry; the bytes of the layers the pull
  downloaded (not "Already exists"), from the registry's manifest, and the pull's wall time.
The 3-node swarm (bytes per node, the deploy's wall time): python -m bench.layered_swarm.
Traffic: the local docker engine and 127.0.0.1:5000 only. Images are removed at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import docker
import requests

from pipeline.adapters import layered
from pipeline.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
TIMEOUT = 120


def stack_env() -> Dict[str, str]:
    out = subprocess.run(["bash", str(REPO / "scripts" / "stack.sh"), "env"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    found = (re.match(r"^export (\w+)=(.*)$", line.strip()) for line in out.splitlines())
    return {m.group(1): (shlex.split(m.group(2)) or [""])[0] for m in found if m}


def build_jar(out: Path, change: str) -> Path:
    subprocess.run([sys.executable, str(REPO / "demo" / "layered" / "build.py"), "--out", str(out),
                    "--change", change], check=True, capture_output=True, timeout=TIMEOUT)
    return out


class Registry:
    def __init__(self, address: str, user: str, password: str) -> None:
        self.address, self.auth = address, (user, password)

    def blobs(self, repository: str, tag: str) -> Dict[str, int]:
        """The manifest's blobs (config and layers) -> their sizes."""
        answer = requests.get(f"http://{self.address}/v2/{repository}/manifests/{tag}", auth=self.auth,
                              headers={"Accept": MANIFEST_V2}, timeout=10)
        answer.raise_for_status()
        manifest = answer.json()
        return {b["digest"]: int(b["size"]) for b in [manifest["config"], *manifest["layers"]]}


def push(api: Any, ref: str, auth: Dict[str, str]) -> float:
    repository, _, tag = ref.rpartition(":")
    started = time.monotonic()
    for chunk in api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth):
        if "error" in chunk:
            raise RuntimeError(f"push {ref}: {chunk['error']}")
    return time.monotonic() - started


def pull(api: Any, ref: str, auth: Dict[str, str], blobs: Dict[str, int]) -> Tuple[float, int]:
    """Pull `ref` (removed from the engine first); its seconds and the bytes of the layers it
    downloaded (the engine names each layer by its digest's first 12 hex digits)."""
    api.remove_image(ref)
    repository, _, tag = ref.rpartition(":")
    downloaded: Set[str] = set()
    started = time.monotonic()
    for chunk in api.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth):
        if "error" in chunk:
            raise RuntimeError(f"pull {ref}: {chunk['error']}")
        if chunk.get("status") == "Pull complete":
            downloaded.add(chunk["id"])
    seconds = time.monotonic() - started
    return seconds, sum(size for digest, size in blobs.items() if digest[7:19] in downloaded)


def build_fat(api: Any, jar: Path, ref: str, base: str, labels: Dict[str, str]) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-fat-") as context:
        (Path(context) / "build" / "libs").mkdir(parents=True)
        (Path(context) / "build" / "libs" / "app.jar").write_bytes(jar.read_bytes())
        started = time.monotonic()
        for chunk in api.build(path=context, dockerfile=str(REPO / "docker" / "Dockerfile"), tag=ref, rm=True,
                               forcerm=True, decode=True, labels=labels,
                               buildargs={"BASE_IMAGE": base, "JAR": "build/libs/app.jar"}):
            if "error" in chunk:
                raise RuntimeError(f"build {ref}: {chunk['error']}")
        return time.monotonic() - started


def build_layered(api: Any, jar: Path, ref: str, base: str, labels: Dict[str, str]) -> float:
    settings = Settings.from_env({"IMAGE_BUILD": "layered", "JAR": str(jar), "BASE_IMAGE": base}, REPO)
    started = time.monotonic()
    layered.build_image(api, REPO, ref, labels, settings.build, settings.app_port)
    return time.monotonic() - started


def run(rounds: int) -> Dict[str, Any]:
    stack = stack_env()
    password = Path(stack["REGISTRY_PASSWORD_FILE"]).read_text().strip()
    registry = Registry(stack["REGISTRY_ADDR"], stack["REGISTRY_USER"], password)
    auth = {"username": stack["REGISTRY_USER"], "password": password}
    client = docker.from_env(timeout=TIMEOUT)
    base = stack["JRE_IMAGE"]
    run_id = uuid.uuid4().hex[:6]
    builders = {"fat": build_fat, "layered": build_layered}
    results: Dict[str, Dict[str, List[float]]] = {
        way: {"received": [], "build": [], "push": [], "pulled": [], "pull": []} for way in builders}
    first: Dict[str, int] = {}
    made: Set[str] = set()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-jars-") as work:
            jars = [build_jar(Path(work) / f"v{n}" / "app.jar", f"v{n}") for n in range(rounds + 1)]
            for way, build in builders.items():
                repository = f"{stack['REGISTRY_ADDR']}/bench-{way}-{run_id}"
                before: Dict[str, int] = {}
                for n, jar in enumerate(jars):
                    ref = f"{repository}:v{n}"
                    seconds = build(client.api, jar, ref, base, {"bench.app": f"bench-{run_id}", "bench.version": f"v{n}"})
                    made.add(ref)
                    pushed = push(client.api, ref, auth)
                    blobs = registry.blobs(repository.split("/", 1)[1], f"v{n}")
                    received = sum(size for digest, size in blobs.items() if digest not in before)
                    if n == 0:
                        first[way] = received
                        print(f"{way} v{n}: build {seconds:.2f} s, push {pushed:.2f} s, registry received "
                              f"{received:,} bytes", flush=True)
                    else:
                        pull_seconds, pulled = pull(client.api, ref, auth, blobs)
                        for key, value in (("received", received), ("build", seconds), ("push", pushed),
                                           ("pulled", pulled), ("pull", pull_seconds)):
                            results[way][key].append(value)
                        print(f"{way} v{n}: build {seconds:.2f} s, push {pushed:.2f} s, registry received "
                              f"{received:,} bytes in {len([d for d in blobs if d not in before])} blob(s), "
                              f"pull back {pull_seconds:.2f} s, {pulled:,} bytes", flush=True)
                    before = blobs
    finally:
        for ref in sorted(made):
            try:
                client.api.remove_image(ref, force=True)
            except docker.errors.APIError:
                pass
    summary = {way: {"first_release_bytes": first[way],
                     "code_only_release_bytes": int(statistics.median(r["received"])),
                     "build_seconds_median": round(statistics.median(r["build"]), 2),
                     "push_seconds_median": round(statistics.median(r["push"]), 2),
                     "pulled_bytes_median": int(statistics.median(r["pulled"])),
                     "pull_seconds_median": round(statistics.median(r["pull"]), 2),
                     "rounds": {k: [round(v, 2) for v in vs] for k, vs in r.items()}}
               for way, r in results.items()}
    summary["ratio_bytes"] = summary["layered"]["code_only_release_bytes"] / summary["fat"]["code_only_release_bytes"]
    return summary


def svg(summary: Dict[str, Any]) -> str:
    """Bytes the registry received per code-only release, both ways, as two bars (log scale)."""
    import math

    rows: List[Tuple[str, int]] = [("fat jar (Dockerfile)", summary["fat"]["code_only_release_bytes"]),
                                   ("layered", summary["layered"]["code_only_release_bytes"])]
    width, left, top, bar, gap = 640, 170, 40, 28, 18
    scale = (width - left - 120) / math.log10(100_000_000)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + 2 * (bar + gap) + 30}" '
             'font-family="sans-serif" font-size="13">',
             '<text x="10" y="22" font-weight="bold">Bytes pushed to the registry per code-only release '
             '(log scale)</text>']
    for i, (label, value) in enumerate(rows):
        y = top + i * (bar + gap)
        length = max(2.0, scale * math.log10(max(value, 1)))
        colour = "#c0504d" if i == 0 else "#4f81bd"
        parts += [f'<text x="10" y="{y + bar * 0.65:.0f}">{label}</text>',
                  f'<rect x="{left}" y="{y}" width="{length:.0f}" height="{bar}" fill="{colour}"/>',
                  f'<text x="{left + length + 6:.0f}" y="{y + bar * 0.65:.0f}">{_human(value)}</text>']
    parts.append(f'<text x="10" y="{top + 2 * (bar + gap) + 18}" fill="#555">35 MB of dependency jars, one class '
                 f'changed; python -m bench.layered_vs_fat</text></svg>')
    return "\n".join(parts) + "\n"


def _human(value: int) -> str:
    return f"{value / 1e6:.1f} MB" if value >= 1e6 else f"{value / 1e3:.1f} kB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 11), metavar="1..10")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--svg", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    summary = run(args.rounds)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.svg:
        args.svg.write_text(svg(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
