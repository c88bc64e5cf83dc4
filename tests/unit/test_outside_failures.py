"""Outside failures at our own seams: the reload switch over a strict fake nginx host, and how
library errors are worded. The real faults are in tests/integration/test_faults.py."""
from __future__ import annotations

import http.client
import socket
from pathlib import Path
from typing import List, Sequence

import docker.errors
import paramiko
import pytest
import requests.exceptions
import urllib3.exceptions

from pipeline.adapters import engine, nginx_host
from pipeline.core.decide import Address
from pipeline.core.errors import (EXIT_DEPLOY_FAILED, EXIT_PREFLIGHT, DeployFailed, IncludeNotLoaded, NginxHostFailed,
                             PreflightError, SwitchIncomplete)
from pipeline.core.history import Entry, History
from pipeline.adapters.nginx_host import LocalHost
from pipeline.core.host import CommandResult
from pipeline.core.settings import Settings
from pipeline.adapters.reload_switch import CONFIRM_SECONDS, RELOAD_SCRIPT, ReloadSwitch
from pipeline.core.switch import LIVE

from .fakes import FakeHost

INCLUDE = "/etc/nginx/conf.d/service-url.inc"
BLUE_TEXT = "set $service_url http://172.20.0.2:8080;\n"
GREEN = Address("172.20.0.3", 8080)
GREEN_TEXT = "set $service_url http://172.20.0.3:8080;\n"
LOADED = INCLUDE + ".loaded"
LOST = NginxHostFailed("nginx host root@n1:22 over SSH", "running `nginx -t`", "the connection was closed")


def scripted_host(script: List[tuple]) -> FakeHost:
    """The fake nginx host on a script of what each call does (FakeHost's `script`), the
    includes saying blue."""
    host = FakeHost(description="root@n1:22", script=list(script))
    host.files.update({INCLUDE: BLUE_TEXT, LOADED: BLUE_TEXT})
    return host


def ok_result(argv: Sequence[str] = ("nginx",)) -> CommandResult:
    return CommandResult(argv, 0, "")


def reloaded(verdict: str, code: int = 0, output: str = "", note: str = ""):
    """What the reload step (RELOAD_SCRIPT) answers, for `run` (one step) or as the second of
    `run_steps` after a passing `nginx -t`."""
    def answer(argv: Sequence[str]) -> CommandResult:
        token = argv[4]
        after = {"applied": "100: 102", "changed": "100: 101 102"}.get(verdict, "100: 101")
        line = f"{token}|{verdict}|{code}|100: 101|{after}|{note}"
        return CommandResult(argv, 0 if verdict == "applied" else 1, f"{output}\n{line}\n")

    def steps(steps: Sequence[Sequence[str]]) -> List[CommandResult]:
        return [ok_result(steps[0]), answer(steps[1])]

    answer.steps = steps   # type: ignore[attr-defined]
    return answer


def switch(host: FakeHost) -> ReloadSwitch:
    settings = Settings()
    assert str(settings.nginx_include) == INCLUDE
    return ReloadSwitch(host, settings.switch, settings.nginx, settings.network_timeout)  # type: ignore[arg-type]


def test_a_switch_is_done_when_the_reload_is_seen_to_apply():
    host = scripted_host([("read", None), ("write", None), ("run_steps", reloaded("applied").steps)])
    switch(host).route_to(LIVE, (GREEN,))
    host.done()
    assert host.files[INCLUDE] == GREEN_TEXT


def test_the_reload_step_runs_the_reload_command_under_the_check():
    host = scripted_host([("read", None), ("write", None), ("run_steps", reloaded("applied").steps)])
    seen = []
    host.run_steps = lambda steps: seen.extend(steps) or reloaded("applied").steps(steps)   # type: ignore
    host.script = host.script[:2]
    switch(host).route_to(LIVE, (GREEN,))
    test, step = seen
    assert test == ("nginx", "-t")
    assert step[:2] == ["sh", "-c"] and step[2] == RELOAD_SCRIPT
    # token, pid file, the `.loaded` copy, the include, the seconds, then the reload command itself
    assert step[5:] == ["/run/nginx.pid", LOADED, INCLUDE, str(CONFIRM_SECONDS), "nginx", "-s", "reload"]


@pytest.mark.parametrize("verdict,code,words", [
    ("unchanged", 0, "`nginx -s reload` exited 0, but nginx was not seen loading the new live include within 10s "
                     "(its worker processes were not replaced, see nginx's error log); put the old live include back"),
    ("unchanged", 1, "nginx reload failed; put the old live include back: `nginx -s reload` exited with 1"),
    ("no-master", 0, "NGINX_PID_FILE=/run/nginx.pid names no running process on the nginx host: nginx was not "
                     "reloaded (a reload there could not be seen to apply); put the old live include back"),
    ("no-workers", 0, "has no worker process: nginx was not reloaded; put the old live include back"),
    ("marker", 0, f"could not move {INCLUDE}.loaded aside on the nginx host: nginx was not reloaded; put the old "
                  f"live include back"),
], ids=["exit-0-not-applied", "reload-fails", "no-master", "no-workers", "marker"])
def test_a_reload_that_did_not_apply_puts_the_include_back_without_reloading(verdict, code, words):
    # Nothing was loaded (the workers are those of before), or nothing was reloaded: the old
    # include is all it takes.
    host = scripted_host([("read", None), ("write", None), ("run_steps", reloaded(verdict, code).steps),
                         ("write", None)])
    with pytest.raises(DeployFailed) as caught:
        switch(host).route_to(LIVE, (GREEN,))
    host.done()
    assert words in str(caught.value)
    assert not isinstance(caught.value, SwitchIncomplete)
    assert host.files[INCLUDE] == BLUE_TEXT


