"""The nginx host: files and commands, on this machine or over SSH (paramiko, key auth).

Both kinds offer the same small surface, so the switch, the lock and the history do not care where
nginx runs. Commands are argv lists: run without a shell locally, and quoted word by word with
shlex.join for the remote shell, never pasted together from values.
"""
from __future__ import annotations

import logging
import os
import shlex
import socket
import stat
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import paramiko

from pipeline.core.errors import NginxHostFailed, NotText, PreflightError
from pipeline.core.host import CommandResult, NginxHost, temp_name
from pipeline.core.settings import NginxSettings, without_secrets

log = logging.getLogger("pipeline")

COMMAND_TIMEOUT = 60.0   # a command on this machine (nginx -t, reload)


def ssh_errors() -> Tuple[Type[BaseException], ...]:
    """What paramiko raises when the connection, a channel or an SFTP request fails: its own
    errors, EOF from a closed connection, and socket or SFTP status errors (IOError). A function,
    not a constant: naming paramiko's errors loads paramiko (deferred, see pipeline/__init__.py),
    and with nginx on this machine that happens only when a file operation has failed."""
    return (paramiko.SSHException, EOFError, OSError)


@contextmanager
def _file_call(part: str, action: str, timeout: float = 0.0) -> Iterator[None]:
    """A file operation on the nginx host: any OS, SFTP or SSH failure becomes NginxHostFailed."""
    try:
        yield
    except ssh_errors() as exc:
        raise NginxHostFailed(part, action, _ssh_reason(exc, timeout)) from exc


@contextmanager
def _deadline(transport: "paramiko.Transport", seconds: float) -> Iterator[threading.Event]:
    """Bound a whole exchange on a channel by `seconds`.

    paramiko waits with no timeout for the answer to a channel request (`exec`, the `sftp`
    subsystem) and for a command's exit status; `settimeout` covers only reads. Past the deadline
    the connection is closed, which ends any such wait with an error, reported as no answer within
    NETWORK_TIMEOUT; the next operation connects again. Yields an event set once the deadline
    has passed (a read from a channel that closes then ends quietly, without an error).
    """
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        transport.close()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    except ssh_errors() as exc:
        if expired.is_set():
            raise socket.timeout(f"no answer within {seconds:g}s") from exc
        raise
    finally:
        timer.cancel()


