"""The nginx host as the rest of the program sees it: files and commands, wherever nginx runs.

nginx_host.py has the two implementations (this machine, or SSH); the switch, the lock, the
history and the release record speak only this interface.
"""
from __future__ import annotations

import os
import shlex
import socket
from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence

from pipeline.core.errors import NginxHostFailed, PreflightError
from pipeline.core.settings import Settings


@dataclass(frozen=True)
class CommandResult:
    argv: Sequence[str]
    code: int
    output: str   # stdout and stderr together, for error messages

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


class NginxHost(Protocol):
    """Files and commands on the nginx host; a failure of the host or the connection to it is
    NginxHostFailed naming the part, the action and the cause. read_text is None for a missing
    file and raises NotText for bytes that are not UTF-8; size is None for a missing file and
    refuses anything but a file. open_channel (health probes, admin requests) connects again after
    a lost connection as the rest does; a target that refuses or does not answer is the caller's
    answer (OSError, or paramiko.ChannelException over SSH)."""

    description: str

    def read_text(self, path: str) -> Optional[str]: ...
    def write_text_atomic(self, path: str, text: str) -> None: ...
    def create_exclusive(self, path: str, text: str) -> bool: ...
    def append_text(self, path: str, text: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def size(self, path: str) -> Optional[int]: ...
    def read_bytes(self, path: str, offset: int, limit: int) -> bytes: ...
    def run(self, argv: Sequence[str]) -> CommandResult: ...
    def run_steps(self, steps: Sequence[Sequence[str]]) -> List[CommandResult]: ...
    def open_channel(self, host: str, port: int, timeout: float) -> socket.socket: ...
    def close(self) -> None: ...


def temp_name(path: str) -> str:
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name}.{os.urandom(4).hex()}.tmp"


def check_writable(host: NginxHost, settings: Settings) -> None:
    """Before a flow changes anything: the includes, the lock and the history live in the
    includes' directories, which must exist and take a new file on the nginx host, and the
    history must take a new line (a run that cannot record itself does not start)."""
    for name, path in (("NGINX_INCLUDE", settings.nginx_include),
                       ("NGINX_PREVIEW_INCLUDE", settings.nginx_preview_include)):
        if path is None:
            continue
        probe = temp_name(str(path))   # hidden, unique, removed at once
        try:
            host.create_exclusive(probe, "")
            host.remove(probe)
        except NginxHostFailed as exc:
            raise PreflightError(f"{name}={path}: cannot write in {path.parent} on the nginx host "
                                 f"({host.description}): {exc.cause}") from exc
    history = str(settings.history_path())
    try:
        host.append_text(history, "")   # creates it if missing, changes nothing otherwise
    except NginxHostFailed as exc:
        raise PreflightError(f"history {history}: cannot append on the nginx host ({host.description}): "
                             f"{exc.cause}") from exc
