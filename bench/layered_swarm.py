"""Layered image (IMAGE_BUILD=layered) against the fat-jar Dockerfile image on the 3-node test
swarm: bytes each node pulls per release, bytes pushed, and the deploy's wall time.

    bash scripts/stack.sh start
    python -m bench.layered_swarm [--rounds 2] [--json out.json]

The Spring Boot-layout test service (demo/layered/build.py: demo.Demo, 35 MB of Debian's
dependency jars) is built as jar v0, then `--rounds` more times with one class changed each time
(the change names this run, so no node holds a layer of it from an earlier run). Each way, a
service of its own is deployed to the swarm (scripts/swarm.sh: 3 dockerd in network namespaces on
bridge pswarm0, its registry on 10.99.0.1:5001) with `python -m pipeline deploy`, TARGET=swarm,
REPLICAS=3, through an nginx of the bench's own (upstream form, reload mode), v0 then v1, v2...:
- fat: docker/Dockerfile (`COPY app.jar`), built on the manager from a context holding the jar;
- layered: IMAGE_BUILD=layered on the same BASE_IMAGE (the swarm registry's pipeline/jre:17).

Measured per deploy:
- bytes each node received, and sent, over its link: the host side of its veth (pswarm-hI) on
  the bridge, before and after the command (tx_bytes: to the node, its pulls; rx_bytes: from the
  node, the manager's push). This is the wire, so it also counts what else crossed it meanwhile
  (swarm's own traffic, health probes, the deploy's API calls are over the manager's unix
  socket and are not counted): the idle rate is measured first and reported beside it;
- bytes the registry received: the blobs of the release's manifest the previous one lacked
  (the registry's HTTP API; compressed sizes);
- the deploy command's wall time (this machine: 2 cores shared with other work).
Traffic: the swarm's bridge and its namespaces, and 127.0.0.1 (nginx) only; no load is sent.
The swarm is started if it is not running (and left running); the bench holds the swarm tests'
lock (/tmp/pipeline-swarm.lock) meanwhile. The services and the release images on every node
are removed at the end.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Tuple

import docker

from bench.common import nginx_settings
from bench.layered_vs_fat import Registry, build_jar
from teststack.realstack import Nginx, free_port, run_pipeline, stack_env
from teststack.swarmstack import NODES, node_links, remove_services, start_swarm, swarm_env

REPO = Path(__file__).resolve().parents[1]
LOCK = "/tmp/pipeline-swarm.lock"
IDLE_SECONDS = 20.0


links = node_links


def moved(before: Dict[int, Tuple[int, int]], after: Dict[int, Tuple[int, int]]) -> Dict[int, Tuple[int, int]]:
    return {n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in before}


def way_env(way: str, swarm: Dict[str, str], app: str, nginx: Nginx, context: Path) -> Dict[str, str]:
    base = f"{swarm['SWARM_REGISTRY']}/pipeline/jre:17"
    env = swarm_env(swarm, app, REPLICAS="3", HEALTH_TIMEOUT="240", HEALTH_INTERVAL="0.5", DRAIN_SECONDS="0.5",
                    KEEP_RELEASES="2", **nginx_settings(nginx))
    if way == "fat":
        return {**env, "BUILD_CONTEXT": str(context), "BUILD_ARGS": f"BASE_IMAGE={base} JAR=build/libs/app.jar"}
    env = {k: v for k, v in env.items() if k not in ("DOCKERFILE", "BUILD_CONTEXT", "BUILD_ARGS")}
    return {**env, "IMAGE_BUILD": "layered", "BASE_IMAGE": base}


def run_way(way: str, swarm: Dict[str, str], jars: List[Path], run_id: str, registry: Registry) -> List[Dict[str, Any]]:
    app = f"s{run_id}{'f' if way == 'fat' else 'a'}{uuid.uuid4().hex[:1]}"
    work = Path(tempfile.mkdtemp(prefix=f"bench-{app}-"))
    nginx = Nginx(work / "nginx", free_port(), free_port(), form="upstream")
    nginx.directory.mkdir()
    context = work / "context"
    (context / "build" / "libs").mkdir(parents=True)
    env = way_env(way, swarm, app, nginx, context)
    rows: List[Dict[str, Any]] = []
    nginx.start()
    try:
        before_blobs: Dict[str, int] = {}
        for n, jar in enumerate(jars):
            version = f"v{n}"
            if way == "fat":
                shutil.copyfile(jar, context / "build" / "libs" / "app.jar")
                extra = {}
            else:
                extra = {"JAR": str(jar)}
            start_links, started = links(), time.monotonic()
            result = run_pipeline(["deploy"], {**env, **extra, "APP_VERSION": version}, work, timeout=600)
            wall = time.monotonic() - started
            wire = moved(start_links, links())
            if result.returncode != 0:
                raise SystemExit(f"{way} {version}: deploy failed (exit {result.returncode}):\n{result.stderr}")
            blobs = registry.blobs(app, version)
            received = sum(size for digest, size in blobs.items() if digest not in before_blobs)
            before_blobs = blobs
            served = nginx.get().text
            row = {"way": way, "version": version, "code_only": n > 0, "wall_seconds": round(wall, 2),
                   "registry_received": received,
                   "to_node": {str(k): v[0] for k, v in wire.items()},
                   "from_node": {str(k): v[1] for k, v in wire.items()}, "served": served.strip()}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        nginx.stop()
        remove_services(swarm, app)
        remove_node_images(swarm, app)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def remove_node_images(swarm: Dict[str, str], app: str) -> None:
    """The release images on every node (the tasks' containers go with the services first)."""
    for node in range(1, NODES + 1):
        client = docker.DockerClient(base_url=f"unix://{swarm['SWARM_DIR']}/n{node}/docker.sock", timeout=120)
        try:
            deadline = time.monotonic() + 60
            while client.containers.list(all=True, filters={"label": f"pipeline.app={app}"}) and \
                    time.monotonic() < deadline:
                time.sleep(1)
            for image in client.images.list(filters={"label": f"pipeline.app={app}"}):
                try:
                    client.images.remove(image.id, force=True)
                except docker.errors.APIError as exc:
                    print(f"node {node}: could not remove {image.tags}: {exc}", file=sys.stderr)
        finally:
            client.close()


def summary(rows: List[Dict[str, Any]], idle: Dict[int, Tuple[int, int]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"idle_bytes_per_second_to_node": {str(n): round(v[0] / IDLE_SECONDS) for n, v in idle.items()}}
    for way in ("fat", "layered"):
        code = [r for r in rows if r["way"] == way and r["code_only"]]
        first = next(r for r in rows if r["way"] == way and not r["code_only"])
        # Node 1 is the manager: the image is built there, so it pulls nothing; it pushes.
        workers = [b for r in code for n, b in r["to_node"].items() if n != "1"]
        out[way] = {
            "first_release": {k: first[k] for k in ("wall_seconds", "registry_received", "to_node", "from_node")},
            "code_only_registry_received_median": int(statistics.median(r["registry_received"] for r in code)),
            "code_only_to_each_worker_median": int(statistics.median(workers)),
            "code_only_to_each_worker_range": [min(workers), max(workers)],
            "code_only_to_manager_median": int(statistics.median(r["to_node"]["1"] for r in code)),
            "code_only_manager_sent_median": int(statistics.median(r["from_node"]["1"] for r in code)),
            "code_only_wall_seconds_median": round(statistics.median(r["wall_seconds"] for r in code), 2),
            "code_only_wall_seconds": [r["wall_seconds"] for r in code],
        }
    return out


def chart(result: Dict[str, Any]) -> str:
    """Bytes moved per code-only release, both ways, as text bars (log scale: 1 kB to 100 MB)."""
    import math

    rows = []
    for way, label in (("fat", "fat jar"), ("layered", "layered")):
        s = result[way]
        rows += [(f"{label}, pushed (manager's link)", s["code_only_manager_sent_median"]),
                 (f"{label}, registry received (its API)", s["code_only_registry_received_median"]),
                 (f"{label}, pulled by each worker node", s["code_only_to_each_worker_median"])]
    width = 50
    lines = ["bytes moved per code-only release (median; log scale, 1 kB .. 100 MB)"]
    for label, value in rows:
        length = max(1, round(width * (math.log10(max(value, 1000)) - 3) / 5))
        lines.append(f"{label:<40} {'#' * length:<{width}} {_human(value)}")
    return "\n".join(lines)


def _human(value: int) -> str:
    return f"{value / 1e6:.1f} MB" if value >= 1e6 else f"{value / 1e3:.1f} kB"


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, choices=range(1, 6), metavar="1..5")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    stack = stack_env()
    run_id = uuid.uuid4().hex[:6]
    with open(LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)   # no swarm test session starts or stops it meanwhile
        swarm = start_swarm(stack)
        registry = Registry(swarm["SWARM_REGISTRY"], swarm["SWARM_REGISTRY_USER"],
                            Path(swarm["SWARM_REGISTRY_PASSWORD_FILE"]).read_text().strip())
        with tempfile.TemporaryDirectory(prefix="bench-jars-") as work:
            jars = [build_jar(Path(work) / f"v{n}" / "app.jar", f"{run_id}-v{n}") for n in range(args.rounds + 1)]
            start = links()
            time.sleep(IDLE_SECONDS)
            idle = moved(start, links())
            rows = run_way("fat", swarm, jars, run_id, registry) + run_way("layered", swarm, jars, run_id, registry)
    result = {"rows": rows, **summary(rows, idle)}
    result["chart"] = chart(result)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    print(result["chart"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
