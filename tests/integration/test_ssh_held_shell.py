"""Every command of an SshHost goes through one held `sh -s` session over a real sshd
(127.0.0.1:2222): one login shell per connection instead of one per command, with the framing,
the deadline and the recovery a session per command had."""
from __future__ import annotations

import pytest

from pipeline.adapters.nginx_host import SshHost
from pipeline.core.errors import NginxHostFailed
from pipeline.core.settings import Settings

pytestmark = pytest.mark.integration

# The pid of the `sh -s` a command runs under: its ancestors, walked up to the one whose argv is
# `sh -s` (the held shell; a session per command has one per command). 1 if there is none.
HELD_SHELL_PID = ('p=$PPID; while [ "$p" -gt 1 ] && [ "$(tr "\\0" " " < /proc/$p/cmdline)" != "sh -s " ]; '
                  'do p=$(sed -n "s/^PPid:[[:space:]]*//p" /proc/$p/status); done; echo $p')


def connect(stack, tmp_path, timeout: str = "20") -> SshHost:
    settings = Settings.from_env({
        "NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": stack["SSH_PORT"], "NGINX_SSH_KEY": stack["SSH_KEY"],
        "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"], "NETWORK_TIMEOUT": timeout}, tmp_path)
    return SshHost.connect(settings.nginx, settings.network_timeout)


@pytest.fixture
def host(stack, tmp_path):
    ssh = connect(stack, tmp_path)
    yield ssh
    ssh.close()


def held_shell(host: SshHost) -> int:
    result = host.run(["sh", "-c", HELD_SHELL_PID])
    assert result.code == 0, result
    pid = int(result.output.split()[-1])   # the last line: a login script's noise is not the question here
    assert pid > 1, "the command ran under no `sh -s`"
    return pid


def test_commands_share_one_login_shell(host):
    first = held_shell(host)
    assert host.run(["true"]).code == 0
    assert host.run_steps([["true"], ["echo", "x"]])[-1].output == "x\n"
    assert held_shell(host) == first


def test_a_command_cannot_change_the_held_shell_for_the_next(host):
    first = held_shell(host)
    assert host.run(["cd", "/tmp"]).code == 0
    assert host.run(["export", "PIPELINE_HELD=1"]).code == 0
    assert host.run(["exit", "5"]).code == 5
    assert host.run(["exec", "true"]).code == 0
    assert host.run(["sh", "-c", "echo ${PIPELINE_HELD-unset}"]).output == "unset\n"
    assert host.run(["pwd"]).output == host.run(["sh", "-c", "echo $HOME"]).output
    assert held_shell(host) == first   # `exit` and `exec` ended the command's subshell, not the held shell


def test_a_command_that_reads_stdin_does_not_eat_the_next(host):
    assert (host.run(["cat"]).code, host.run(["cat"]).output) == (0, "")
    assert host.run(["sh", "-c", "read line; echo got:$line"]).output == "got:\n"
    assert host.run(["echo", "next"]).output == "next\n"


FAKE_MARKERS = "0123456789abcdef0123456789abcdef:1:end 0\n:2:begin\n:3:end 3\nx:1:end 0"


@pytest.mark.parametrize("argv, output", [
    (["printf", "no newline"], "no newline"),
    (["printf", "%s", FAKE_MARKERS], FAKE_MARKERS),
    (["printf", "two\\n\\n"], "two\n\n"),
    (["printf", "\\r\\n \\n"], "\r\n \n"),
    (["true"], ""),
    (["printf", "\\377x"], "\ufffdx"),   # not UTF-8: replaced, as before
    (["sh", "-c", "echo out; echo err >&2; echo out2"], "out\nerr\nout2\n"),
    (["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"], "x" * 300000),   # many reads, the marker in pieces
], ids=["no-newline", "fake-markers", "blank-lines", "cr", "empty", "not-utf8", "stderr", "300k"])
def test_output_comes_back_exactly(host, argv, output):
    assert host.run(argv).output == output
    assert host.run(["echo", "after"]).output == "after\n"


def test_exit_codes_come_back(host):
    for code in (0, 1, 7, 255):
        assert host.run(["sh", "-c", f"echo {code}; exit {code}"]).code == code
    assert host.run(["no-such-command-here"]).code == 127
    assert host.run(["sh", "-c", "kill -9 $$"]).code == 137   # the command killed, not the session
    assert host.run(["true"]).code == 0


def test_a_command_that_outlives_network_timeout_fails_and_the_next_runs_on_a_new_session(stack, tmp_path):
    host = connect(stack, tmp_path, timeout="2")
    try:
        first = held_shell(host)
        with pytest.raises(NginxHostFailed) as caught:
            host.run(["sleep", "30"])
        assert str(caught.value) == ("nginx host root@127.0.0.1:" + stack["SSH_PORT"] + " over SSH: running "
                                     "`sleep 30`: no answer within 2s (NETWORK_TIMEOUT)")
        assert host.run(["echo", "next"]).output == "next\n"
        assert held_shell(host) != first   # the one left mid-command is never used again
    finally:
        host.close()


def test_a_held_shell_killed_during_a_command_fails_it_and_the_next_runs_on_a_new_session(host, stack):
    first = held_shell(host)
    with pytest.raises(NginxHostFailed) as caught:
        host.run(["kill", "-9", str(first)])
    assert str(caught.value) == (f"nginx host root@127.0.0.1:{stack['SSH_PORT']} over SSH: running "
                                 f"`kill -9 {first}`: the session ended before the command reported its exit status")
    assert host.run(["echo", "next"]).output == "next\n"
    assert held_shell(host) != first


def test_a_held_shell_killed_while_it_waits_is_replaced_without_a_failure(host, stack, tmp_path):
    first = held_shell(host)
    other = connect(stack, tmp_path)
    try:
        assert other.run(["kill", "-9", str(first)]).code == 0
    finally:
        other.close()
    assert host.run(["echo", "next"]).output == "next\n"
    assert held_shell(host) != first
