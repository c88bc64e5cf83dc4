"""Zero downtime, proven under load (issue 4): wrk through nginx on 127.0.0.1 while deploys run.

The demo service is started with STARTUP_DELAY_MS=2000, so, like a Spring Boot app, it refuses
connections for a few seconds after its container starts. Every deploy goes through the CLI.

Each test prints its figures and writes them as JSON to tmp_path and to
$TMPDIR/pipeline-load/<test>.json (docs/benchmarks.md quotes them).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import pytest

from teststack import loadgen
from teststack.switchwatch import Watch
from teststack.realstack import Nginx, run_pipeline

pytestmark = pytest.mark.integration

STARTUP_DELAY_MS = 2000
HEALTH_INTERVAL = 1.0
# The keep-alive test places every error in time: there the drain is long enough that the old
# container is stopped well after the reload's own effects (a reload takes effect within ~0.1 s
# here), so an error at the stop cannot hide in the reload's second.
SLICED_DRAIN_SECONDS = 2.0
# The other tests count every error wherever it falls (or, for timeliness, measure before the
# drain starts), so the suite's usual drain serves them: a shorter one only stops the old
# container sooner after the switch.
DRAIN_SECONDS = 0.5
# A reload resets client connections within this long after the reload command starts.
RELOAD_WINDOW = 1.0
REPORT_DIR = Path(tempfile.gettempdir()) / "pipeline-load"


@pytest.fixture
def env(settings_env, nginx, tmp_path) -> Dict[str, str]:
    """A service that needs ~2 s to start; every nginx reload the tool does is time-stamped."""
    container_env = tmp_path / "container.env"
    container_env.write_text(f"STARTUP_DELAY_MS={STARTUP_DELAY_MS}\n")
    return {
        **settings_env,
        "NGINX_INCLUDE_FORM": nginx.form,
        "NGINX_RELOAD_COMMAND": reload_command(nginx, tmp_path),
        "CONTAINER_ENV_FILE": str(container_env),
        "HEALTH_INTERVAL": f"{HEALTH_INTERVAL:g}",
        "HEALTH_TIMEOUT": "60",
        "DRAIN_SECONDS": f"{DRAIN_SECONDS:g}",
        "STOP_TIMEOUT": "10",
    }


def reload_command(nginx: Nginx, tmp_path: Path) -> str:
    """nginx -s reload, writing the wall-clock time of each call to reloads.log first."""
    script = 'date +%s.%N >> "$0" && exec "$@"'
    return shlex.join(["sh", "-c", script, str(tmp_path / "reloads.log"), *nginx.argv("-s", "reload")])


def reloads(tmp_path: Path, since: float = 0.0, until: float = float("inf")) -> List[float]:
    path = tmp_path / "reloads.log"
    stamps = [float(line) for line in path.read_text().split()] if path.exists() else []
    return [t for t in stamps if since <= t <= until]


def deploy(env: Dict[str, str], cwd: Path, version: str) -> subprocess.CompletedProcess:
    result = run_pipeline(["deploy"], {**env, "APP_VERSION": version}, cwd, timeout=120)
    assert result.returncode == 0, f"deploy {version}: exit {result.returncode}\n{result.stderr}"
    return result


def record(name: str, data: dict, tmp_path: Path) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)
    (tmp_path / f"{name}.json").write_text(text + "\n")
    REPORT_DIR.mkdir(exist_ok=True)
    (REPORT_DIR / f"{name}.json").write_text(text + "\n")
    print(f"\n{name}: {json.dumps(data, sort_keys=True)}")


def url(nginx: Nginx) -> str:
    return f"http://127.0.0.1:{nginx.port}/"


VERSIONS = {"version=v1 color=blue", "version=v2 color=green", "version=v3 color=blue"}


# -- 1. a new connection per request --------------------------------------------------------------

@pytest.mark.parametrize("nginx", ["set", "upstream"], indirect=True)
def test_connection_close_clients_lose_nothing_across_two_deploys(world, nginx, env, tmp_path):
    if nginx.form == "set":
        # Here every request opens a new connection to the backend too; at this rate the
        # TIME_WAIT sockets exhaust the local ports within seconds unless they are reused
        # (docs/benchmarks.md). scripts/stack.sh sets it; the README tells nginx hosts to.
        assert tw_reuse() == 1, "net.ipv4.tcp_tw_reuse must be 1 for the set form under load: run scripts/stack.sh start"
    deploy(env, tmp_path, "v1")

    started = time.time()
    with loadgen.Load(url(nginx), profile="close", connections=16, seconds=120) as load:
        time.sleep(1)
        deploy(env, tmp_path, "v2")
        deploy(env, tmp_path, "v3")
        time.sleep(1)
    result = load.result
    record(f"close-{nginx.form}", {**result.summary(), "reloads": len(reloads(tmp_path, since=started)),
                                   "tcp_tw_reuse": tw_reuse()}, tmp_path)

    assert result.failed == 0, result.line()
    assert set(result.versions()) == VERSIONS, "the load spans both deploys"


def tw_reuse() -> int:
    return int(Path("/proc/sys/net/ipv4/tcp_tw_reuse").read_text())


# -- 2. keep-alive clients: only the reload's own floor -------------------------------------------

def test_keepalive_clients_see_no_more_than_the_reload_floor(world, nginx, env, tmp_path):
    """A reload closes the old workers' idle client connections; a client that has just sent a
    request on one sees a read error. That floor is measured first with bare reloads under the
    same load. The deploys must add nothing: no non-2xx, connect errors or timeouts, one reload
    per deploy, and no socket error at any other moment than one of those reloads.

    The counts themselves are not compared: a bare reload resets anything from none to all 32
    connections here (CPU scheduling decides how many are idle at that instant), so "2 deploys
    <= 2 bare reloads" would fail about every other run without any difference in behaviour
    (bench/reload_floor.py; docs/benchmarks.md, "the reload floor"). Both are recorded.
    """
    env = {**env, "DRAIN_SECONDS": f"{SLICED_DRAIN_SECONDS:g}"}
    deploy(env, tmp_path, "v1")
    profile = dict(profile="keepalive", connections=32)
    bare_reload = shlex.split(reload_command(nginx, tmp_path))

    started = time.time()
    with loadgen.Sliced(url(nginx), seconds=30, **profile) as floor_load:
        for pause in (2.0, 3.0):
            time.sleep(pause)
            subprocess.run(bare_reload, check=True, capture_output=True)
        time.sleep(2.5)
    floor_reloads = reloads(tmp_path, since=started)

    started = time.time()
    with loadgen.Sliced(url(nginx), seconds=120, **profile) as deploy_load:
        time.sleep(1)
        deploy(env, tmp_path, "v2")
        deploy(env, tmp_path, "v3")
        time.sleep(1)
    deploy_reloads = reloads(tmp_path, since=started)

    _, floor_elsewhere = floor_load.split([(t, t + RELOAD_WINDOW) for t in floor_reloads])
    _, during_elsewhere = deploy_load.split([(t, t + RELOAD_WINDOW) for t in deploy_reloads])
    record("keepalive-floor-vs-deploy", {
        "floor": {**floor_load.result.summary(), "reloads": len(floor_reloads),
                  "resets_per_reload": per_reload(floor_load, floor_reloads)},
        "deploy": {**deploy_load.result.summary(), "reloads": len(deploy_reloads),
                   "resets_per_reload": per_reload(deploy_load, deploy_reloads)},
    }, tmp_path)

    assert len(floor_reloads) == 2
    assert len(deploy_reloads) == 2, "one reload per deploy"
    total = deploy_load.result
    assert (total.non_2xx, total.connect_errors, total.timeouts) == (0, 0, 0), total.line()
    assert during_elsewhere.socket_errors == 0, f"errors away from the deploys' reloads: {during_elsewhere.line()}"
    # The floor's measurement is sound too: the same kinds of error only, at its reloads only.
    assert (floor_load.result.non_2xx, floor_load.result.connect_errors, floor_load.result.timeouts) == (0, 0, 0)
    assert floor_elsewhere.socket_errors == 0, floor_elsewhere.line()
    assert set(total.versions()) == VERSIONS


def per_reload(load: loadgen.Sliced, stamps: List[float]) -> List[int]:
    """Read and write errors in the second of each reload."""
    counts = []
    for stamp in stamps:
        at, _ = load.split([(stamp, stamp + RELOAD_WINDOW)])
        counts.append(at.read_errors + at.write_errors)
    return counts


# -- 3. steady load on the upstream (keepalive) form ----------------------------------------------

@pytest.mark.parametrize("nginx", ["upstream"], indirect=True)
def test_upstream_form_holds_steady_load_on_a_few_backend_connections(world, nginx, env, tmp_path):
    """The seed's `proxy_pass $service_url` opens a backend connection per request, each left in
    TIME_WAIT for 60 s: at 1,000 req/s that is more than the 28,232 local ports within 30 s,
    then `connect() ... Cannot assign requested address` and 502s unless TIME_WAIT sockets are
    reused (docs/benchmarks.md measures it). The upstream form reuses its connections: nginx
    replaces each after 1000 requests (upstream keepalive_requests), so the sockets it leaves
    in TIME_WAIT grow with rate / 1000, not with the rate."""
    deploy(env, tmp_path, "v1")
    backend = f"{world.network.blue_ip}:8080"
    # 15 s of load: in the set form every request is a backend connection, all still in TIME_WAIT
    # at the end, so the bound below separates the forms at any rate the load reaches (the rate
    # itself is bench/'s: `python -m bench.port_exhaustion`; this test recorded 9,258-16,492 req/s).
    seconds = 15
    samples: List[int] = []
    with loadgen.Load(url(nginx), profile="keepalive", connections=32, seconds=seconds) as load:
        while time.monotonic() - load.started < seconds - 1:
            time.sleep(1)
            samples.append(backend_sockets(backend))
        result = load.wait()
    record("steady-upstream", {**result.summary(), "backend_sockets_max": max(samples),
                               "backend_sockets": samples}, tmp_path)

    assert result.failed == 0, result.line()
    # Every backend connection nginx closed is still in TIME_WAIT (60 s, longer than this test), so
    # the socket count is about the number of connections opened. The set form opens one per
    # request; the upstream form keeps at most 2 x 32 open (keepalive 32, plus one per client in
    # flight) and replaces each after `keepalive_requests` (1000) requests. Allowing one new socket
    # per 100 requests beyond those 64 separates the forms at any rate, without asserting one.
    assert result.requests > 1000, f"too little load to show anything: {result.line()}"
    assert max(samples) <= 64 + result.requests / 100, \
        f"backend sockets (any state), every second: {samples}; {result.requests} requests"
    assert "Cannot assign requested address" not in (nginx.directory / "app.error.log").read_text()


def backend_sockets(address: str) -> int:
    """TCP sockets on this host to the backend, in any state (TIME_WAIT included)."""
    out = subprocess.run(["ss", "-Htan", "dst", address], capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


# -- 4. timeliness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("over_ssh", [False, True], ids=["local-nginx", "nginx-over-ssh"])
def test_nginx_serves_the_new_color_soon_after_it_first_answers_health(world, nginx, env, stack, tmp_path,
                                                                       over_ssh):
    if over_ssh:
        env = {**env, "NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": stack["SSH_PORT"],
               "NGINX_SSH_KEY": stack["SSH_KEY"], "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"]}
    deploy(env, tmp_path, "v1")
    switches = {}
    for version, color in (("v2", "green"), ("v3", "blue")):
        with Watch(world.client, world.network.name, [f"{world.app}-{color}"], version,
                   f"http://127.0.0.1:{nginx.port}/") as watch:
            deploy(env, tmp_path, version)
            time.sleep(0.1)
        switches[version] = watch
    record("timeliness", {v: {"healthy_at": w.healthy_at, "served_at": w.served_at, "delay": w.delay,
                              "bound": HEALTH_INTERVAL + 0.5} for v, w in switches.items()}, tmp_path)

    for version, switch in switches.items():
        assert switch.healthy_at is not None and switch.served_at is not None, (version, switch)
        assert switch.delay <= HEALTH_INTERVAL + 0.5, f"{version}: served {switch.delay:.2f}s after healthy"


def test_a_slow_start_is_served_soon_after_it_is_ready_at_the_default_interval(world, nginx, env, tmp_path):
    """HEALTH_INTERVAL at its default (10 s) and a release that takes 8 s to listen: the probes
    alone would back off to a probe at 15.75 s (served ~7.9 s after ready, issue 10); the port
    check every 0.1 s sees it listen and the probes start over. The bound is the same as above,
    far from the 7.9 s; bench/readiness.py measures the 0.5 s goal over startups of 1-30 s."""
    env = {k: v for k, v in env.items() if k != "HEALTH_INTERVAL"}
    deploy(env, tmp_path, "v1")
    (tmp_path / "container.env").write_text("STARTUP_DELAY_MS=8000\n")
    with Watch(world.client, world.network.name, [f"{world.app}-green"], "v2",
               f"http://127.0.0.1:{nginx.port}/") as watch:
        result = deploy(env, tmp_path, "v2")
        time.sleep(0.1)
    record("timeliness-default-interval", {"healthy_at": watch.healthy_at, "served_at": watch.served_at,
                                           "delay": watch.delay, "startup_ms": 8000}, tmp_path)
    assert watch.healthy_at is not None and watch.served_at is not None, watch
    assert "port open after" in result.stderr
    assert watch.delay <= HEALTH_INTERVAL + 0.5, f"served {watch.delay:.2f}s after healthy"
