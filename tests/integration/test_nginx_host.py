"""The nginx host over real SSH (127.0.0.1:2222) and locally: the same answers from both, and from\nthe unit tests' FakeHost where it stands for them."""
from __future__ import annotations

import grp
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from pipeline.core.errors import NginxHostFailed, NotText
from pipeline.adapters.nginx_host import LocalHost, SshHost
from pipeline.core.settings import Settings

from ..unit.fakes import FakeHost

pytestmark = pytest.mark.integration


def open_host(kind: str, stack, tmp_path):
    if kind == "local":
        yield LocalHost()
        return
    if kind == "fake":
        yield FakeHost()
        return
    settings = Settings.from_env({
        "NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": stack["SSH_PORT"], "NGINX_SSH_KEY": stack["SSH_KEY"],
        "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"]}, tmp_path)
    ssh = SshHost.connect(settings.nginx, settings.network_timeout)
    yield ssh
    ssh.close()


@pytest.fixture(params=["local", "ssh"])
def host(request, stack, tmp_path):
    yield from open_host(request.param, stack, tmp_path)


def test_steps_run_in_order_until_one_fails(host):
    results = host.run_steps([["sh", "-c", "echo a"], ["sh", "-c", "printf b; exit 3"], ["echo", "never"]])
    assert [(r.code, r.output) for r in results] == [(0, "a\n"), (3, "b")]


def test_words_are_passed_as_words_not_shell(host, tmp_path):
    canary = tmp_path / "canary"
    results = host.run_steps([["echo", f"x; touch {canary}", "$(id)"], ["echo", "done"]])
    assert [r.output for r in results] == [f"x; touch {canary} $(id)\n", "done\n"]
    assert not canary.exists()


def test_missing_command_reports_its_code(host):
    [result] = host.run_steps([["no-such-command-here"]])
    assert result.code == 127


def test_atomic_write_exclusive_create_and_append(host, tmp_path):
    path = str(tmp_path / "service-url.inc")
    assert host.read_text(path) is None
    host.write_text_atomic(path, "one\n")
    host.write_text_atomic(path, "two\n")
    assert host.read_text(path) == "two\n"
    assert oct(Path(path).stat().st_mode & 0o777) == "0o644"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    lock = str(tmp_path / "app.lock")
    assert host.create_exclusive(lock, "me") and not host.create_exclusive(lock, "you")
    assert host.read_text(lock) == "me"
    host.append_text(str(tmp_path / "h.jsonl"), "1\n")
    host.append_text(str(tmp_path / "h.jsonl"), "2\n")
    assert host.read_text(str(tmp_path / "h.jsonl")) == "1\n2\n"
    host.remove(lock)
    host.remove(lock)   # twice is fine
    assert host.read_text(lock) is None



def test_an_exclusive_create_leaves_no_temp_file_and_costs_no_remove_when_it_succeeds(host, tmp_path):
    # Issue 15: the write check and the lock each create one file before `docker start`; over
    # SFTP a remove of the temp name, gone with the rename, was one more round trip each.
    removed = []
    if isinstance(host, SshHost):
        remove = host.sftp.remove
        host.sftp.remove = lambda path: (removed.append(path), remove(path))[1]   # type: ignore[method-assign]
    lock = str(tmp_path / "app.lock")
    assert host.create_exclusive(lock, "me")
    assert removed == []
    assert not host.create_exclusive(lock, "you")   # refused: its temp file is removed
    assert host.read_text(lock) == "me"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(removed) == (1 if isinstance(host, SshHost) else 0)


def count_round_trips(host: SshHost):
    """Over SFTP: how many times the client waited for answers after sending requests (each wait a
    wake-up of sftp-server, 5-30 ms on a saturated machine)."""
    sftp, trips, sending = host.sftp, [0], [False]
    send, read = sftp._send_packet, sftp._read_packet

    def sent(*args):
        sending[0] = True
        return send(*args)

    def answer(*args):
        if sending[0]:
            trips[0] += 1
            sending[0] = False
        return read(*args)

    sftp._send_packet, sftp._read_packet = sent, answer
    return trips


