"""The health gate against a real HTTP server on 127.0.0.1, on a fake clock: the waits between
probes are the gate's own decisions, read off the clock, never real time (a loaded machine cannot
turn these red)."""
import http.server
import threading

import pytest

from pipeline.core.clock import SYSTEM, Clock
from pipeline.core.errors import ContainerExited, HealthCheckFailed
from pipeline.adapters.health import LocalTransport
from pipeline.core.gate import ALIVE_CHECK_EVERY, Gate, Transport, probe, wait_ready

from .fakes import FakeClock


def wait_healthy(url, interval, timeout, check_alive, transport: Transport = None, logs=lambda: [],
                 can_connect=None, clock: Clock = SYSTEM) -> int:
    """The one gate (gate.wait_ready) on one URL: what a single engine's gate is
    (engine.Engine.gate), with the parts these tests stand in for."""
    transport = transport or LocalTransport()
    gate = Gate(what=url, awaited=url, check_alive=check_alive,
                probe_all=lambda seconds: probe(transport, url, seconds), logs=logs, can_connect=can_connect)
    return wait_ready(gate, interval, timeout, clock)


class Server:
    def __init__(self, answers, clock=None):
        self.answers = list(answers)
        self.times = []
        self.clock = clock or FakeClock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.times.append(outer.clock.now())
                code = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/health"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(request):
    s = Server(request.param)
    yield s
    s.close()


def on(clock: FakeClock) -> dict:
    """wait_healthy's time argument: `clock`."""
    return {"clock": clock}


@pytest.mark.parametrize("server", [[503, 503, 503, 200]], indirect=True)
def test_waits_for_200_starting_quick_then_at_most_interval_apart(server):
    attempts = wait_healthy(server.url, interval=0.6, timeout=10, check_alive=lambda: None, **on(server.clock))
    assert attempts == 4
    gaps = [b - a for a, b in zip(server.times, server.times[1:])]
    assert gaps[0] < 0.45                    # the first retry comes quick ...
    assert all(g <= 0.6 + 1e-9 for g in gaps)  # ... and none waits longer than the interval
    assert gaps[-1] == pytest.approx(0.6)    # ... which it settles at


@pytest.mark.parametrize("server", [[503]], indirect=True)
def test_timeout_reports_what_the_endpoint_last_said(server):
    started = server.clock.now()
    with pytest.raises(HealthCheckFailed) as caught:
        wait_healthy(server.url, interval=0.2, timeout=1, check_alive=lambda: None, logs=lambda: ["boom"],
                     **on(server.clock))
    assert "last: HTTP 503" in str(caught.value)
    assert caught.value.detail() == ["container log: boom"]
    assert server.clock.now() - started == pytest.approx(1.0)   # the last probe comes at the timeout


@pytest.mark.parametrize("server", [[503]], indirect=True)
def test_a_dead_container_fails_at_once_not_after_the_interval(server):
    clock = server.clock
    died_at = clock.now() + 0.3

    def check_alive():
        if clock.now() > died_at:
            raise ContainerExited("app-green", "exited")

    with pytest.raises(ContainerExited):
        wait_healthy(server.url, interval=30, timeout=300, check_alive=check_alive, **on(clock))
    # Seen at the first check after it died, a fraction of a second later, not at the next probe.
    assert died_at < clock.now() <= died_at + ALIVE_CHECK_EVERY
    assert len(server.times) == 2


def test_nothing_listening_counts_as_not_healthy():
    clock = FakeClock()
    with pytest.raises(HealthCheckFailed, match="connection refused"):
        wait_healthy("http://127.0.0.1:9/health", interval=0.1, timeout=0.5, check_alive=lambda: None, **on(clock))


# -- where probes run, and the route rule ---------------------------------------------------------

from pathlib import Path  # noqa: E402


from pipeline.flows import deploy as flows  # noqa: E402
from pipeline.core.errors import EXIT_PREFLIGHT, NginxHostFailed, PreflightError  # noqa: E402
from pipeline.core.gate import NotHealthyYet  # noqa: E402
from pipeline.adapters.health import ChannelTransport, Prober, RouteRefused, route_answer, route_problem  # noqa: E402
from pipeline.core.settings import Settings  # noqa: E402

from .fakes import FakeHost, FakeProber  # noqa: E402

