"""The live switch against a real HTTP server on 127.0.0.1 that speaks the admin protocol of
nginx/live/app-live.conf, with real include files in a temporary directory. No nginx here: the
real one is in tests/integration/test_live_mode.py."""
from __future__ import annotations

import http.server
import re
import socket
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from pipeline.core.decide import Address
from pipeline.compose import make_switch
from pipeline.core.errors import (EXIT_DEPLOY_FAILED, EXIT_PREFLIGHT, AdminTokenRefused, AdminUnavailable, IncludeMismatch,
                             LiveSwitchFailed)
from pipeline.adapters.live_switch import LiveSwitch, NginxAdmin
from pipeline.adapters.nginx_host import LocalHost
from pipeline.core.settings import Settings
from pipeline.core.switch import LIVE, PREVIEW

from .fakes import FakeClock

REPO = Path(__file__).resolve().parents[2]
BLUE = Address("172.20.0.2", 8080)
GREEN = Address("172.20.0.3", 8080)
TOKEN = "4f1c" * 16     # as `openssl rand -hex 32` makes one


class Admin:
    """The admin protocol, with knobs to misbehave. Records every request and, for each PUT,
    what the live include said at that moment. Like app-live.conf, it answers 401 to any request
    without `Authorization: Bearer TOKEN`, and 403 to a PUT of an address in `refused`."""

    def __init__(self, include: Path) -> None:
        self.routes: Dict[str, str] = {}
        self.requests: List[Tuple[str, str]] = []
        self.token = TOKEN
        self.authorizations: List[Optional[str]] = []
        self.refused: List[str] = []
        self.include_at_put: List[Optional[str]] = []
        self.put_status = 200          # answer PUTs with this (the address is stored only on 200)
        self.ignore_puts = False       # answer 200 but keep the old address
        self.drop_answers = 0          # close this many connections without answering (after acting)
        self.drop_put_answers = 0      # the same, for PUTs only
        self.get_answer: Optional[bytes] = None   # answer GETs with this body instead
        # GET /pipeline/files: the includes nginx reads at start (by default, the tests' own).
        self.files: Optional[Dict[str, str]] = {"live": str(include),
                                                "preview": str(include.parent / "service-url-preview.inc")}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(("GET", self.path))
                if not self._authorized():
                    return
                if self.path == "/pipeline/files":
                    if outer.files is None:
                        return self._answer(404, b"")
                    return self._answer(200, "".join(f"{k} {v}\n" for k, v in outer.files.items()).encode())
                route = outer._route(self.path)
                if outer._drop():
                    return
                if outer.get_answer is not None:
                    return self._answer(200, outer.get_answer)
                if route not in outer.routes:
                    return self._answer(404, b"no address set\n")
                self._answer(200, f"{outer.routes[route]}\n".encode())

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                outer.requests.append(("PUT", self.path))
                outer.include_at_put.append(include.read_text() if include.exists() else None)
                if not self._authorized():
                    return
                route = outer._route(self.path)
                if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+(,\d+\.\d+\.\d+\.\d+:\d+){0,31}", body):
                    return self._answer(400, b"expected IP:PORT[,IP:PORT...]\n")
                refused = [item for item in body.split(",") if item in outer.refused]
                if refused:   # one refused address refuses the list, as app-live.conf does
                    return self._answer(403, f"{refused[0]} is not inside allowed_networks (172.20.0.0/16)\n".encode())
                if outer.put_status == 200 and not outer.ignore_puts:
                    outer.routes[route] = body
                if outer._drop() or outer._drop_put():
                    return
                self._answer(outer.put_status, f"{body}\n".encode())

            def _authorized(self) -> bool:
                given = self.headers.get_all("Authorization")
                outer.authorizations.append(given[0] if given and len(given) == 1 else None)
                if given == [f"Bearer {outer.token}"]:
                    return True
                self._answer(401, b"Authorization: Bearer TOKEN required\n")
                return False

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _route(self, path: str) -> str:
        assert path in ("/pipeline/live", "/pipeline/preview"), f"unexpected path {path}"
        return path.rsplit("/", 1)[1]

    def _drop(self) -> bool:
        if self.drop_answers > 0:
            self.drop_answers -= 1
            return True     # the handler returns without writing: the client sees the connection close
        return False

    def _drop_put(self) -> bool:
        if self.drop_put_answers > 0:
            self.drop_put_answers -= 1
            return True
        return False

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class NoCommandsHost(LocalHost):
    """The local nginx host, except that running any command fails the test: live mode never
    tests or reloads nginx. Records the channels opened, which is how the admin is reached, and
    the files read; `unreadable` paths fail to read as a file of another user's would."""

    def __init__(self) -> None:
        self.channels: List[Tuple[str, int]] = []
        self.reads: List[str] = []
        self.unreadable: List[str] = []

    def read_text(self, path: str) -> Optional[str]:
        self.reads.append(path)
        if path in self.unreadable:
            raise PermissionError(13, "Permission denied", path)
        return super().read_text(path)

    def run(self, argv):  # type: ignore[override]
        raise AssertionError(f"live mode ran a command on the nginx host: {argv}")

    def open_channel(self, host: str, port: int, timeout: float) -> socket.socket:
        self.channels.append((host, port))
        return super().open_channel(host, port, timeout)


