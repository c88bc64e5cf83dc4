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