BRIDGE = "172.29.5.2 dev br-4e82f078a87e src 172.29.5.1 uid 0 \n    cache \n"
GATEWAY = "172.20.0.2 via 10.0.0.1 dev eth0 src 10.0.0.5 uid 0 \n    cache \n"


@pytest.mark.parametrize("code, output, problem", [
    (0, BRIDGE, None),
    (0, "172.17.0.5 dev docker0 src 172.17.0.1 uid 0 \n    cache \n", None),
    (0, GATEWAY, "reaches it only through the gateway 10.0.0.1 (eth0), not a local bridge"),
    (2, "RTNETLINK answers: Network is unreachable\n", "has no route to it (RTNETLINK answers: Network is unreachable)"),
    (2, "RTNETLINK answers: Invalid argument\n", "has no route to it (RTNETLINK answers: Invalid argument)"),
    (0, "local 127.0.0.1 dev lo src 127.0.0.1 uid 0 \n    cache <local> \n", "holds that address itself"),
    (0, "blackhole 10.1.2.3 uid 0\n", "has a blackhole route for it"),
    (0, "unreachable 10.1.2.3 uid 0\n", "has a unreachable route for it"),
    (127, "ip: command not found", "has no `ip` command"),
    (255, "ssh: SSH session not active", "could not be asked for its route over SSH (SSH session not active)"),
    (124, "timed out after 60s", "did not answer `ip route get` (timed out after 60s)"),
    (0, "", "gave no answer"),
    (0, "172.29.5.2 src 172.29.5.1 uid 0\n", "gave an answer without an interface"),
])
def test_route_get_answers_are_directly_connected_or_refused(code, output, problem):
    found = route_problem(code, route_answer(output, "172.29.5.2"))
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


def route_host(routes, bridges=(), runs_commands=True) -> FakeHost:
    """The nginx host as the route check sees it: `ip -4 route get IP` answers and which
    interfaces are bridges. Any other command fails."""
    return FakeHost(routes=routes, bridges=bridges, runs_commands=runs_commands, description="root@nginx-host:22")


def bridge_reads(host: FakeHost):
    """The devices whose bridge file was read, in order."""
    return [path.split("/")[4] for path in host.reads]


def strict_transport() -> FakeProber:
    """A transport on the nginx host that must not be reached."""
    return FakeProber(where="the nginx host root@example:22")


def test_an_address_behind_a_gateway_is_never_probed_and_is_a_preflight_error():
    transport = strict_transport()
    prober = Prober(transport, route_host({"172.20.0.2": (0, GATEWAY)}), "DEPLOY_NETWORK=deploy ...")
    with pytest.raises(RouteRefused) as caught:
        probe(prober, "http://172.20.0.2:8080/actuator/health", 2.0)
    assert caught.value.exit_code == EXIT_PREFLIGHT
    message = str(caught.value)
    assert "\n" not in message
    assert "172.20.0.2" in message and "gateway 10.0.0.1" in message
    assert "the nginx host root@example:22" in message and "DEPLOY_NETWORK=deploy" in message
    with pytest.raises(RouteRefused):
        prober.can_connect("172.20.0.2", 8080, 1.0)
    assert transport.asked == []


def test_a_bridge_address_is_checked_once_then_probed_through_the_transport():
    host = route_host({"172.29.5.2": (0, BRIDGE)}, bridges={"br-4e82f078a87e"})
    transport = FakeProber(answers={}, where="the nginx host root@example:22")
    prober = Prober(transport, host)
    for _ in range(3):
        assert probe(prober, "http://172.29.5.2:8080/actuator/health", 2.0).startswith("HTTP 200")
    assert prober.can_connect("172.29.5.2", 8080, 1.0)
    assert host.route_asks == ["172.29.5.2"] and bridge_reads(host) == ["br-4e82f078a87e"]
    assert len(transport.asked) == 3


def test_a_directly_connected_interface_that_is_not_a_bridge_is_refused():
    # e.g. a VPN's tun0 carrying the default route without a gateway
    host = route_host({"172.20.0.2": (0, "172.20.0.2 dev tun0 src 10.8.0.6 uid 0\n    cache\n")})
    prober = Prober(strict_transport(), host)
    with pytest.raises(RouteRefused, match="reaches it on tun0, which is not a bridge"):
        probe(prober, "http://172.20.0.2:8080/actuator/health", 2.0)