@pytest.fixture
def include(tmp_path) -> Path:
    path = tmp_path / "service-url.inc"
    path.write_text(f"set $service_url {BLUE.url};\n")
    return path


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "pipeline-admin.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def admin(include, token_file):
    server = Admin(include)
    server.routes["live"] = str(BLUE)
    yield server
    server.close()


@pytest.fixture
def host() -> NoCommandsHost:
    return NoCommandsHost()


def settings_for(tmp_path: Path, admin_url: str, **extra: str) -> Settings:
    return Settings.from_env({**extra,
        "SWITCH_MODE": "live",
        "NGINX_ADMIN_URL": admin_url,
        "NGINX_INCLUDE": str(tmp_path / "service-url.inc"),
        "NGINX_PREVIEW_INCLUDE": str(tmp_path / "service-url-preview.inc"),
        "NGINX_ADMIN_TOKEN_FILE": str(tmp_path / "pipeline-admin.token"),
        "NGINX_RELOAD_COMMAND": "false",
        "NGINX_TEST_COMMAND": "false",
    }, tmp_path)


def live_switch(host, tmp_path: Path, url: str, **extra: str) -> LiveSwitch:
    settings = settings_for(tmp_path, url, **extra)
    # The waits between attempts go on a fake clock: a refused admin is retried without sleeping.
    admin = NginxAdmin(host, url, str(settings.nginx_admin_token_file), timeout=1.0, retry_wait=0.01,
                       clock=FakeClock())
    return LiveSwitch(host, settings.switch, settings.network_timeout, admin)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"   # nothing listens once it is closed


# -- switching ---------------------------------------------------------------------------------------

def test_make_switch_gives_the_live_switch_for_switch_mode_live(tmp_path, host):
    switch = make_switch(host, settings_for(tmp_path, "http://127.0.0.1:8091"))
    assert isinstance(switch, LiveSwitch) and switch.mode == "live"
    assert switch.admin.url == "http://127.0.0.1:8091"
    assert switch.admin.token_file == str(tmp_path / "pipeline-admin.token")


def test_switch_writes_the_include_first_then_sets_and_reads_back_without_commands(tmp_path, host, admin, include):
    switch = live_switch(host, tmp_path, admin.url)
    switch.route_to(LIVE, (GREEN,))

    assert include.read_text() == f"set $service_url {GREEN.url};\n"   # the seed's form, for restarts
    assert admin.routes["live"] == str(GREEN)
    assert admin.requests == [("GET", "/pipeline/live"), ("PUT", "/pipeline/live"), ("GET", "/pipeline/live")]
    # The include already named green when nginx was told: a restart at any moment after the
    # PUT reads the same address.
    assert admin.include_at_put == [f"set $service_url {GREEN.url};\n"]
    assert set(host.channels) == {("127.0.0.1", admin.httpd.server_address[1])}
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write left a temp file"


def test_preview_route_has_its_own_include_and_admin_path(tmp_path, host, admin):
    switch = live_switch(host, tmp_path, admin.url)
    switch.route_to(PREVIEW, (GREEN,))
    assert (tmp_path / "service-url-preview.inc").read_text() == f"set $preview_url {GREEN.url};\n"
    assert admin.routes == {"live": str(BLUE), "preview": str(GREEN)}
    assert switch.current(PREVIEW) == (GREEN,)