def test_a_rollback_s_file_operations_cost_two_or_three_sftp_round_trips(stack, tmp_path):
    # Issue 15: a rollback reads and writes a dozen files before nginx serves it; paramiko's
    # SFTPFile waits for every answer (a read was open, read, read to the end, close: four).
    host = next(open_host("ssh", stack, tmp_path))
    try:
        path, lock, history = (str(tmp_path / name) for name in ("app.releases.json", "app.lock", "app.history"))
        trips = count_round_trips(host)
        cases = [(lambda: host.write_text_atomic(path, "{}\n"), 3),   # open | write, mode, close | rename
                 (lambda: host.read_text(path), 2),                    # open | size, data (the close: not waited)
                 (lambda: host.create_exclusive(lock, "me"), 3),       # open | write, close | rename
                 (lambda: host.append_text(history, "1\n"), 2),       # open | write, close
                 (lambda: host.read_text(str(tmp_path / "missing")), 1)]
        for operation, expected in cases:
            trips[0] = 0
            operation()
            assert trips[0] == expected, operation
        assert host.read_text(path) == "{}\n" and host.read_text(lock) == "me" and host.read_text(history) == "1\n"
    finally:
        host.close()


def test_files_larger_than_one_request_and_files_whose_size_says_otherwise_are_read_whole(host, tmp_path):
    # Over SFTP a read asks for 32 KiB at a time and stops at the size the server reports; a file
    # in /sys reports 4096 bytes and ends before, one in /proc reports 0 and has some.
    path = str(tmp_path / "app.history.jsonl")
    text = "".join(f"{n} \u20ac\n" for n in range(30000))   # ~260 KB
    host.write_text_atomic(path, text)
    host.append_text(path, "last\n")
    assert host.read_text(path) == text + "last\n"
    for special in ("/sys/class/net/lo/address", "/proc/sys/kernel/ostype"):
        assert host.read_text(special) == Path(special).read_text(), special
    host.write_text_atomic(path, "")
    assert host.read_text(path) == ""

# -- what a file can hold, and be: the same answers from both hosts and from the unit tests' fake ----

def put(host, path: Path, data: bytes) -> None:
    if isinstance(host, FakeHost):
        host.files[str(path)] = data
    else:
        path.write_bytes(data)


@pytest.fixture(params=["local", "ssh", "fake"])
def any_host(request, stack, tmp_path):
    """A case here that the fake answers otherwise than the real hosts means the fake drifted."""
    yield from open_host(request.param, stack, tmp_path)


CUT = '{"version": "v1", "message": "5 \u20ac"}\n'.encode()[:-4]   # cut inside the euro sign


def test_bytes_that_are_not_utf8_are_not_text_naming_the_file_and_the_byte(any_host, tmp_path):
    path = tmp_path / "app.releases.json"
    put(any_host, path, CUT + b"\n{}\n")
    with pytest.raises(NotText) as caught:
        any_host.read_text(str(path))
    assert str(caught.value).endswith(f": reading {path}: not UTF-8 text (byte 0xe2 at offset {len(CUT) - 2})")
    assert isinstance(caught.value, NginxHostFailed) and caught.value.data == CUT + b"\n{}\n"


def test_text_beyond_ascii_comes_back_as_written(any_host, tmp_path):
    path = str(tmp_path / "app.history.jsonl")
    any_host.write_text_atomic(path, "5 \u20ac\n")
    any_host.append_text(path, "a\u2028b\n")
    assert any_host.read_text(path) == "5 \u20ac\na\u2028b\n"