class LocalHost:
    """nginx on this machine (NGINX_HOST empty)."""

    description = "this machine"
    part = "nginx host (this machine)"

    def read_text(self, path: str) -> Optional[str]:
        with _file_call(self.part, f"reading {path}"):
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                return None
        return _text(self.part, path, data)

    def write_text_atomic(self, path: str, text: str) -> None:
        temp = temp_name(path)
        with _file_call(self.part, f"writing {path}"):
            with open(temp, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, path)

    def create_exclusive(self, path: str, text: str) -> bool:
        # Written aside, then linked: link() fails if the name exists, so the file appears whole or not at all.
        temp = temp_name(path)
        with _file_call(self.part, f"creating {path}"):
            Path(temp).write_text(text, encoding="utf-8")
            try:
                os.link(temp, path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(temp)

    def append_text(self, path: str, text: str) -> None:
        with _file_call(self.part, f"appending to {path}"):
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text)

    def remove(self, path: str) -> None:
        with _file_call(self.part, f"removing {path}"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def size(self, path: str) -> Optional[int]:
        """The file's size in bytes; None if there is no such file. Something else at the path
        (a directory) is NginxHostFailed, as is a failure to look."""
        with _file_call(self.part, f"looking at {path}"):
            try:
                info = os.stat(path)
            except FileNotFoundError:
                return None
        return _regular_size(self.part, path, info.st_mode, info.st_size)

    def read_bytes(self, path: str, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes from `offset` on (e.g. what a log gained since it was that long)."""
        with _file_call(self.part, f"reading {path}"):
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read(limit)

    def run(self, argv: Sequence[str]) -> CommandResult:
        try:
            # nginx -t / reload have no business with the registry password (SSH sends no env).
            done = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=COMMAND_TIMEOUT, check=False,
                                  env=without_secrets(os.environ))
        except FileNotFoundError:
            return CommandResult(argv, 127, f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired as exc:
            return CommandResult(argv, 124, f"timed out after {exc.timeout:.0f}s")
        return CommandResult(argv, done.returncode, done.stdout)

    def run_steps(self, steps: Sequence[Sequence[str]]) -> List[CommandResult]:
        """Run commands in order until one fails; the results of those that ran."""
        results = []
        for argv in steps:
            results.append(self.run(argv))
            if results[-1].code != 0:
                break
        return results

    def open_channel(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((host, port), timeout=timeout)

    def close(self) -> None:
        pass


class SshHost:
    """nginx on another machine, over SSH with key auth and a checked host key.

    Every SSH, SFTP or socket failure becomes NginxHostFailed naming the host, the channel and
    what was being done. A connection found dead is opened again once before the next operation,
    so that a switch cut short by a dropped connection can still put the old include back.
    """

    def __init__(self, client: paramiko.SSHClient, description: str,
                 nginx: Optional[NginxSettings] = None, timeout: float = COMMAND_TIMEOUT) -> None:
        self.client = client
        self.description = description
        self.nginx = nginx   # to connect again after a lost connection (None: never)
        self.timeout = timeout
        self._sftp: Optional[paramiko.SFTPClient] = None
        self._unreachable: Optional[NginxHostFailed] = None
        self._shell: Optional[_HeldShell] = None
        self._held = True   # False once a held shell proved not to work here: a session per command
        self._running = threading.Lock()   # one command at a time through the held shell

    @classmethod
    def connect(cls, nginx: NginxSettings, timeout: float,
                waiting: Callable[[], None] = lambda: None) -> "SshHost":
        """Connect, then prove the SFTP channel: preflight, exit 3. That the host runs commands
        is proven by a flow's first one, the route check in preflight (Prober.check_routes):
        a session of its own here cost a saturated machine most of a second (issue 15).

        The commands' held shell (see `run`) is started before the SFTP subsystem, not after it:
        each starts a login shell on the nginx host, and side by side the second is ready when the
        first is, instead of a login shell later (the route check waited 0.2 s for it, issue 15).

        `waiting` is called once paramiko is loaded, right before the handshake: from then on the
        connection waits on the network and the nginx host (its handshake, its login shells), and
        this process's other work no longer delays it."""
        host = cls(_open_client(nginx, timeout, waiting), _where(nginx), nginx, timeout)
        host._start_shell()
        try:
            host.sftp
        except NginxHostFailed as exc:
            host.close()
            raise PreflightError(f"{exc}; the include, the lock and the history are written over SFTP: "
                                 f"is there a `Subsystem sftp` line in its sshd_config?") from exc
        return host

    @property
    def sftp_part(self) -> str:
        return f"nginx host {self.description} over SFTP"

    @property
    def ssh_part(self) -> str:
        return f"nginx host {self.description} over SSH"

    def _transport(self) -> paramiko.Transport:
        """The live SSH transport; a dead one is replaced by a new connection, once per call."""
        transport = self.client.get_transport()
        if transport is not None and transport.is_active():
            return transport
        if self.nginx is None:
            raise NginxHostFailed(self.ssh_part, "using the connection", "it is closed")
        if self._unreachable is not None:
            # Tried once already: every further wait would only add NETWORK_TIMEOUT to the cleanup.
            raise NginxHostFailed(self.ssh_part, self._unreachable.action, self._unreachable.cause)
        log.warning("    the SSH connection to %s was lost; connecting again", self.description)
        self._drop()
        try:
            self.client = _open_client(self.nginx, self.timeout)
        except PreflightError as exc:
            cause = _ssh_reason(exc.__cause__, self.timeout) if exc.__cause__ is not None else str(exc)
            self._unreachable = NginxHostFailed(self.ssh_part, "connecting again after the connection was lost",
                                                cause)
            raise self._unreachable from exc
        transport = self.client.get_transport()
        assert transport is not None
        return transport

    def _drop(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
            # The connection first: a held shell still being opened in its thread then ends at
            # once instead of being waited for (up to NETWORK_TIMEOUT) before the close.
            self.client.close()
            self._drop_shell()
        except ssh_errors():
            pass   # already broken: nothing left to close cleanly
        self._sftp = None

    def _start_shell(self) -> None:
        """Start the commands' held shell now, in the background (see `run`)."""
        transport = self.client.get_transport()
        if self._held and self._shell is None and transport is not None and transport.is_active():
            self._shell = _HeldShell(transport, self.timeout, background=True)

    def _drop_shell(self) -> None:
        shell, self._shell = self._shell, None
        if shell is not None:
            shell.close()

    @property
    def sftp(self) -> paramiko.SFTPClient:
        transport = self._transport()
        if self._sftp is None:
            # SFTPClient.from_transport, with a timeout on opening the channel and on every answer.
            with _file_call(self.sftp_part, "starting the SFTP subsystem", self.timeout):
                channel = transport.open_session(timeout=self.timeout)
                channel.settimeout(self.timeout)
                with _deadline(transport, self.timeout):
                    channel.invoke_subsystem("sftp")
                    self._sftp = paramiko.SFTPClient(channel)
        return self._sftp

    def _sftp_call(self, action: str) -> ContextManager[None]:
        return _file_call(self.sftp_part, action, self.timeout)

    def read_text(self, path: str) -> Optional[str]:
        with self._sftp_call(f"reading {path}"):
            try:
                data = _SftpRequests(self.sftp).read_all(path)
            except FileNotFoundError:
                return None
        return _text(self.sftp_part, path, data)

    def write_text_atomic(self, path: str, text: str) -> None:
        temp = temp_name(path)
        with self._sftp_call(f"writing {path}"):
            # Written whole (data, mode 0644, closed) before the rename is even sent.
            _SftpRequests(self.sftp).write_new(temp, text.encode(), mode=0o644)
            # posix-rename@openssh.com replaces the target in one step, like rename(2).
            self.sftp.posix_rename(temp, path)

    def create_exclusive(self, path: str, text: str) -> bool:
        # Plain SFTP rename refuses an existing target (OpenSSH does link+unlink): an atomic create.
        temp = temp_name(path)
        with self._sftp_call(f"creating {path}"):
            _SftpRequests(self.sftp).write_new(temp, text.encode())
            try:
                self.sftp.rename(temp, path)
                return True   # renamed: the temp name is gone, no remove (a round trip before docker start)
            except BaseException as exc:
                try:
                    self.sftp.remove(temp)
                except (OSError, NginxHostFailed):
                    pass
                if isinstance(exc, OSError) and not _is_transport_error(exc):
                    return False
                raise

    def append_text(self, path: str, text: str) -> None:
        with self._sftp_call(f"appending to {path}"):
            _SftpRequests(self.sftp).append(path, text.encode())

    def remove(self, path: str) -> None:
        with self._sftp_call(f"removing {path}"):
            try:
                self.sftp.remove(path)
            except FileNotFoundError:
                pass

    def size(self, path: str) -> Optional[int]:
        with self._sftp_call(f"looking at {path}"):
            try:
                info = self.sftp.stat(path)
            except FileNotFoundError:
                return None
        return _regular_size(self.sftp_part, path, info.st_mode, info.st_size or 0)

    def read_bytes(self, path: str, offset: int, limit: int) -> bytes:
        with self._sftp_call(f"reading {path}"):
            with self.sftp.open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read(limit)

    def run(self, argv: Sequence[str]) -> CommandResult:
        """Run a command; its exit code comes back in the result. A broken session, or no answer
        within NETWORK_TIMEOUT, raises NginxHostFailed: then nobody knows what the command did.

        Every SSH session starts the SSH user's login shell on the nginx host, whose start-up
        (.bashrc: 0.15 s of CPU where it runs `pyenv init`) a saturated machine stretches to most
        of a second (issue 15). So all commands of this host go through one held session running
        `exec sh -s` (`_HeldShell`): one login shell per connection, started in the background
        right after connecting, instead of one per command (with several hosts in reload mode the
        prepare's `nginx -t` and the commit's reload were two). A held shell that is no longer
        usable (the connection lost, its shell gone) is dropped for a new one; one left in an
        unknown state (no answer within NETWORK_TIMEOUT, the session cut during a command) is
        never used again. Where a held shell does not work at all (no `sh` on the nginx host),
        each command has a session of its own, as before."""
        command = shlex.join(argv)
        action = f"running `{_short(command)}`"
        with self._running:
            transport = self._transport()
            try:
                with _file_call(self.ssh_part, action, self.timeout):
                    with _deadline(transport, self.timeout) as expired:
                        answer = self._run_held(transport, command) if self._held else None
                        if answer is None:
                            answer = self._run_in_own_session(transport, command)
                code, output = answer
                if code == -1 and expired.is_set():
                    raise NginxHostFailed(self.ssh_part, action, _ssh_reason(socket.timeout(), self.timeout))
                if code == -1:
                    # No exit status: the session was cut (its sshd killed, the connection lost).
                    raise NginxHostFailed(self.ssh_part, action,
                                          "the session ended before the command reported its exit status")
            except NginxHostFailed:
                self._drop_shell()   # its state is unknown: never used again
                _settle(transport)
                raise
            except BaseException:
                self._drop_shell()
                raise
        return CommandResult(argv, code, output)

    def _run_held(self, transport: "paramiko.Transport", command: str) -> Optional[Tuple[int, str]]:
        """The command through the held shell: (code, output), code -1 if the session ended during
        the command; None if no held shell works here (then the caller runs it in a session of
        its own). A held shell found ended before the command began (killed while idle) is
        replaced once by a new one."""
        for _ in range(2):
            shell, self._shell = self._shell, None
            if shell is None or not shell.usable_on(transport):
                if shell is not None:
                    shell.close()
                try:
                    shell = _HeldShell(transport, self.timeout, background=False)
                except paramiko.ChannelException as exc:   # the nginx host refuses another session
                    log.debug("    no held shell on %s: %s", self.description, exc)
                    self._held = False
                    return None
            try:
                answer = shell.run(command)
            except BaseException:   # its state is unknown (a signal, a channel error): never used again
                shell.close()
                raise
            if answer is None:   # the session ended before the command began
                shell.close()
                if shell.worked:
                    continue   # it had ended while it waited: once more, on a new one
                if not transport.is_active():
                    return -1, ""   # the connection went, not the shell: a held shell may work next time
                log.debug("    the held shell on %s ended before a command began: a session per command",
                          self.description)
                self._held = False
                return None
            if answer[0] == -1:
                shell.close()   # ended during the command
            else:
                self._shell = shell
            return answer
        return -1, ""   # a new held shell ended before its command began, twice

    def _run_in_own_session(self, transport: "paramiko.Transport", command: str) -> Tuple[int, str]:
        channel = transport.open_session(timeout=self.timeout)
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(self.timeout)
            channel.exec_command(command)
            output = channel.makefile("rb").read().decode("utf-8", "replace")
            return channel.recv_exit_status(), output
        finally:
            channel.close()

    def run_steps(self, steps: Sequence[Sequence[str]]) -> List[CommandResult]:
        """Run commands in order until one fails, in one SSH round trip.

        Each command costs a session of its own otherwise (0.2-0.3 s under load), and `nginx -t`
        then `nginx -s reload` sit between a healthy container and nginx serving it. Every word is
        quoted with shlex; a marker line after each command carries its exit code back.
        """
        marker = f"__pipeline_rc_{os.urandom(16).hex()}="
        script = "; ".join(
            f"{shlex.join(argv)} 2>&1; rc=$?; echo; echo {marker}$rc; [ $rc -eq 0 ] || exit 0"
            for argv in steps
        )
        try:
            combined = self.run(["sh", "-c", script])
        except NginxHostFailed as exc:
            ran = " then ".join(f"`{_short(shlex.join(argv))}`" for argv in steps)
            raise NginxHostFailed(exc.part, f"running {ran}", exc.cause) from exc
        results: List[CommandResult] = []
        chunks = combined.output.split(marker)
        for argv, chunk, after in zip(steps, chunks, chunks[1:]):
            code_text = after.split("\n", 1)[0].strip()
            output = chunk if not results else chunk.split("\n", 1)[-1]
            results.append(CommandResult(argv, int(code_text) if code_text.isdigit() else 255,
                                         output[:-1] if output.endswith("\n") else output))
        if len(results) < len(steps) and (not results or results[-1].code == 0):
            # The session itself failed before the next command reported.
            results.append(CommandResult(steps[len(results)], combined.code or 255, chunks[-1]))
        return results

    def open_channel(self, host: str, port: int, timeout: float) -> socket.socket:
        """A direct-tcpip channel: reach a port on the nginx host's loopback without exposing it.

        As for SFTP and commands, a connection found dead is opened again first. Opening a channel
        changes nothing on the nginx host, so a connection lost while the channel opens (dropped
        before paramiko noticed) is opened again too, and the channel asked for once more.
        Raises paramiko.ChannelException when the nginx host's sshd could not connect to
        host:port (the caller's answer: refused, unreachable), socket.timeout when no channel
        opened within `timeout` over a live connection, and NginxHostFailed when the connection
        is lost and cannot be opened again.
        """
        transport = self._transport()
        try:
            return _direct_channel(transport, host, port, timeout)
        except ssh_errors():
            if transport.is_active():
                raise   # refused, or a timeout: the connection itself is fine
        transport = self._transport()   # lost while the channel opened: once more, over a new one
        try:
            return _direct_channel(transport, host, port, timeout)
        except ssh_errors() as exc:
            if transport.is_active():
                raise
            raise NginxHostFailed(self.ssh_part, f"opening a channel to {host}:{port}",
                                  _ssh_reason(exc, timeout)) from exc

    def close(self) -> None:
        self._drop()


class _SftpRequests:
    """SFTP requests sent back to back, their answers read after (issue 15).

    paramiko's SFTPFile waits for the answer to each request before it sends the next: reading a
    small file is open, read, read (to see the end), close, four round trips, each a wake-up of
    sftp-server that a saturated machine delays by 5-30 ms; a rollback reads and writes a dozen
    files before nginx serves. This sends what does not depend on an earlier answer together,
    through paramiko's own request plumbing (`_async_request`, `_read_response`,
    `_convert_status`: what its prefetch and pipelined writes use), and reads the answers by
    request number, whatever order they come in. Errors are paramiko's (OSError with the
    server's text, errno for a missing file or a refused one), as with SFTPFile.

    A step whose effect must not happen after a failed one is never sent with it: the rename
    that publishes a written file goes only after its write and close have answered OK."""

    CHUNK = 32768   # paramiko's own request size (SFTPFile.MAX_REQUEST_SIZE)

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp: Any = sftp   # its request plumbing is not in paramiko's type stubs
        self._answers: Dict[int, Tuple[int, Any]] = {}

    def _send(self, kind: int, *args: Any) -> int:
        num: int = self.sftp._async_request(self, kind, *args)
        return num

    def _async_response(self, kind: int, msg: Any, num: int) -> None:
        """paramiko hands each answer to a request sent by `_send` here."""
        self._answers[num] = (kind, msg)

    def _answer(self, num: int, expect: Optional[int] = None) -> Any:
        """The answer to request `num` (its message); an error status raises (SFTP_EOF as
        EOFError, as paramiko does)."""
        while num not in self._answers:
            self.sftp._read_response()   # reads one answer and hands it to its request's owner
        kind, msg = self._answers.pop(num)
        if kind == paramiko.sftp.CMD_STATUS:
            self.sftp._convert_status(msg)   # raises on anything but OK
        if expect is not None and kind != expect:
            raise OSError(f"unexpected SFTP answer {kind} (expected {expect})")
        return msg

    def _answers_in_order(self, nums: Sequence[int]) -> None:
        """Every answer read (nothing left behind for a later request), then the first error raised."""
        first: Optional[BaseException] = None
        for num in nums:
            try:
                self._answer(num)
            except (OSError, EOFError) as exc:
                first = first or exc
        if first is not None:
            raise first

    def _open(self, path: str, flags: int) -> bytes:
        msg = self._answer(self._send(paramiko.sftp.CMD_OPEN, path, flags, paramiko.SFTPAttributes()),
                           paramiko.sftp.CMD_HANDLE)
        handle: bytes = msg.get_binary()   # paramiko.sftp's messages are untyped
        return handle

    def read_all(self, path: str) -> bytes:
        """The whole file: open, then its size and its first chunk together, then (rarely) more;
        a regular file that fits in one chunk costs two round trips. The close is not waited for
        (paramiko closes a collected SFTPFile the same way); its answer is read, and dropped,
        with the next request's."""
        handle = self._open(path, paramiko.sftp.SFTP_FLAG_READ)
        try:
            size_request = self._send(paramiko.sftp.CMD_FSTAT, handle)
            read_request = self._send(paramiko.sftp.CMD_READ, handle, paramiko.sftp.int64(0), self.CHUNK)
            attributes: Any = paramiko.SFTPAttributes
            size = attributes._from_msg(self._answer(size_request, paramiko.sftp.CMD_ATTRS)).st_size
            chunks: List[bytes] = []
            done = 0
            while True:
                try:
                    chunk = self._answer(read_request, paramiko.sftp.CMD_DATA).get_string()
                except EOFError:   # the SFTP_EOF status: nothing more
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                done += len(chunk)
                if size is not None and done >= size and size > 0:
                    break   # a regular file read to its size (a /sys file says 4096 and ends at EOF)
                read_request = self._send(paramiko.sftp.CMD_READ, handle, paramiko.sftp.int64(done), self.CHUNK)
            return b"".join(chunks)
        finally:
            try:
                self.sftp._async_request(type(None), paramiko.sftp.CMD_CLOSE, handle)
            except ssh_errors():
                pass   # the connection is gone, and the handle with it; what failed first is reported

    def write_new(self, path: str, data: bytes, mode: Optional[int] = None) -> None:
        """Create or truncate `path` and write `data` (then set `mode`): open, then the writes,
        the mode and the close together; two round trips."""
        handle = self._open(path, paramiko.sftp.SFTP_FLAG_WRITE | paramiko.sftp.SFTP_FLAG_CREATE
                            | paramiko.sftp.SFTP_FLAG_TRUNC)
        self._write_and_close(handle, data, mode)

    def append(self, path: str, data: bytes) -> None:
        handle = self._open(path, paramiko.sftp.SFTP_FLAG_WRITE | paramiko.sftp.SFTP_FLAG_CREATE
                            | paramiko.sftp.SFTP_FLAG_APPEND)
        self._write_and_close(handle, data, None)

    def _write_and_close(self, handle: bytes, data: bytes, mode: Optional[int]) -> None:
        requests = [self._send(paramiko.sftp.CMD_WRITE, handle, paramiko.sftp.int64(offset),
                               data[offset:offset + self.CHUNK])
                    for offset in range(0, len(data), self.CHUNK)]
        if mode is not None:
            attributes = paramiko.SFTPAttributes()
            attributes.st_mode = mode
            requests.append(self._send(paramiko.sftp.CMD_FSETSTAT, handle, attributes))
        requests.append(self._send(paramiko.sftp.CMD_CLOSE, handle))
        self._answers_in_order(requests)


class _HeldShell:
    """One SSH session running `exec sh -s`, held for every command of an SshHost (see SshHost.run).

    Each command is one line on the shell's stdin, between two marker lines the shell prints
    itself: `<nonce>:<n>:begin`, then the command's output, then a newline and
    `<nonce>:<n>:end <exit status>`. The nonce is random per session and is never in any
    command's argv or environment, so no output can end a command early, whatever it prints (a
    marker of its own, no trailing newline); the newline printed before the end marker is not
    the command's and is taken off. What comes before a begin marker (a login script's output, a
    background process of an earlier command still writing) is not any command's and is dropped.

    Opened in a thread of its own with `background` (its login shell then starts while this
    process does other work), else here, under the caller's deadline."""

    COMMAND = "exec sh -s"

    def __init__(self, transport: "paramiko.Transport", timeout: float, background: bool) -> None:
        self.transport = transport
        self.timeout = timeout
        self.channel: Optional["paramiko.Channel"] = None
        self.commands = 0
        self.worked = False   # a command has begun in it: `sh -s` works here
        self._nonce = os.urandom(16).hex()
        self._unread = b""
        self._thread: Optional[threading.Thread] = None
        if background:
            self._thread = threading.Thread(target=self._open_quietly, name="ssh-held-shell", daemon=True)
            self._thread.start()
        else:
            self._open()

    def _open(self) -> None:
        channel = self.transport.open_session(timeout=self.timeout)
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(self.timeout)
            channel.exec_command(self.COMMAND)
        except BaseException:
            channel.close()
            raise
        self.channel = channel

    def _open_quietly(self) -> None:
        try:
            self._open()
        except ssh_errors() as exc:   # no held shell then: the first command opens one
            log.debug("    no held SSH shell: %s", exc)

    def usable_on(self, transport: "paramiko.Transport") -> bool:
        """Opened, on this (live) connection, and its shell still there."""
        if self._thread is not None:
            self._thread.join(self.timeout + 1)
            if self._thread.is_alive():
                return False
        channel = self.channel
        return (channel is not None and transport is self.transport and transport.is_active()
                and not channel.closed and not channel.eof_received and not channel.exit_status_ready())

    def run(self, command: str) -> Optional[Tuple[int, str]]:
        """(exit status, output) of `command`, a line of shell (words quoted with shlex); exit
        status -1 if the session ended during the command, None if it ended before the command
        began. paramiko's errors if the channel fails."""
        channel = self.channel
        assert channel is not None
        self.commands += 1
        mark = f"{self._nonce}:{self.commands}"
        # In `( ... )`, a subshell (a child of the held shell): whatever the command does to its
        # shell (cd, export, set, trap, umask, exec, exit) ends with that child, so every command
        # starts from the state the first one did, and the held shell is always there to print the
        # end marker. stdin from /dev/null: else a command that reads stdin would read the held
        # shell's own, the channel, and eat the next command's line. stderr into stdout, as one
        # session's combined output was. The newline before `)` ends the command's line whatever it is.
        line = (f"printf '%s\\n' {mark}:begin; ( {command}\n) </dev/null 2>&1; "
                f"printf '\\n%s %d\\n' {mark}:end $?\n")
        channel.sendall(line.encode())
        begin, end = f"{mark}:begin\n".encode(), f"\n{mark}:end ".encode()
        data, self._unread = self._unread, b""
        began, searched = False, 0
        while True:
            if not began:
                found = data.find(begin)
                if found >= 0:
                    began, data, searched = True, data[found + len(begin):], 0
                    self.worked = True
            if began:
                found = data.find(end, searched)
                if found >= 0 and b"\n" in data[found + len(end):]:
                    status, self._unread = data[found + len(end):].split(b"\n", 1)
                    output = data[:found].decode("utf-8", "replace")
                    # `printf %d $?` prints a number; anything else is a session not to trust (-1).
                    return (int(status), output) if status.isdigit() else (-1, output)
                # The next search starts where the marker may begin (it may come in pieces).
                searched = found if found >= 0 else max(0, len(data) - len(end) + 1)
            chunk = channel.recv(65536)
            if not chunk:
                return (-1, data.decode("utf-8", "replace")) if began else None
            data += chunk

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(self.timeout + 1)
        if self.channel is not None:
            self.channel.close()


def _where(nginx: NginxSettings) -> str:
    return f"{nginx.nginx_ssh_user}@{nginx.nginx_host}:{nginx.nginx_ssh_port}"


def _open_client(nginx: NginxSettings, timeout: float, waiting: Callable[[], None] = lambda: None) -> paramiko.SSHClient:
    """Connect with key auth and a checked host key; every failure is a PreflightError.
    `waiting`: called right before the handshake, paramiko loaded (see SshHost.connect)."""
    host, port, user = nginx.nginx_host, nginx.nginx_ssh_port, nginx.nginx_ssh_user
    where = _where(nginx)
    known_hosts = nginx.nginx_ssh_known_hosts.expanduser()
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise PreflightError(f"cannot read NGINX_SSH_KNOWN_HOSTS={known_hosts}: {exc}") from exc
    # An unknown host key is refused, never learnt: a deploy must not trust a new machine silently.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    waiting()
    try:
        client.connect(host, port=port, username=user, key_filename=str(nginx.nginx_ssh_key),
                       look_for_keys=False, allow_agent=False, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout)
    except paramiko.BadHostKeyException as exc:
        raise PreflightError(f"nginx host {where}: host key does not match {known_hosts} "
                             f"(got {exc.key.get_name()} {exc.key.get_fingerprint().hex()})") from exc
    except paramiko.AuthenticationException as exc:
        raise PreflightError(f"nginx host {where}: key authentication failed with "
                             f"NGINX_SSH_KEY={nginx.nginx_ssh_key}") from exc
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise PreflightError(f"nginx host {where}: host key is not in NGINX_SSH_KNOWN_HOSTS="
                                 f"{known_hosts}; refusing an unknown host") from exc
        raise PreflightError(f"nginx host {where}: ssh failed: {_ssh_reason(exc, timeout)}") from exc
    except (OSError, EOFError) as exc:
        raise PreflightError(f"nginx host {where} is unreachable: {_ssh_reason(exc, timeout)}") from exc
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
    return client


def _direct_channel(transport: paramiko.Transport, host: str, port: int, timeout: float) -> socket.socket:
    """A direct-tcpip channel to host:port; a live connection that gave none within `timeout`
    raises socket.timeout, as a local connect would."""
    try:
        channel = transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
    except paramiko.ChannelException:
        raise
    except paramiko.SSHException as exc:
        if transport.is_active():   # "Timeout opening channel."; else the connection is gone
            raise socket.timeout(f"no channel within {timeout:g}s") from exc
        raise
    except (EOFError, OSError):
        _settle(transport)   # the request could not be sent: paramiko marks the loss a moment later
        raise
    channel.settimeout(timeout)
    # A paramiko Channel is not a socket.socket, but it has what http.client uses of one (sendall,
    # recv, makefile, settimeout, close): the one place the interface's socket type is stretched.
    return channel  # type: ignore[return-value]


def _settle(transport: paramiko.Transport, wait: float = 1.0) -> None:
    """After a failed command: paramiko closes the channels of a lost connection a moment before
    it marks the transport inactive. Wait for that, so the next operation connects again instead
    of using a transport that is already gone."""
    deadline = time.monotonic() + wait
    while transport.is_active() and time.monotonic() < deadline:
        time.sleep(0.02)


def _text(part: str, path: str, data: bytes) -> str:
    """Where the nginx host's bytes become text: UTF-8, or NotText naming the file and the first
    byte that is not (never a UnicodeDecodeError: each reader decides what such a file means)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotText(part, path, data, exc) from exc


def _regular_size(part: str, path: str, mode: Optional[int], size: int) -> int:
    """`size`, if what is at `path` is a file (a server that sends no mode is taken at its word)."""
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise NginxHostFailed(part, f"looking at {path}", f"it is {kind}, not a file")
    return size


def _is_transport_error(exc: BaseException) -> bool:
    """A socket failure (timeout, reset), as opposed to an SFTP status such as 'Failure'."""
    return isinstance(exc, (socket.timeout, ConnectionError, EOFError, paramiko.SSHException))


def _ssh_reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, socket.timeout):
        return f"no answer within {timeout:g}s (NETWORK_TIMEOUT)"
    if isinstance(exc, EOFError):
        return "the connection was closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text or type(exc).__name__


def _short(command: str, limit: int = 120) -> str:
    return command if len(command) <= limit else command[:limit - 3] + "..."


def connect(nginx: NginxSettings, timeout: float, waiting: Callable[[], None] = lambda: None) -> NginxHost:
    """The nginx host: over SSH when NGINX_HOST is set, else this machine. `timeout`: NETWORK_TIMEOUT.
    `waiting`: see SshHost.connect (a local host never calls it)."""
    assert not nginx.nginx_hosts, "connect one host at a time: NginxSettings.each()"
    if nginx.remote:
        return SshHost.connect(nginx, timeout, waiting)
    return LocalHost()


class Connecting:
    """`connect(nginx, timeout)` under way in a thread of its own, started before the rest of the tool
    is imported (cli.py): over SSH the handshake, the login and the SFTP subsystem's start are
    mostly the nginx host's work (sshd, the login shell), which then overlaps this process's
    imports instead of following them. On a saturated machine that is most of a second of a
    rollback (issue 15). `result()` gives the host, or raises what connecting raised, where
    `connect` would have raised it; `close()` closes a host nobody took."""

    def __init__(self, nginx: NginxSettings, timeout: float) -> None:
        self._host: Optional[NginxHost] = None
        self._error: Optional[BaseException] = None
        self._taken = False
        self._waiting = threading.Event()
        self._thread = threading.Thread(target=self._connect, args=(nginx, timeout), name="connect-nginx-host",
                                        daemon=True)
        self._thread.start()

    def _connect(self, nginx: NginxSettings, timeout: float) -> None:
        try:
            self._host = connect(nginx, timeout, self._waiting.set)
        except BaseException as exc:   # handed to the caller of result(), in the main thread
            self._error = exc
        finally:
            self._waiting.set()

    def wait_until_waiting(self) -> None:
        """Return once the connection waits on the network and the nginx host (paramiko loaded, the
        handshake begun), or has ended. Until then this process's CPU is the connection's: on a
        saturated machine a second thread importing beside paramiko's import (one interpreter
        lock) delayed the handshake by as much as it imported (issue 15). Bounded: what comes
        before is local work (loading paramiko, reading the known hosts)."""
        self._waiting.wait()

    def result(self) -> NginxHost:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._host is not None
        self._taken = True
        return self._host

    def close(self) -> None:
        if self._taken:
            return
        self._thread.join()
        if self._host is not None:
            self._host.close()