def channel_host(refuse=False, routes=None) -> FakeHost:
    """An NginxHost that offers only channels (a plain socket on this machine here: the seam the
    SSH host implements with a direct-tcpip channel) and `ip route get`."""
    return FakeHost(routes=routes or {}, channels="refuse" if refuse else "connect", description="root@nginx-host:22")


@pytest.mark.parametrize("server", [[503, 200]], indirect=True)
def test_the_channel_transport_speaks_http_over_the_nginx_hosts_channels(server):
    host = channel_host()
    attempts = wait_healthy(server.url, interval=0.3, timeout=10, check_alive=lambda: None,
                            transport=ChannelTransport(host), **on(server.clock))
    port = int(server.url.split(":")[2].split("/")[0])
    assert attempts == 2
    assert host.opened == [("127.0.0.1", port)] * 2   # one channel per probe, nothing else
    assert len(server.times) == 2
    assert ChannelTransport(host).can_connect("127.0.0.1", port, 1.0)


def test_a_channel_the_nginx_host_cannot_open_is_not_healthy_yet():
    with pytest.raises(NotHealthyYet, match="refused or unreachable from the nginx host"):
        ChannelTransport(channel_host(refuse=True)).get("http://172.29.5.2:8080/health", 1.0)
    assert not ChannelTransport(channel_host(refuse=True)).can_connect("172.29.5.2", 8080, 1.0)


def test_remote_nginx_means_probes_through_the_ssh_host_and_routes_checked_there():
    host = channel_host(routes={"172.20.0.2": (0, GATEWAY)})
    prober = Prober.for_host(host, remote=True)
    assert isinstance(prober.transport, ChannelTransport) and prober.transport.host is host
    assert prober.where == "the nginx host root@nginx-host:22"
    with pytest.raises(RouteRefused, match="run on the nginx host root@nginx-host:22, which reaches"):
        prober.check_route("172.20.0.2")     # asked of the nginx host: its answer decides
    assert host.opened == []
    assert isinstance(Prober.for_host(host, remote=False).transport, LocalTransport)


@pytest.mark.parametrize("server", [[200]], indirect=True)
def test_local_probes_ignore_a_proxy_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert probe(LocalTransport(), server.url, 2.0).startswith("HTTP 200")
    port = int(server.url.split(":")[2].split("/")[0])
    assert LocalTransport().can_connect("127.0.0.1", port, 1.0)


# A deploy refused at the route check, against strict fakes at the Context seam.
from .fakes import Allowing  # noqa: E402


def test_a_deploy_whose_new_network_is_not_a_local_bridge_removes_it_and_changes_nothing(tmp_path):
    settings = Settings.from_env({"APP_VERSION": "v1", "DEPLOY_SUBNET": "172.29.5.0/24",
                                  "DEPLOY_GATEWAY": "172.29.5.1", "BLUE_IP": "172.29.5.2",
                                  "GREEN_IP": "172.29.5.3",
                                  # Verification has its own preflight (verify.check); not this test's.
                                  "VERIFY_SECONDS": "0"}, tmp_path)
    engine = Allowing(network_exists=False, ensure_network=True, remove_network=None,
                      probe_ips=["172.29.5.2", "172.29.5.3"])
    switch = Allowing(check=None)
    host = route_host({"172.29.5.2": (0, "172.29.5.2 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0\n"),
                      "172.29.5.3": (0, "172.29.5.3 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0\n")})
    prober = Prober(strict_transport(), host)
    files = FakeHost()   # the lock and the history; the include stays untouched
    ctx = flows.Context(settings, engine, files, switch, Path(tmp_path), {}, prober, started=0.0)
    with pytest.raises(RouteRefused, match="not probing 172.29.5.2"):
        flows.deploy(ctx)
    assert str(settings.nginx_include) not in files.files and str(settings.releases_path()) not in files.files
    assert engine.calls == ["network_exists", "ensure_network", "probe_ips", "remove_network"]
    assert switch.calls == ["check"]