def test_a_directory_is_not_a_file_and_a_missing_file_is_none(any_host, tmp_path):
    directory = tmp_path / "app.access.log"
    if isinstance(any_host, FakeHost):
        any_host.directories.add(str(directory))
    else:
        directory.mkdir()
    with pytest.raises(NginxHostFailed) as caught:
        any_host.size(str(directory))
    assert str(caught.value).endswith(f": looking at {directory}: it is a directory, not a file")
    with pytest.raises(NginxHostFailed, match=f": reading {directory}: "):
        any_host.read_bytes(str(directory), 0, 1)
    missing = str(tmp_path / "missing.log")
    assert any_host.size(missing) is None and any_host.read_text(missing) is None
    with pytest.raises(NginxHostFailed, match=f": reading {missing}: No such file"):
        any_host.read_bytes(missing, 0, 1)


@pytest.fixture
def unreadable_log():
    """Debian's access log: 0640 root:adm, in a directory anyone may enter."""
    directory = Path(tempfile.mkdtemp(prefix="pipeline-log-"))
    directory.chmod(0o755)
    path = directory / "app.access.log"
    path.write_bytes(b"line\n")
    os.chown(path, 0, grp.getgrnam("adm").gr_gid)
    path.chmod(0o640)
    yield path
    shutil.rmtree(directory)


@pytest.mark.parametrize("kind", ["ssh-as-other-user", "fake"])
def test_a_file_the_user_may_not_open_has_a_size_but_cannot_be_read(kind, stack, tmp_path, unreadable_log):
    if kind == "fake":
        host = FakeHost()
        host.files[str(unreadable_log)] = b"line\n"
        host.unreadable.add(str(unreadable_log))
    else:
        other = Settings.from_env({
            "NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": stack["SSH_PORT"], "NGINX_SSH_USER": stack["SSH_OTHER_USER"],
            "NGINX_SSH_KEY": stack["SSH_KEY"], "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"]}, tmp_path)
        host = SshHost.connect(other.nginx, other.network_timeout)
    try:
        assert host.size(str(unreadable_log)) == 5
        with pytest.raises(NginxHostFailed) as caught:
            host.read_bytes(str(unreadable_log), 4, 1)
        assert str(caught.value).endswith(f": reading {unreadable_log}: Permission denied")
        assert isinstance(caught.value.__cause__, PermissionError)
    finally:
        if kind != "fake":
            host.close()


# -- channels (health probes, admin requests) over a connection that dropped ---------------------------

class Greeter:
    """127.0.0.1:PORT answers every connection with b"hi" and closes it."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            conn.sendall(b"hi")
            conn.close()

    def close(self) -> None:
        self.server.close()


def greeting(host: SshHost, port: int) -> bytes:
    channel = host.open_channel("127.0.0.1", port, 5.0)
    try:
        return channel.recv(2)
    finally:
        channel.close()


def test_a_channel_after_the_connection_dropped_connects_again_and_a_refused_reconnect_is_one_line(
        stack, tmp_path, caplog):
    from .outside import OwnSshd

    sshd = OwnSshd(stack, tmp_path / "sshd")
    greeter = Greeter()
    settings = Settings.from_env({
        "NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": str(sshd.port), "NGINX_SSH_KEY": stack["SSH_KEY"],
        "NGINX_SSH_KNOWN_HOSTS": str(sshd.known_hosts), "NETWORK_TIMEOUT": "5"}, tmp_path)
    host = SshHost.connect(settings.nginx, settings.network_timeout)
    try:
        assert greeting(host, greeter.port) == b"hi"
        sshd.kill_sessions()   # the connection drops, as when its sshd dies
        with caplog.at_level("WARNING", logger="pipeline"):
            assert greeting(host, greeter.port) == b"hi"
        assert f"the SSH connection to root@127.0.0.1:{sshd.port} was lost; connecting again" in caplog.text
        # Now the nginx host refuses new connections, and the one open drops.
        sshd.stop(drop_connections=True)
        for _ in range(2):   # the first try connects again; the next ones say the same at once
            with pytest.raises(NginxHostFailed) as caught:
                greeting(host, greeter.port)
            assert str(caught.value) == (f"nginx host root@127.0.0.1:{sshd.port} over SSH: connecting again "
                                         f"after the connection was lost: Unable to connect to port {sshd.port} "
                                         f"on 127.0.0.1")
    finally:
        host.close()
        sshd.stop()
        greeter.close()