@pytest.mark.parametrize("code,words", [
    (0, "`nginx -s reload` exited 0, but nginx was not seen loading the new live include within 10s (its worker "
        "processes went from 100: 101 to 100: 101 102); put the old live include back"),
    (1, "nginx reload failed; put the old live include back: `nginx -s reload` exited with 1"),
], ids=["exit-0", "exit-1"])
def test_a_reload_that_may_have_applied_is_undone_by_a_reload_seen_to_apply(code, words):
    host = scripted_host([("read", None), ("write", None), ("run_steps", reloaded("changed", code).steps),
                         ("write", None), ("run", reloaded("applied"))])
    with pytest.raises(DeployFailed) as caught:
        switch(host).route_to(LIVE, (GREEN,))
    host.done()
    assert not isinstance(caught.value, SwitchIncomplete)
    assert str(caught.value) == words
    assert host.files[INCLUDE] == BLUE_TEXT


def test_a_session_lost_mid_switch_puts_the_include_back_and_reloads():
    host = scripted_host([("read", None), ("write", None), ("run_steps", LOST), ("write", None),
                         ("run", reloaded("applied"))])
    with pytest.raises(DeployFailed) as caught:
        switch(host).route_to(LIVE, (GREEN,))
    host.done()
    assert not isinstance(caught.value, SwitchIncomplete)
    # The commands as configured, not the check wrapped around the reload (many lines of sh).
    assert str(caught.value) == ("nginx host root@n1:22 over SSH: running `nginx -t` then `nginx -s reload`: the "
                                 "connection was closed; put the old live include back and reloaded nginx")
    assert host.files[INCLUDE] == BLUE_TEXT


@pytest.mark.parametrize("script,problem", [
    # the include cannot be written back
    ([("read", None), ("write", None), ("run_steps", LOST), ("write", LOST)], str(LOST)),
    # written back, but the reload that must follow (nginx may have loaded green) fails
    ([("read", None), ("write", None), ("run_steps", LOST), ("write", None), ("run", reloaded("unchanged", 1))],
     "`nginx -s reload` after putting it back was not seen to apply (unchanged, exit 1)"),
    # ... or exits 0 without applying
    ([("read", None), ("write", None), ("run_steps", reloaded("changed").steps), ("write", None),
      ("run", reloaded("unchanged"))],
     "`nginx -s reload` after putting it back was not seen to apply (unchanged, exit 0)"),
    # ... or is cut off
    ([("read", None), ("write", None), ("run_steps", LOST), ("write", None), ("run", LOST)],
     "nginx host root@n1:22 over SSH: running `nginx -s reload`: the connection was closed"),
    # nginx -t rejected the new include, and writing the old one back fails
    ([("read", None), ("write", None), ("run_steps", [CommandResult(("nginx", "-t"), 1, "bad")]), ("write", LOST)],
     str(LOST)),
], ids=["write-back-fails", "reload-after-write-back-fails", "reload-after-write-back-does-not-apply",
        "reload-after-write-back-cut-off", "test-failed-then-write-back-fails"])
def test_an_include_that_cannot_be_put_back_says_what_to_do(script, problem):
    host = scripted_host(script)
    with pytest.raises(SwitchIncomplete) as caught:
        switch(host).route_to(LIVE, (GREEN,))
    host.done()
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_DEPLOY_FAILED and "\n" not in message
    assert f"then putting the old live include back failed ({problem})" in message
    assert f"{INCLUDE} on the nginx host may name {GREEN} or the old address, and nginx may serve either" in message
    assert message.endswith("On the nginx host, run `nginx -t` and `nginx -s reload`: nginx then serves what "
                            "the include names, and the next deploy goes to the other color")


# -- what nginx serves: the include only once nginx was seen loading it --------------------------

@pytest.mark.parametrize("loaded", [BLUE_TEXT, None, GREEN_TEXT], ids=["same", "missing", "other"])
def test_the_live_route_is_the_include_only_when_nginx_was_seen_loading_it(loaded):
    host = scripted_host([("read", None), ("read", None)])
    host.files[LOADED] = loaded   # type: ignore[assignment]
    if loaded == BLUE_TEXT:
        assert switch(host).current(LIVE) == (Address("172.20.0.2", 8080),)
    else:
        with pytest.raises(IncludeNotLoaded) as caught:
            switch(host).current(LIVE)
        assert caught.value.exit_code == EXIT_PREFLIGHT
        assert caught.value.address == (Address("172.20.0.2", 8080),)
        assert str(caught.value).startswith(f"nginx was not seen loading {INCLUDE} (it names 172.20.0.2:8080; "
                                            f"{LOADED} ")
    host.done()


@pytest.mark.parametrize("pid_text,words", [
    (None, "NGINX_PID_FILE=/run/nginx.pid: no such file on the nginx host (root@n1:22); set it to the path in "
           "nginx's `pid` directive"),
    ("nginx\n", "NGINX_PID_FILE=/run/nginx.pid: holds 'nginx' on the nginx host (root@n1:22), not a process id"),
    ("", "NGINX_PID_FILE=/run/nginx.pid: holds '' on the nginx host (root@n1:22), not a process id"),
    ("1234\n", None),
])
def test_check_reads_the_pid_file(pid_text, words):
    host = scripted_host([("read", None)])
    if pid_text is not None:
        host.files["/run/nginx.pid"] = pid_text
    if words is None:
        switch(host).check()
    else:
        with pytest.raises(PreflightError) as caught:
            switch(host).check()
        assert str(caught.value).startswith(words)
    host.done()


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