def test_the_routes_of_every_address_are_asked_in_one_command_after_true_and_each_bridge_read_once():
    # Over SSH each command is a session of its own (the login shell starts for each): issue 15.
    other = "172.29.5.3 dev br-4e82f078a87e src 172.29.5.1 uid 0 \n    cache \n"
    host = route_host({"172.29.5.2": (0, BRIDGE), "172.29.5.3": (0, other)}, bridges={"br-4e82f078a87e"})
    prober = Prober(strict_transport(), host)
    prober.check_routes(["172.29.5.2", "172.29.5.3"])
    assert host.batches == [[["true"], ["ip", "-4", "route", "get", "172.29.5.2"],
                             ["ip", "-4", "route", "get", "172.29.5.3"]]]
    assert bridge_reads(host) == ["br-4e82f078a87e"]   # one device, read once
    prober.check_routes(["172.29.5.2", "172.29.5.3"])   # known now: nothing asked again
    prober.check_route("172.29.5.3")
    assert len(host.batches) == 1 and host.route_asks == ["172.29.5.2", "172.29.5.3"]


def test_the_first_address_refused_ends_the_check_and_later_ones_are_not_asked():
    host = route_host({"172.29.5.2": (2, "RTNETLINK answers: Network is unreachable\n")})
    with pytest.raises(RouteRefused, match="not probing 172.29.5.2: .* has no route to it"):
        Prober(strict_transport(), host).check_routes(["172.29.5.2", "172.29.5.3"])
    assert host.route_asks == ["172.29.5.2"]


def test_a_nginx_host_that_runs_no_commands_is_a_preflight_error_at_the_route_check():
    host = route_host({}, runs_commands=False)
    with pytest.raises(PreflightError) as caught:
        Prober(strict_transport(), host).check_routes(["172.29.5.2"])
    assert not isinstance(caught.value, RouteRefused) and caught.value.exit_code == EXIT_PREFLIGHT
    assert str(caught.value) == ("nginx host root@nginx-host:22 over SSH: running `true` exited with 1: "
                                 "This service allows sftp connections only.")
    assert host.route_asks == []


def test_a_session_that_fails_at_the_route_check_is_a_preflight_error_naming_the_commands():
    broken = route_host({})

    def run_steps(steps):
        raise NginxHostFailed("nginx host root@nginx-host:22 over SSH", "running `true` then `ip ...`",
                              "no answer within 3s (NETWORK_TIMEOUT)")
    broken.run_steps = run_steps
    with pytest.raises(PreflightError, match=r"^nginx host root@nginx-host:22 over SSH: running `true` then"):
        Prober(strict_transport(), broken).check_routes(["172.29.5.2"])


SHELL_NOISE = "rm: cannot remove '/root/.pyenv/shims/tmp.QXSeTsXbXe': No such file or directory\n"


@pytest.mark.parametrize("output", [SHELL_NOISE + BRIDGE, BRIDGE + SHELL_NOISE])
def test_what_the_login_shell_prints_around_the_route_is_not_the_answer(output):
    # Seen over SSH on a loaded machine: the shell's own stderr came before `ip`'s answer.
    assert route_problem(0, route_answer(output, "172.29.5.2")) is None
    assert route_problem(0, route_answer(SHELL_NOISE + GATEWAY, "172.20.0.2")).startswith("reaches it only")


# -- the schedule, on a fake clock ------------------------------------------------------------------
#
# The gate waits on a FakeClock (no sleep longer than ALIVE_CHECK_EVERY) through a FakeProber that
# is one service at HEALTH: it listens from `listen_at` and is healthy from `healthy_at`; anything
# else it is asked fails the test. `seen` holds its connects and probes, and the container checks,
# in order, with their times.

from typing import List  # noqa: E402

from pipeline.core import gate  # noqa: E402

HEALTH = "http://10.0.0.2:8080/health"


class Service:
    """A FakeProber standing for one service at HEALTH, the gate waiting on its FakeClock."""

    def __init__(self, listen_at: float, healthy_at: float = None):
        self.clock = FakeClock(0.0, max_sleep=gate.ALIVE_CHECK_EVERY)
        self.prober = FakeProber(service=(HEALTH, listen_at, listen_at if healthy_at is None else healthy_at),
                                 clock=self.clock)

    def check_alive(self) -> None:   # the container: marked among what the prober saw
        self.prober.seen.append(("alive", self.clock.now()))

    def wait(self, interval=10.0, timeout=300.0, connect=True) -> int:
        can_connect = gate.connect_check(self.prober, "10.0.0.2", 8080) if connect else None
        return wait_healthy(HEALTH, interval, timeout, self.check_alive, self.prober,
                            can_connect=can_connect, clock=self.clock)

    @property
    def events(self):
        return self.prober.seen

    @property
    def probes(self) -> List[float]:   # times of health GETs
        return [t for kind, t in self.prober.seen if kind == "probe"]

    def gaps(self):
        return [b - a for a, b in zip(self.probes, self.probes[1:])]


