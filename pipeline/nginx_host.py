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
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Protocol, Sequence

import paramiko

from .errors import PreflightError
from .settings import Settings, without_secrets

log = logging.getLogger("pipeline")

COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True)
class CommandResult:
    argv: Sequence[str]
    code: int
    output: str   # stdout and stderr together, for error messages

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


class NginxHost(Protocol):
    description: str

    def read_text(self, path: str) -> Optional[str]: ...
    def write_text_atomic(self, path: str, text: str) -> None: ...
    def create_exclusive(self, path: str, text: str) -> bool: ...
    def append_text(self, path: str, text: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def run(self, argv: Sequence[str]) -> CommandResult: ...
    def run_steps(self, steps: Sequence[Sequence[str]]) -> List[CommandResult]: ...
    def open_channel(self, host: str, port: int, timeout: float) -> socket.socket: ...
    def close(self) -> None: ...


def _temp_name(path: str) -> str:
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name}.{uuid.uuid4().hex[:8]}.tmp"


class LocalHost:
    """nginx on this machine (NGINX_HOST empty)."""

    description = "this machine"

    def read_text(self, path: str) -> Optional[str]:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return None

    def write_text_atomic(self, path: str, text: str) -> None:
        temp = _temp_name(path)
        with open(temp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)

    def create_exclusive(self, path: str, text: str) -> bool:
        # Written aside, then linked: link() fails if the name exists, so the file appears whole or not at all.
        temp = _temp_name(path)
        Path(temp).write_text(text)
        try:
            os.link(temp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)

    def append_text(self, path: str, text: str) -> None:
        with open(path, "a") as handle:
            handle.write(text)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

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
    """nginx on another machine, over SSH with key auth and a checked host key."""

    def __init__(self, client: paramiko.SSHClient, description: str) -> None:
        self.client = client
        self.description = description
        self._sftp: Optional[paramiko.SFTPClient] = None

    @classmethod
    def connect(cls, settings: Settings, timeout: float = 10.0) -> "SshHost":
        host, port, user = settings.nginx_host, settings.nginx_ssh_port, settings.nginx_ssh_user
        where = f"{user}@{host}:{port}"
        known_hosts = settings.nginx_ssh_known_hosts.expanduser()
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise PreflightError(f"cannot read NGINX_SSH_KNOWN_HOSTS={known_hosts}: {exc}") from exc
        # An unknown host key is refused, never learnt: a deploy must not trust a new machine silently.
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(host, port=port, username=user, key_filename=str(settings.nginx_ssh_key),
                           look_for_keys=False, allow_agent=False, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout)
        except paramiko.BadHostKeyException as exc:
            raise PreflightError(f"nginx host {where}: host key does not match {known_hosts} "
                                 f"(got {exc.key.get_name()} {exc.key.get_fingerprint().hex()})") from exc
        except paramiko.AuthenticationException as exc:
            raise PreflightError(f"nginx host {where}: key authentication failed with "
                                 f"NGINX_SSH_KEY={settings.nginx_ssh_key}") from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise PreflightError(f"nginx host {where}: host key is not in NGINX_SSH_KNOWN_HOSTS="
                                     f"{known_hosts}; refusing an unknown host") from exc
            raise PreflightError(f"nginx host {where}: ssh failed: {exc}") from exc
        except (OSError, EOFError) as exc:
            raise PreflightError(f"nginx host {where} is unreachable: {exc}") from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return cls(client, where)

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def read_text(self, path: str) -> Optional[str]:
        try:
            with self.sftp.open(path, "r") as handle:
                return handle.read().decode()
        except FileNotFoundError:
            return None

    def write_text_atomic(self, path: str, text: str) -> None:
        temp = _temp_name(path)
        with self.sftp.open(temp, "w") as handle:
            handle.write(text.encode())
        self.sftp.chmod(temp, 0o644)
        # posix-rename@openssh.com replaces the target in one step, like rename(2).
        self.sftp.posix_rename(temp, path)

    def create_exclusive(self, path: str, text: str) -> bool:
        # Plain SFTP rename refuses an existing target (OpenSSH does link+unlink): an atomic create.
        temp = _temp_name(path)
        with self.sftp.open(temp, "w") as handle:
            handle.write(text.encode())
        try:
            self.sftp.rename(temp, path)
            return True
        except OSError:
            return False
        finally:
            try:
                self.sftp.remove(temp)
            except OSError:
                pass

    def append_text(self, path: str, text: str) -> None:
        with self.sftp.open(path, "a") as handle:
            handle.write(text.encode())

    def remove(self, path: str) -> None:
        try:
            self.sftp.remove(path)
        except FileNotFoundError:
            pass

    def run(self, argv: Sequence[str]) -> CommandResult:
        command = shlex.join(argv)
        try:
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise paramiko.SSHException("connection closed")
            channel = transport.open_session(timeout=COMMAND_TIMEOUT)
            channel.set_combine_stderr(True)
            channel.settimeout(COMMAND_TIMEOUT)
            channel.exec_command(command)
            output = channel.makefile("rb").read().decode("utf-8", "replace")
            code = channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError) as exc:
            return CommandResult(argv, 255, f"ssh: {exc}")
        return CommandResult(argv, code, output)

    def run_steps(self, steps: Sequence[Sequence[str]]) -> List[CommandResult]:
        """Run commands in order until one fails, in one SSH round trip.

        Each command costs a session of its own otherwise (0.2-0.3 s under load), and `nginx -t`
        then `nginx -s reload` sit between a healthy container and nginx serving it. Every word is
        quoted with shlex; a marker line after each command carries its exit code back.
        """
        marker = f"__pipeline_rc_{uuid.uuid4().hex}="
        script = "; ".join(
            f"{shlex.join(argv)} 2>&1; rc=$?; echo; echo {marker}$rc; [ $rc -eq 0 ] || exit 0"
            for argv in steps
        )
        combined = self.run(["sh", "-c", script])
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
        """A direct-tcpip channel: reach a port on the nginx host's loopback without exposing it."""
        transport = self.client.get_transport()
        assert transport is not None
        channel = transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        channel.settimeout(timeout)
        return channel  # type: ignore[return-value]

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()


def check_writable(host: NginxHost, settings: Settings) -> None:
    """Before a flow changes anything: the includes, the lock and the history live in the
    includes' directories, which must exist and take a new file on the nginx host."""
    for name, path in (("NGINX_INCLUDE", settings.nginx_include),
                       ("NGINX_PREVIEW_INCLUDE", settings.nginx_preview_include)):
        if path is None:
            continue
        probe = _temp_name(str(path))   # hidden, unique, removed at once
        try:
            host.create_exclusive(probe, "")
            host.remove(probe)
        except OSError as exc:
            raise PreflightError(f"{name}={path}: cannot write in {path.parent} on the nginx host "
                                 f"({host.description}): {exc.strerror or exc}") from exc


def connect(settings: Settings) -> NginxHost:
    if settings.remote:
        return SshHost.connect(settings)
    return LocalHost()
