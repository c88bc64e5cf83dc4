"""Outside failures at our own seams: the reload switch over a strict fake nginx host, and how
library errors are worded. The real faults are in tests/integration/test_faults.py."""
from __future__ import annotations

import http.client
import socket
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import docker.errors
import paramiko
import pytest
import requests.exceptions
import urllib3.exceptions

from pipeline import engine, nginx_host
from pipeline.decide import Address
from pipeline.errors import (EXIT_DEPLOY_FAILED, DeployFailed, NginxHostFailed, RemoteCommandFailed,
                             SwitchIncomplete)
from pipeline.history import Entry, History
from pipeline.nginx_host import CommandResult, LocalHost
from pipeline.settings import Settings
from pipeline.reload_switch import ReloadSwitch
from pipeline.switch import LIVE

INCLUDE = "/etc/nginx/conf.d/service-url.inc"
BLUE_TEXT = "set $service_url http://172.20.0.2:8080;\n"
GREEN = Address("172.20.0.3", 8080)
GREEN_TEXT = "set $service_url http://172.20.0.3:8080;\n"
LOST = NginxHostFailed("nginx host root@n1:22 over SSH", "running `nginx -t`", "the connection was closed")


class ScriptedHost:
    """A strict fake nginx host: files in a dict, and a script of what each call does. Any call
    the script does not expect fails the test."""

    description = "root@n1:22"

    def __init__(self, script: List[tuple]) -> None:
        self.files: Dict[str, str] = {INCLUDE: BLUE_TEXT}
        self.script = list(script)

    def _next(self, call: str, *args: object) -> object:
        assert self.script, f"unexpected call {call}{args}"
        expected, outcome = self.script.pop(0)
        assert expected == call, f"expected {expected}, got {call}{args}"
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def read_text(self, path: str) -> Optional[str]:
        self._next("read")
        return self.files.get(path)

    def write_text_atomic(self, path: str, text: str) -> None:
        self._next("write")
        self.files[path] = text

    def run(self, argv: Sequence[str]) -> CommandResult:
        return self._next("run", argv)  # type: ignore[return-value]

    def run_steps(self, steps: Sequence[Sequence[str]]) -> List[CommandResult]:
        return self._next("run_steps", steps)  # type: ignore[return-value]

    def done(self) -> None:
        assert not self.script, f"calls expected but not made: {self.script}"


def ok_result(argv: Sequence[str] = ("nginx",)) -> CommandResult:
    return CommandResult(argv, 0, "")


def switch(host: ScriptedHost) -> ReloadSwitch:
    settings = Settings()
    assert str(settings.nginx_include) == INCLUDE
    return ReloadSwitch(host, settings)  # type: ignore[arg-type]


def test_a_session_lost_mid_switch_puts_the_include_back_and_reloads():
    host = ScriptedHost([("read", None), ("write", None), ("run_steps", LOST), ("write", None),
                         ("run", ok_result())])
    with pytest.raises(DeployFailed) as caught:
        switch(host).route_to(LIVE, GREEN)
    host.done()
    assert not isinstance(caught.value, SwitchIncomplete)
    assert str(caught.value) == f"{LOST}; put the old live include back and reloaded nginx"
    assert host.files[INCLUDE] == BLUE_TEXT


@pytest.mark.parametrize("script,problem", [
    # the include cannot be written back
    ([("read", None), ("write", None), ("run_steps", LOST), ("write", LOST)], str(LOST)),
    # written back, but the reload that must follow (nginx may have loaded green) fails
    ([("read", None), ("write", None), ("run_steps", LOST), ("write", None), ("run", CommandResult(("nginx",), 1, "x"))],
     "`nginx` after putting it back exited with 1"),
    # nginx -t rejected the new include, and writing the old one back fails
    ([("read", None), ("write", None), ("run_steps", [CommandResult(("nginx", "-t"), 1, "bad")]), ("write", LOST)],
     str(LOST)),
], ids=["write-back-fails", "reload-after-write-back-fails", "test-failed-then-write-back-fails"])
def test_an_include_that_cannot_be_put_back_says_what_to_do(script, problem):
    host = ScriptedHost(script)
    with pytest.raises(SwitchIncomplete) as caught:
        switch(host).route_to(LIVE, GREEN)
    host.done()
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_DEPLOY_FAILED
    assert f"then putting the old live include back failed ({problem})" in message
    assert f"{INCLUDE} on the nginx host may name {GREEN} or the old address" in message
    assert message.endswith("On the nginx host, run `nginx -t` and `nginx -s reload`: nginx then serves what "
                            "the include names, and the next deploy goes to the other color")


def test_a_failed_reload_whose_retry_is_cut_off_still_reports_the_reload():
    # nginx stayed on its old config (the reload failed), the include is back: nothing more to do.
    host = ScriptedHost([("read", None), ("write", None),
                         ("run_steps", [ok_result(("nginx", "-t")), CommandResult(("nginx", "-s", "reload"), 1, "no")]),
                         ("write", None), ("run", LOST)])
    with pytest.raises(RemoteCommandFailed) as caught:
        switch(host).route_to(LIVE, GREEN)
    host.done()
    assert "nginx reload failed; put the old live include back (reload after restoring also failed: " \
           "the connection was closed)" in str(caught.value)
    assert host.files[INCLUDE] == BLUE_TEXT


# -- wording of library errors -------------------------------------------------------------------

def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize("exc,words", [
    (requests.exceptions.ReadTimeout("read timed out"), "no answer within 7s (NETWORK_TIMEOUT)"),
    (urllib3.exceptions.ReadTimeoutError(None, "/v1.43/images/push", "Read timed out."),
     "no answer within 7s (NETWORK_TIMEOUT)"),
    (requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", ConnectionRefusedError(111, "Connection refused"))), "Connection refused"),
    (requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection"))),
     "the engine closed the connection without an answer"),
    (_chained(docker.errors.DockerException("Error while fetching server API version"),
              FileNotFoundError(2, "No such file or directory")), "No such file or directory"),
], ids=["requests-timeout", "urllib3-stream-timeout", "refused", "closed", "chained"])
def test_engine_failures_are_worded_by_their_cause(exc, words):
    assert engine._reason(exc, 7) == words


def test_engine_api_errors_give_the_engines_own_words():
    response = requests.Response()
    response.status_code = 500
    exc = docker.errors.APIError("500 Server Error", response=response, explanation="no such image: x")
    assert engine._reason(exc, 60) == "no such image: x"


@pytest.mark.parametrize("exc,words", [
    (socket.timeout("timed out"), "no answer within 5s (NETWORK_TIMEOUT)"),
    (EOFError(), "the connection was closed"),
    (paramiko.SSHException("Channel closed."), "Channel closed."),
    (PermissionError(13, "Permission denied"), "Permission denied"),
])
def test_ssh_failures_are_worded_by_their_cause(exc, words):
    assert nginx_host._ssh_reason(exc, 5) == words


def test_local_file_failures_name_the_host_the_action_and_the_cause(tmp_path: Path):
    with pytest.raises(NginxHostFailed) as caught:
        LocalHost().read_text(str(tmp_path))
    assert str(caught.value) == f"nginx host (this machine): reading {tmp_path}: Is a directory"


def test_history_that_cannot_be_written_is_a_warning_not_an_error(tmp_path: Path, caplog):
    History(LocalHost(), str(tmp_path)).append(Entry("t", "me", "app", "deploy", "v1", "blue", "ok", 1.0))
    assert f"could not append to history {tmp_path}" in caplog.text