def test_without_a_connect_check_the_gaps_double_from_a_quarter_second_to_the_interval():
    service = Service(listen_at=40.0)
    service.wait(interval=10.0, connect=False)
    assert service.gaps() == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0], abs=0.01)
    # So a service ready at 8 s waited until the probe at 15.75 s: what the connect check is for.


@pytest.mark.parametrize("startup", [1, 2, 5, 8, 12, 20, 30])
def test_with_a_connect_check_readiness_is_seen_within_a_tick_of_listening(startup):
    service = Service(listen_at=float(startup))
    service.wait(interval=10.0)
    assert startup <= service.probes[-1] <= startup + gate.CONNECT_CHECK_EVERY + 0.01
    # ... and the health probes themselves still back off to HEALTH_INTERVAL, never further apart.
    assert max(service.gaps()) <= 10.0 + 0.01
    assert len(service.probes) <= 9


def test_once_listening_the_probes_start_over_from_short_gaps():
    # Listens at 8 s, but its health answers 503 for another 1.2 s (a framework still wiring up).
    service = Service(listen_at=8.0, healthy_at=9.2)
    service.wait(interval=10.0)
    after = [t for t in service.probes if t >= 8.0]
    gaps = [b - a for a, b in zip(after, after[1:])]
    assert after[0] <= 8.0 + gate.CONNECT_CHECK_EVERY + 0.01     # at once when the port opens
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8], abs=0.01)   # then short gaps, doubling
    assert service.probes[-1] - 9.2 < 0.8


def test_the_port_is_tried_only_right_after_the_container_was_checked():
    service = Service(listen_at=3.0)
    service.wait(interval=10.0)
    kinds = [kind for kind, _ in service.events]
    assert kinds.count("connect") >= 25                             # every 0.1 s for 3 s
    for i, kind in enumerate(kinds):
        if kind in ("connect", "probe"):
            assert kinds[i - 1] == "alive", f"event {i} ({kind}) not preceded by the container check"


def test_a_port_open_from_the_start_costs_one_extra_probe_not_a_faster_schedule():
    # Listening at once but unhealthy for 20 s: the port says nothing new after the first check,
    # so the probes back off to HEALTH_INTERVAL as without the check.
    service = Service(listen_at=0.0, healthy_at=20.0)
    service.wait(interval=10.0)
    gaps = service.gaps()
    assert gaps[0] < 0.01                     # the first check sees it open: probe again at once
    assert gaps[1:] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0], abs=0.01)


def test_the_last_probe_comes_at_the_timeout_not_an_interval_later():
    service = Service(listen_at=1000.0)
    with pytest.raises(HealthCheckFailed, match="connection refused"):
        service.wait(interval=10.0, timeout=25.0)
    assert 25.0 <= service.probes[-1] <= 25.0 + gate.CONNECT_CHECK_EVERY + 0.01
    assert max(service.gaps()) <= 10.0 + 0.01


def test_connect_check_against_a_real_listener():
    import socket
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert gate.connect_check(LocalTransport(), "127.0.0.1", port)() is True
    assert gate.connect_check(LocalTransport(), "127.0.0.1", port)() is False


# -- the swarm's gate: every task of a color, through the same gate.wait_ready ----------------

from types import SimpleNamespace  # noqa: E402

from pipeline.adapters.swarm import SwarmEngine, TaskAddress  # noqa: E402

from .fakes import FakeProber  # noqa: E402


def scripted(script) -> FakeProber:
    """Answers per URL from a script: each URL's next status (the last one repeats); any other URL fails."""
    return FakeProber(answers={url: list(statuses) for url, statuses in script.items()}, otherwise=None)


TASK_A, TASK_B, TASK_C = (TaskAddress("10.99.0.11", 8082, "task-a", "n1", "running"),
                          TaskAddress("10.99.0.12", 8082, "task-b", "n2", "running"),
                          TaskAddress("10.99.0.13", 8082, "task-c", "n3", "running"))