@pytest.mark.parametrize("misbehave, reported", [
    (lambda a: setattr(a, "put_status", 400), "answered 400"),
    (lambda a: setattr(a, "put_status", 500), "answered 500"),
    (lambda a: setattr(a, "ignore_puts", True), f"set {GREEN} but nginx reports {BLUE}"),
], ids=["put-refused", "put-error", "read-back-differs"])
def test_failed_set_puts_the_include_back_and_leaves_nginx_where_it_was(tmp_path, host, admin, include,
                                                                        misbehave, reported):
    before = include.read_text()
    misbehave(admin)
    switch = live_switch(host, tmp_path, admin.url)
    with pytest.raises(LiveSwitchFailed) as caught:
        switch.route_to(LIVE, (GREEN,))
    assert caught.value.exit_code == EXIT_DEPLOY_FAILED   # like a failed reload
    assert reported in str(caught.value) and "put the old include back" in str(caught.value)
    assert include.read_text() == before
    assert admin.routes["live"] == str(BLUE)


def test_a_set_whose_answer_is_lost_is_undone_in_nginx_too(tmp_path, host, admin, include):
    # nginx took the PUT, then every answer is lost: the switch cannot confirm, so it fails, and
    # traffic must not stay on green behind the restored include's back.
    admin.drop_put_answers = 3
    switch = live_switch(host, tmp_path, admin.url)
    with pytest.raises(LiveSwitchFailed) as caught:
        switch.route_to(LIVE, (GREEN,))
    assert "failed 3 times" in str(caught.value)
    assert f"and nginx's address {BLUE}" in str(caught.value)
    assert include.read_text() == f"set $service_url {BLUE.url};\n"
    assert admin.routes["live"] == str(BLUE)


def test_a_dropped_connection_is_retried(tmp_path, host, admin, include):
    admin.drop_answers = 1     # the first GET's connection closes unanswered
    live_switch(host, tmp_path, admin.url).route_to(LIVE, (GREEN,))
    assert admin.routes["live"] == str(GREEN)
    assert admin.requests[:2] == [("GET", "/pipeline/live"), ("GET", "/pipeline/live")]


def test_admin_not_answering_fails_the_switch_before_anything_changes(tmp_path, host, include, token_file):
    before = include.read_text()
    switch = live_switch(host, tmp_path, closed_port_url())
    with pytest.raises(LiveSwitchFailed) as caught:
        switch.route_to(LIVE, (GREEN,))
    assert "nothing was changed" in str(caught.value)
    assert include.read_text() == before


def test_a_route_nginx_never_had_cannot_be_restored_and_says_so(tmp_path, host, admin):
    admin.put_status = 500
    switch = live_switch(host, tmp_path, admin.url)
    with pytest.raises(LiveSwitchFailed) as caught:
        switch.route_to(PREVIEW, (GREEN,))
    assert "nginx had no address before" in str(caught.value)
    assert not (tmp_path / "service-url-preview.inc").exists(), "no preview include before, none after"


def test_a_refused_address_fails_the_switch_naming_nginx_s_reason(tmp_path, host, admin, include):
    admin.refused.append(str(GREEN))
    with pytest.raises(LiveSwitchFailed) as caught:
        live_switch(host, tmp_path, admin.url).route_to(LIVE, (GREEN,))
    message = str(caught.value)
    assert f"nginx refused {GREEN} for the live route: {GREEN} is not inside allowed_networks" in message
    assert "DEPLOY_SUBNET" in message and "put the old include back" in message
    assert include.read_text() == f"set $service_url {BLUE.url};\n" and admin.routes["live"] == str(BLUE)


# -- a list of addresses (TARGET=swarm: every task of a color) --------------------------------------

TASKS_BLUE = (Address("10.99.0.11", 8081), Address("10.99.0.12", 8081), Address("10.99.0.13", 8081))
TASKS_GREEN = (Address("10.99.0.11", 8082), Address("10.99.0.12", 8082), Address("10.99.0.13", 8082))


