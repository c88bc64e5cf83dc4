"""The health gate against a real HTTP server on 127.0.0.1."""
import http.server
import threading
import time

import pytest

from pipeline.errors import ContainerExited, HealthCheckFailed
from pipeline.health import wait_healthy


class Server:
    def __init__(self, answers):
        self.answers = list(answers)
        self.times = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.times.append(time.monotonic())
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


@pytest.mark.parametrize("server", [[503, 503, 503, 200]], indirect=True)
def test_waits_for_200_starting_quick_then_at_most_interval_apart(server):
    attempts = wait_healthy(server.url, interval=0.6, timeout=10, check_alive=lambda: None)
    assert attempts == 4
    gaps = [b - a for a, b in zip(server.times, server.times[1:])]
    assert gaps[0] < 0.45                    # the first retry comes quick ...
    assert all(g < 0.6 + 0.25 for g in gaps)  # ... and none waits longer than the interval


@pytest.mark.parametrize("server", [[503]], indirect=True)
def test_timeout_reports_what_the_endpoint_last_said(server):
    with pytest.raises(HealthCheckFailed) as caught:
        wait_healthy(server.url, interval=0.2, timeout=1, check_alive=lambda: None, logs=lambda: ["boom"])
    assert "last: HTTP 503" in str(caught.value)
    assert caught.value.detail() == ["container log: boom"]


@pytest.mark.parametrize("server", [[503]], indirect=True)
def test_a_dead_container_fails_at_once_not_after_the_interval(server):
    died_at = time.monotonic() + 0.3

    def check_alive():
        if time.monotonic() > died_at:
            raise ContainerExited("app-green", "exited")

    started = time.monotonic()
    with pytest.raises(ContainerExited):
        wait_healthy(server.url, interval=30, timeout=300, check_alive=check_alive)
    assert time.monotonic() - started < 2


def test_nothing_listening_counts_as_not_healthy():
    with pytest.raises(HealthCheckFailed, match="connection refused"):
        wait_healthy("http://127.0.0.1:9/health", interval=0.1, timeout=0.5, check_alive=lambda: None)


# -- the schedule, on a fake clock ------------------------------------------------------------------
#
# A fake service at our seams: `clock`/`sleep` are the time wait_healthy runs on, the session
# answers the health GET as a service would that listens from `listen_at` and is healthy from
# `healthy_at`, and `can_connect` says whether it listens. Each records what it was asked, and
# anything else it is asked fails the test.

import requests  # noqa: E402

from pipeline import health  # noqa: E402


class FakeService:
    def __init__(self, listen_at: float, healthy_at: float = None):
        self.now = 0.0
        self.listen_at = listen_at
        self.healthy_at = listen_at if healthy_at is None else healthy_at
        self.probes = []        # times of health GETs
        self.events = []        # ("alive" | "connect" | "probe", time), in order

    # time
    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 <= seconds <= health.ALIVE_CHECK_EVERY + 1e-9, f"slept {seconds}s in one go"
        self.now += seconds

    # the container
    def check_alive(self) -> None:
        self.events.append(("alive", self.now))

    def can_connect(self) -> bool:
        self.events.append(("connect", self.now))
        self.now += 0.001                   # a refused or accepted connect on a local bridge
        return self.now >= self.listen_at

    # the HTTP session, strict: only the probe's GET
    def get(self, url, timeout, allow_redirects):
        assert url == "http://10.0.0.2:8080/health" and allow_redirects is False
        self.events.append(("probe", self.now))
        self.probes.append(self.now)
        self.now += 0.002
        if self.now < self.listen_at:
            raise requests.ConnectionError("refused")
        response = requests.Response()
        response.status_code = 200 if self.now >= self.healthy_at else 503
        response._content = b'{"status":"UP"}' if response.status_code == 200 else b'{"status":"DOWN"}'
        return response

    def wait(self, interval=10.0, timeout=300.0, connect=True) -> int:
        return wait_healthy("http://10.0.0.2:8080/health", interval, timeout, self.check_alive,
                            session=self, can_connect=self.can_connect if connect else None,
                            clock=self.clock, sleep=self.sleep)

    def gaps(self):
        return [b - a for a, b in zip(self.probes, self.probes[1:])]


def test_without_a_connect_check_the_gaps_double_from_a_quarter_second_to_the_interval():
    service = FakeService(listen_at=40.0)
    service.wait(interval=10.0, connect=False)
    assert service.gaps() == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0], abs=0.01)
    # So a service ready at 8 s waited until the probe at 15.75 s: what the connect check is for.


@pytest.mark.parametrize("startup", [1, 2, 5, 8, 12, 20, 30])
def test_with_a_connect_check_readiness_is_seen_within_a_tick_of_listening(startup):
    service = FakeService(listen_at=float(startup))
    service.wait(interval=10.0)
    assert startup <= service.probes[-1] <= startup + health.CONNECT_CHECK_EVERY + 0.01
    # ... and the health probes themselves still back off to HEALTH_INTERVAL, never further apart.
    assert max(service.gaps()) <= 10.0 + 0.01
    assert len(service.probes) <= 9


def test_once_listening_the_probes_start_over_from_short_gaps():
    # Listens at 8 s, but its health answers 503 for another 1.2 s (a framework still wiring up).
    service = FakeService(listen_at=8.0, healthy_at=9.2)
    service.wait(interval=10.0)
    after = [t for t in service.probes if t >= 8.0]
    gaps = [b - a for a, b in zip(after, after[1:])]
    assert after[0] <= 8.0 + health.CONNECT_CHECK_EVERY + 0.01     # at once when the port opens
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8], abs=0.01)   # then short gaps, doubling
    assert service.probes[-1] - 9.2 < 0.8


def test_the_port_is_tried_only_right_after_the_container_was_checked():
    service = FakeService(listen_at=3.0)
    service.wait(interval=10.0)
    kinds = [kind for kind, _ in service.events]
    assert kinds.count("connect") >= 25                             # every 0.1 s for 3 s
    for i, kind in enumerate(kinds):
        if kind in ("connect", "probe"):
            assert kinds[i - 1] == "alive", f"event {i} ({kind}) not preceded by the container check"


def test_a_port_open_from_the_start_costs_one_extra_probe_not_a_faster_schedule():
    # Listening at once but unhealthy for 20 s: the port says nothing new after the first check,
    # so the probes back off to HEALTH_INTERVAL as without the check.
    service = FakeService(listen_at=0.0, healthy_at=20.0)
    service.wait(interval=10.0)
    gaps = service.gaps()
    assert gaps[0] < 0.01                     # the first check sees it open: probe again at once
    assert gaps[1:] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0], abs=0.01)


def test_the_last_probe_comes_at_the_timeout_not_an_interval_later():
    service = FakeService(listen_at=1000.0)
    with pytest.raises(HealthCheckFailed, match="connection refused"):
        service.wait(interval=10.0, timeout=25.0)
    assert 25.0 <= service.probes[-1] <= 25.0 + health.CONNECT_CHECK_EVERY + 0.01
    assert max(service.gaps()) <= 10.0 + 0.01


def test_connect_check_against_a_real_listener():
    import socket
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert health.connect_check("127.0.0.1", port)() is True
    assert health.connect_check("127.0.0.1", port)() is False