def url(a):
    return f"http://{a.node_addr}:{a.port}/health"


def swarm_gate(tmp_path, addresses, transport, check_tasks=lambda: None, replicas=2):
    """The real SwarmEngine's gate, over the task facts these tests give (a manager with no
    client behind it: only the methods below are asked)."""
    settings = Settings.from_env({"TARGET": "swarm", "REGISTRY": "r:5001", "REPLICAS": str(replicas),
                                  "HEALTH_PATH": "/health", "APP_NAME": "app"}, tmp_path)
    engine = SwarmEngine(SimpleNamespace(api=None), settings.app, settings.swarm, settings.build, settings.runtime,
                         settings.registry_access)
    engine.task_addresses = lambda color: list(addresses())
    engine.converged = lambda color: True
    engine.check_tasks = lambda color: check_tasks()
    engine.logs_tail = lambda color, lines=20: []
    return engine.gate("blue", transport)


def test_the_swarm_gate_waits_until_every_task_answers_200(tmp_path):
    transport = scripted({url(TASK_A): [503, 200], url(TASK_B): [503, 503, 200]})
    clock = FakeClock()
    assert wait_ready(swarm_gate(tmp_path, lambda: [TASK_A, TASK_B], transport), 0.05, 5, clock) == 3
    assert transport.asked.count(url(TASK_B)) == 3
    assert clock.time - 1000.0 < 1   # waited on the fake clock, not the real one


def test_the_swarm_gate_waits_for_tasks_still_to_come_and_asks_for_the_addresses_anew(tmp_path):
    # A task lost with its node: the address list shrinks, then its replacement elsewhere appears.
    lists = iter([[TASK_A, TASK_B], [TASK_A], [TASK_A, TASK_C]])
    last = []

    def addresses():
        last[:] = next(lists, last)
        return list(last)
    transport = scripted({url(TASK_A): [200], url(TASK_B): [503], url(TASK_C): [200]})
    assert wait_ready(swarm_gate(tmp_path, addresses, transport), 0.05, 5, FakeClock()) == 3
    assert transport.asked[-2:] == [url(TASK_A), url(TASK_C)]


def test_the_swarm_gate_fails_naming_each_task_that_did_not_answer(tmp_path):
    transport = scripted({url(TASK_A): [200], url(TASK_B): [404]})
    with pytest.raises(HealthCheckFailed, match=r"every task of app-blue at /health did not answer 200 after \d+ "
                                                r"attempts \(last: 1 of 2 answer 200 \(2 running\); task task-b on n2 "
                                                r"\(10\.99\.0\.12:8082\): HTTP 404 'DOWN'\)"):
        wait_ready(swarm_gate(tmp_path, lambda: [TASK_A, TASK_B], transport), 0.05, 0.5, FakeClock())


def test_the_swarm_gate_stops_at_once_when_a_task_fails(tmp_path):
    def failed():
        raise ContainerExited("app-blue", "task failed")
    transport = scripted({url(TASK_A): [503]})
    with pytest.raises(ContainerExited):
        wait_ready(swarm_gate(tmp_path, lambda: [TASK_A], transport, failed, replicas=1), 0.05, 30, FakeClock())
    assert transport.asked == []


# -- TARGET=swarm: a node's address, on a color's port, by any route (issue 20) --------------------

PLAIN = "10.99.0.11 dev eth0 src 10.99.0.21 uid 0 \n    cache \n"
VIA_ROUTER = "10.99.0.12 via 10.97.2.1 dev eth0 src 10.97.2.20 uid 0 \n    cache \n"


@pytest.mark.parametrize("code, output, problem", [
    (0, VIA_ROUTER, None),
    (0, PLAIN, None),
    (0, BRIDGE, None),
    (0, "10.99.0.12 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \n", None),   # the default route's gateway
    (2, "RTNETLINK answers: Network is unreachable\n", "has no route to it"),
    (0, "local 10.99.0.11 dev lo src 10.99.0.11 uid 0 \n    cache <local> \n", "holds that address itself"),
    (0, "blackhole 10.99.0.11 uid 0\n", "has a blackhole route for it"),
    (0, "unreachable 10.99.0.11 uid 0\n", "has a unreachable route for it"),
    (0, "10.99.0.12 via 10.97.2.1 src 10.97.2.20 uid 0\n", "gave an answer without an interface"),
])
def test_with_gateways_allowed_any_unicast_route_to_an_interface_passes(code, output, problem):
    found = route_problem(code, route_answer(output, output.split()[0] if output[0].isdigit() else "10.99.0.11"),
                          gateway_ok=True)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