def swarm_switch(host, tmp_path: Path, admin: Admin, include: Path) -> LiveSwitch:
    """A live switch whose live route serves blue's three tasks, in the upstream form a swarm uses."""
    switch = live_switch(host, tmp_path, admin.url, NGINX_INCLUDE_FORM="upstream")
    include.write_text(switch.includes.render(LIVE, TASKS_BLUE))
    admin.routes["live"] = ",".join(map(str, TASKS_BLUE))
    return switch


def test_a_list_is_set_whole_read_back_as_a_tuple_and_written_to_the_include(tmp_path, host, admin, include, caplog):
    switch = swarm_switch(host, tmp_path, admin, include)
    assert switch.current(LIVE) == TASKS_BLUE
    with caplog.at_level("INFO", logger="pipeline"):
        switch.route_to(LIVE, TASKS_GREEN)
    assert admin.routes["live"] == "10.99.0.11:8082,10.99.0.12:8082,10.99.0.13:8082"
    assert include.read_text() == ("upstream app_live {\n    server 10.99.0.11:8082;\n    server 10.99.0.12:8082;\n"
                                   "    server 10.99.0.13:8082;\n    keepalive 32;\n}\n")
    assert admin.include_at_put == [include.read_text()]   # the include first, for restarts
    assert switch.current(LIVE) == TASKS_GREEN and "going by nginx" not in caplog.text
    assert ("nginx live route: 10.99.0.11:8081, 10.99.0.12:8081, 10.99.0.13:8081 -> 10.99.0.11:8082, "
            "10.99.0.12:8082, 10.99.0.13:8082 (no reload)") in caplog.text
    assert switch.describe()["live"] == "10.99.0.11:8082, 10.99.0.12:8082, 10.99.0.13:8082"
    # Back to one address: the same as on one host.
    switch.route_to(LIVE, (GREEN,))
    assert admin.routes["live"] == str(GREEN) and switch.current(LIVE) == (GREEN,)


def test_one_refused_address_fails_the_list_and_puts_include_and_nginx_back(tmp_path, host, admin, include):
    switch = swarm_switch(host, tmp_path, admin, include)
    before = include.read_text()
    admin.refused.append(str(TASKS_GREEN[2]))
    with pytest.raises(LiveSwitchFailed) as caught:
        switch.route_to(LIVE, TASKS_GREEN)
    message = str(caught.value)
    assert message.startswith("nginx did not take 10.99.0.11:8082, 10.99.0.12:8082, 10.99.0.13:8082 for the live "
                              "route: ")
    assert "nginx refused 10.99.0.11:8082, 10.99.0.12:8082, 10.99.0.13:8082 for the live route: 10.99.0.13:8082 is " \
           "not inside allowed_networks" in message and "\n" not in message
    assert include.read_text() == before and admin.routes["live"] == ",".join(map(str, TASKS_BLUE))


def test_a_list_whose_read_back_differs_is_undone_to_the_old_list(tmp_path, host, admin, include):
    switch = swarm_switch(host, tmp_path, admin, include)
    admin.drop_put_answers = 3   # nginx took it, but no answer came back
    with pytest.raises(LiveSwitchFailed) as caught:
        switch.route_to(LIVE, TASKS_GREEN)
    assert "and nginx's address 10.99.0.11:8081, 10.99.0.12:8081, 10.99.0.13:8081" in str(caught.value)
    assert admin.routes["live"] == ",".join(map(str, TASKS_BLUE))
    assert switch.current(LIVE) == TASKS_BLUE


def test_a_list_longer_than_nginx_takes_is_refused_before_anything_is_sent(tmp_path, host, admin, include):
    switch = swarm_switch(host, tmp_path, admin, include)
    before = include.read_text()
    many = tuple(Address(f"10.99.1.{n}", 8082) for n in range(1, 34))
    with pytest.raises(LiveSwitchFailed, match="cannot switch the live route to 10.99.1.1:8082, .*: 33 addresses; "
                                               "a route takes at most 32; nothing was changed"):
        switch.route_to(LIVE, many)
    assert admin.requests == []
    assert include.read_text() == before and admin.routes["live"] == ",".join(map(str, TASKS_BLUE))


