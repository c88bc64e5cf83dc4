"""IMAGE_BUILD=layered on the real 3-node swarm (issue 19): the release built from the Spring
Boot-layout jar on the manager, pushed to the swarm's registry, pulled by every node. A
code-only release moves only its small application layer to each node, measured on the node's own
link (its veth on the bridge pswarm0), and `status`/`history` name the digest every node runs."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
import requests

from teststack.realstack import REPO, run_pipeline
from teststack.swarmstack import NODES, node_links, swarm_env, switch_env

pytestmark = pytest.mark.integration

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
# What a node may take over its link during a code-only layered deploy: the application layer
# and the image config (under 10 kB, docs/benchmarks.md) plus swarm's own traffic and the health
# probes. The fat jar's layer alone is 32 MB: this bound fails if the dependencies move again.
CODE_ONLY_MAX_BYTES = 3_000_000


def jar(where: Path, change: str, when: float) -> Path:
    out = where / change / "app.jar"
    subprocess.run([sys.executable, str(REPO / "demo" / "layered" / "build.py"), "--out", str(out), "--change", change,
                    "--time", str(when)], check=True, capture_output=True)
    return out


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result.stdout


def test_a_code_only_layered_release_moves_only_its_application_layer_to_each_node_and_status_names_its_digest(
        swarm, app, swarm_nginx, tmp_path):
    env = swarm_env(swarm, app, REPLICAS="3", HEALTH_INTERVAL="0.5", HEALTH_TIMEOUT="180", DRAIN_SECONDS="0.5",
                    NGINX_HOST="", NGINX_INCLUDE=str(swarm_nginx.include), **switch_env(swarm_nginx, "reload"))
    env = {k: v for k, v in env.items() if k not in ("DOCKERFILE", "BUILD_CONTEXT", "BUILD_ARGS")}
    env.update(IMAGE_BUILD="layered", BASE_IMAGE=f"{swarm['SWARM_REGISTRY']}/pipeline/jre:17")
    now = time.time()
    # The change names the app: no node holds an application layer of it from an earlier run.
    v1, v2 = jar(tmp_path, f"{app}-v1", now - 60), jar(tmp_path, f"{app}-v2", now)
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1", "JAR": str(v1)}, tmp_path, timeout=600))
    assert swarm_nginx.get().text.startswith("version=v1 ")

    before = node_links()
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "JAR": str(v2)}, tmp_path, timeout=600))
    after = node_links()
    assert swarm_nginx.get().text.startswith("version=v2 ")
    to_node = {n: after[n][0] - before[n][0] for n in before}
    assert all(b < CODE_ONLY_MAX_BYTES for b in to_node.values()), to_node

    # The digest status names is the registry's, and the one every node's task runs (the nodes
    # pull by tag; each records the digest it got).
    auth = (swarm["SWARM_REGISTRY_USER"], Path(swarm["SWARM_REGISTRY_PASSWORD_FILE"]).read_text().strip())
    answer = requests.head(f"http://{swarm['SWARM_REGISTRY']}/v2/{app}/manifests/v2", auth=auth, timeout=10,
                           headers={"Accept": MANIFEST_V2})
    answer.raise_for_status()
    digest = answer.headers["Docker-Content-Digest"]
    report = json.loads(ok(run_pipeline(["status", "--json"], env, tmp_path)))
    assert (report["releases"]["live"]["digest"], report["releases"]["live"]["digest_of"]) == (digest, "registry")
    for node in range(1, NODES + 1):
        client = docker.DockerClient(base_url=f"unix://{swarm['SWARM_DIR']}/n{node}/docker.sock", timeout=60)
        try:
            [task] = client.containers.list(filters={"label": [f"pipeline.app={app}", "pipeline.color=green"]})
            assert f"{swarm['SWARM_REGISTRY']}/{app}@{digest}" in task.image.attrs["RepoDigests"], task.image.attrs
        finally:
            client.close()
    entries = json.loads(ok(run_pipeline(["history", "--json"], env, tmp_path)))
    assert entries[-1]["digest"] == digest