def swarm_prober(host: FakeHost, transport=None, nodes=("10.99.0.11", "10.99.0.12", "10.99.0.13")):
    asked = []

    def reported():
        asked.append(1)
        return list(nodes)
    prober = Prober(transport or strict_transport(), host, nodes=reported, ports={8081, 8082})
    return prober, asked


def test_a_swarm_nodes_address_is_probed_over_a_plain_interface_or_through_a_gateway():
    host = route_host({"10.99.0.11": (0, PLAIN), "10.99.0.12": (0, VIA_ROUTER)})   # no bridge at all
    transport = FakeProber(answers={}, where="the nginx host root@example:22")
    prober, asked = swarm_prober(host, transport)
    prober.check_routes(["10.99.0.11", "10.99.0.12"])
    for url in ("http://10.99.0.11:8081/actuator/health", "http://10.99.0.12:8082/actuator/health"):
        assert probe(prober, url, 2.0).startswith("HTTP 200")
    assert prober.can_connect("10.99.0.12", 8082, 1.0)
    assert transport.asked == ["http://10.99.0.11:8081/actuator/health", "http://10.99.0.12:8082/actuator/health"]
    assert host.reads == []   # no interface is asked whether it is a bridge
    assert prober.route_to("10.99.0.11") == "directly on eth0"
    assert prober.route_to("10.99.0.12") == "via 10.97.2.1 on eth0"
    assert host.route_asks == ["10.99.0.11", "10.99.0.12"] and len(asked) == 1


def test_a_swarm_prober_refuses_what_is_not_a_node_or_not_a_colors_port_before_any_route_is_asked():
    host = route_host({"10.99.0.11": (0, PLAIN), "172.20.0.2": (0, GATEWAY)})
    prober, asked = swarm_prober(host)
    with pytest.raises(RouteRefused, match=r"not probing 172\.20\.0\.2: not the address of a swarm node "
                                           r"\(the manager reports 10\.99\.0\.11 10\.99\.0\.12 10\.99\.0\.13\)"):
        probe(prober, "http://172.20.0.2:8080/actuator/health", 2.0)
    assert len(asked) == 1   # the manager was asked again: a node may have joined since
    with pytest.raises(RouteRefused, match="not probing port 8080: not a color's published port"):
        probe(prober, "http://10.99.0.11:8080/actuator/health", 2.0)
    with pytest.raises(RouteRefused, match="not probing port 22"):
        prober.can_connect("10.99.0.11", 22, 1.0)
    with pytest.raises(RouteRefused, match="not the address of a swarm node"):
        prober.check_routes(["10.99.0.11", "172.20.0.2"])
    assert host.route_asks == ["10.99.0.11"]   # 172.20.0.2's route never asked


def test_a_swarm_node_with_no_usable_route_is_still_refused():
    host = route_host({"10.99.0.11": (2, "RTNETLINK answers: Network is unreachable\n")})
    with pytest.raises(RouteRefused, match=r"not probing 10\.99\.0\.11: .* has no route to it .*a route to every swarm node"):
        Prober(strict_transport(), host, "nginx proxies ...: the nginx host needs a route to every swarm node",
               nodes=lambda: ["10.99.0.11"], ports={8081}).check_routes(["10.99.0.11"])


def test_the_swarm_rule_is_the_swarms_only_one_engine_still_refuses_a_gateway(tmp_path):
    from pipeline.compose import make_prober

    def prober_for(target: str):
        host = route_host({"10.99.0.11": (0, VIA_ROUTER.replace("10.99.0.12", "10.99.0.11"))})
        extra = {"TARGET": "swarm", "REGISTRY": "registry.example:5000"} if target == "swarm" else {}
        settings = Settings.from_env({"NGINX_HOST": "", **extra}, tmp_path)
        return make_prober(host, settings, Allowing(probe_ips=["10.99.0.11"]))

    prober_for("swarm").check_routes(["10.99.0.11"])
    with pytest.raises(RouteRefused, match="reaches it only through the gateway 10.97.2.1"):
        prober_for("docker").check_routes(["10.99.0.11"])