def test_current_goes_by_nginx_when_the_include_lists_other_tasks(tmp_path, host, admin, include, caplog):
    switch = swarm_switch(host, tmp_path, admin, include)
    include.write_text(switch.includes.render(LIVE, TASKS_GREEN))   # a switch cut short after the include
    with caplog.at_level("WARNING", logger="pipeline"):
        assert switch.current(LIVE) == TASKS_BLUE
    assert ("the live include says 10.99.0.11:8082, 10.99.0.12:8082, 10.99.0.13:8082 but nginx serves "
            "10.99.0.11:8081, 10.99.0.12:8081, 10.99.0.13:8081; going by nginx") in caplog.text


@pytest.mark.parametrize("answer", [b"10.99.0.11:8081,", b"10.99.0.11:8081,10.99.0.11:8081",
                                    b"10.99.0.11:8081, 10.99.0.12:8081"], ids=["empty-item", "twice", "space"])
def test_a_list_answer_nginx_would_never_store_is_not_believed(tmp_path, host, admin, answer):
    admin.get_answer = answer
    with pytest.raises(AdminUnavailable, match=r"not IP:PORT\[,IP:PORT...\]"):
        live_switch(host, tmp_path, admin.url).current(LIVE)


# -- the admin token ---------------------------------------------------------------------------------

def test_every_request_carries_the_token_read_once_from_the_token_file(tmp_path, host, admin, token_file):
    switch = live_switch(host, tmp_path, admin.url)
    switch.check()
    switch.route_to(LIVE, (GREEN,))
    assert len(admin.requests) == 4
    assert admin.authorizations == [f"Bearer {TOKEN}"] * 4      # the file's newline is not part of it
    assert host.reads.count(str(token_file)) == 1
    assert repr(switch.admin.token()) == "Secret('***')" and TOKEN not in str(vars(switch.admin))


def test_a_token_nginx_refuses_is_a_preflight_error_naming_the_file_and_not_the_token(
        tmp_path, host, admin, token_file, caplog):
    token_file.write_text("0" * 64 + "\n")     # a token from before a rotation
    switch = live_switch(host, tmp_path, admin.url)
    with caplog.at_level("DEBUG", logger="pipeline"), pytest.raises(AdminTokenRefused) as caught:
        switch.check()
    assert caught.value.exit_code == EXIT_PREFLIGHT
    message = str(caught.value)
    assert message.startswith(f"nginx admin {admin.url}: NGINX_ADMIN_TOKEN_FILE={token_file}: nginx refused the token")
    assert "answered 401" in message and "nginx -s reload" in message and "\n" not in message
    assert admin.requests == [("GET", "/pipeline/files")], "a refused token is not retried"
    assert "0" * 64 not in message + caplog.text and TOKEN not in message + caplog.text
    # status still reports, and says why.
    assert switch.describe()["live"].startswith(f"unknown (NGINX_ADMIN_TOKEN_FILE={token_file}: nginx refused")


@pytest.mark.parametrize("content, problem", [
    (None, "no such file on the nginx host (this machine)"),
    ("", "the file is empty"),
    (" \n\n", "the file is empty"),
    ("secret\n", "does not hold one token of 32 or more letters and digits"),
    (TOKEN + " " + TOKEN + "\n", "does not hold one token"),
    (TOKEN + "\r\nX-Injected: 1\n", "does not hold one token"),
], ids=["missing", "empty", "blank", "short", "two-words", "header-injection"])
def test_an_unusable_token_file_is_a_preflight_error_before_any_request(tmp_path, host, admin, token_file,
                                                                         content, problem):
    if content is None:
        token_file.unlink()
    else:
        token_file.write_text(content)
    switch = live_switch(host, tmp_path, admin.url)
    with pytest.raises(AdminTokenRefused) as caught:
        switch.check()
    assert caught.value.exit_code == EXIT_PREFLIGHT
    assert str(caught.value).startswith(f"nginx admin {admin.url}: NGINX_ADMIN_TOKEN_FILE={token_file}: {problem}")
    assert "secret" not in str(caught.value) and TOKEN not in str(caught.value)
    assert admin.requests == [], "nothing is sent without a usable token"
    # A deploy's switch stops before writing anything, too.
    with pytest.raises(LiveSwitchFailed, match="nothing was changed"):
        switch.route_to(LIVE, (GREEN,))
    assert admin.requests == [] and admin.routes["live"] == str(BLUE)


def test_a_token_file_the_ssh_user_cannot_read_names_the_file_and_the_host(tmp_path, host, admin, token_file):
    host.unreadable.append(str(token_file))
    with pytest.raises(AdminTokenRefused) as caught:
        live_switch(host, tmp_path, admin.url).check()
    assert str(caught.value) == (f"nginx admin {admin.url}: NGINX_ADMIN_TOKEN_FILE={token_file}: "
                                 f"cannot read it on the nginx host (this machine): Permission denied")
    assert admin.requests == []


def test_the_token_file_is_read_again_by_each_run(tmp_path, host, admin, token_file):
    # A rotation: new file, `nginx -s reload`. The next run sends the new token.
    live_switch(host, tmp_path, admin.url).check()
    admin.token = "9" * 64
    token_file.write_text(admin.token + "\n")
    live_switch(host, tmp_path, admin.url).check()
    assert admin.authorizations == [f"Bearer {TOKEN}", f"Bearer {'9' * 64}"]


# -- the preflight check: nginx reads the includes the tool writes ---------------------------------

def test_check_passes_when_nginx_reads_the_tools_includes(tmp_path, host, admin):
    live_switch(host, tmp_path, admin.url).check()
    assert admin.requests == [("GET", "/pipeline/files")]


@pytest.mark.parametrize("route, setting", [("live", "NGINX_INCLUDE"), ("preview", "NGINX_PREVIEW_INCLUDE")])
def test_check_refuses_includes_nginx_does_not_read_at_start(tmp_path, host, admin, route, setting):
    # app-live.conf left at its default paths while the settings name others: a restarted
    # nginx would go back to whatever the default file says.
    admin.files[route] = f"/etc/nginx/conf.d/{route}.inc"
    switch = live_switch(host, tmp_path, admin.url)
    with pytest.raises(IncludeMismatch) as caught:
        switch.check()
    assert caught.value.exit_code == EXIT_PREFLIGHT
    message = str(caught.value)
    assert message.startswith(f"{setting}={tmp_path}/") and f"from /etc/nginx/conf.d/{route}.inc" in message
    assert "\n" not in message
    assert switch.describe()["problem"] == message


def test_check_ignores_the_preview_file_when_no_preview_include_is_set(tmp_path, host, admin):
    admin.files["preview"] = "/somewhere/else.inc"
    settings = Settings.from_env({"SWITCH_MODE": "live", "NGINX_ADMIN_URL": admin.url,
                                  "NGINX_INCLUDE": str(tmp_path / "service-url.inc")}, tmp_path)
    token_file = str(tmp_path / "pipeline-admin.token")
    LiveSwitch(host, settings.switch, settings.network_timeout, NginxAdmin(host, admin.url, token_file, timeout=1.0, retry_wait=0.01)).check()


def test_check_names_an_older_config_without_the_files_endpoint(tmp_path, host, admin):
    admin.files = None
    with pytest.raises(AdminUnavailable, match=r"GET /pipeline/files answered 404 .*older than this tool"):
        live_switch(host, tmp_path, admin.url).check()


# -- reading ---------------------------------------------------------------------------------------

def test_current_goes_by_nginx_when_the_include_says_otherwise(tmp_path, host, admin, include, caplog):
    # A deploy killed between writing the include and the PUT: nginx still serves blue. Trusting
    # the include would make the next deploy replace blue, the color carrying the traffic.
    include.write_text(f"set $service_url {GREEN.url};\n")
    switch = live_switch(host, tmp_path, admin.url)
    with caplog.at_level("WARNING", logger="pipeline"):
        assert switch.current(LIVE) == (BLUE,)
    assert f"the live include says {GREEN} but nginx serves {BLUE}; going by nginx" in caplog.text


def test_current_is_none_when_nginx_has_no_address(tmp_path, host, admin):
    admin.routes.clear()
    assert live_switch(host, tmp_path, admin.url).current(PREVIEW) is None


def test_current_fails_as_preflight_when_the_admin_does_not_answer(tmp_path, host, include, token_file):
    url = closed_port_url()
    with pytest.raises(AdminUnavailable) as caught:
        live_switch(host, tmp_path, url).current(LIVE)
    assert caught.value.exit_code == EXIT_PREFLIGHT
    assert url in str(caught.value) and "nginx/live/app-live.conf" in str(caught.value)


@pytest.mark.parametrize("answer, problem", [
    (b"hello", "not IP:PORT[,IP:PORT...]"),
    (b"1.2.3.4:80" + b" " * 2000, "longer than 1024 bytes"),
], ids=["not-an-address", "too-long"])
def test_an_answer_that_is_not_an_address_is_not_believed(tmp_path, host, admin, answer, problem):
    admin.get_answer = answer
    with pytest.raises(AdminUnavailable) as caught:
        live_switch(host, tmp_path, admin.url).current(LIVE)
    assert problem in str(caught.value)


def test_describe_reports_what_nginx_serves(tmp_path, host, admin):
    switch = live_switch(host, tmp_path, admin.url)
    assert switch.describe() == {"admin": admin.url, "live": str(BLUE), "preview": None}   # no "problem"


def test_describe_says_unknown_when_the_admin_does_not_answer(tmp_path, host, token_file):
    report = live_switch(host, tmp_path, closed_port_url()).describe()
    assert report["live"].startswith("unknown (GET /pipeline/live failed 3 times")


# -- the shipped config ------------------------------------------------------------------------------

def _server_blocks(text: str) -> List[str]:
    blocks, depth, start = [], 0, None
    for match in re.finditer(r"^server \{|\{|\}", text, re.M):
        if match.group() == "server {" and depth == 0:
            start = match.start()
        depth += -1 if match.group() == "}" else 1
        if depth == 0 and start is not None:
            blocks.append(text[start:match.end()])
            start = None
    return blocks


def test_shipped_admin_server_listens_on_loopback_only_and_denies_everyone_else():
    text = (REPO / "nginx" / "live" / "app-live.conf").read_text()
    admin_blocks = [b for b in _server_blocks(text) if "/pipeline/live" in b]
    assert len(admin_blocks) == 1
    block = admin_blocks[0]
    assert re.findall(r"^\s*listen\s+([^;]+);", block, re.M) == ["127.0.0.1:8091"]
    assert re.search(r"allow 127\.0\.0\.1;\s*deny\s+all;", block)
    assert Settings().nginx_admin_url == "http://127.0.0.1:8091"


def test_shipped_admin_server_asks_every_request_for_the_token_first():
    text = (REPO / "nginx" / "live" / "app-live.conf").read_text()
    block = next(b for b in _server_blocks(text) if "/pipeline/live" in b)
    locations = re.findall(r"^    location [^{]+\{(.*?)^    \}", block, re.M | re.S)
    assert len(locations) == block.count("\n    location "), "a location the pattern missed"
    # At server level, so every location inherits it; one of their own would replace it, and a
    # rewrite-phase `return` would answer before it.
    server_level = re.sub(r"^    location [^{]+\{.*?^    \}", "", block, flags=re.M | re.S)
    assert re.search(r"access_by_lua_block \{\s*require\(\"pipeline.routes\"\).require_token\(\)\s*\}", server_level)
    for body in locations:
        assert "access_by_lua" not in body and not re.search(r"^\s*return\b", body, re.M), body


def test_shipped_config_reads_the_token_file_and_allows_the_subnet_the_tool_uses_by_default():
    text = (REPO / "nginx" / "live" / "app-live.conf").read_text()
    defaults = Settings()
    assert re.findall(r'^\s*token_file = "([^"]*)",', text, re.M) == [str(defaults.nginx_admin_token_file)]
    assert re.findall(r"^\s*allowed_networks = \{ ([^}]*) \},", text, re.M) == [f'"{defaults.deploy_subnet}"']


def test_shipped_config_reads_the_include_files_the_tool_writes_by_default():
    text = (REPO / "nginx" / "live" / "app-live.conf").read_text()
    defaults = Settings()
    assert f'live = "{defaults.nginx_include}"' in text
    assert 'preview = "/etc/nginx/conf.d/service-url-preview.inc"' in text
    assert (REPO / "nginx" / "conf.d" / "service-url-preview.inc.example").is_file()
