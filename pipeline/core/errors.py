"""One error root, and the exit code each kind of failure maps to.

`cli.main` is the only place that turns these into exit codes and messages.
"""
from __future__ import annotations

from typing import Optional, Sequence

from pipeline.core.route import Route

# Documented in the README ("Exit codes"); keep the two in step.
EXIT_OK = 0
EXIT_DEPLOY_FAILED = 1   # the new release was not promoted; the working version still serves
EXIT_BAD_INPUT = 2       # bad setting, unknown command or flag; nothing was changed
EXIT_PREFLIGHT = 3       # docker engine, nginx host or network not usable; nothing was changed
EXIT_LOCKED = 4          # another deploy holds the lock
EXIT_NOTHING_TO_DO = 5   # promote with nothing staged, rollback with no previous release
EXIT_LIVE_UNVERIFIED = 6  # the new release failed verification and switching back failed: it serves
EXIT_BUG = 70            # an unexpected error: a bug in pipeline
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class PipelineError(Exception):
    """Root of every error pipeline reports to the user as one line."""

    exit_code = EXIT_DEPLOY_FAILED

    def detail(self) -> Sequence[str]:
        """Extra lines (log tails, command output) shown under the one-line message."""
        return ()


class SettingsError(PipelineError):
    """A setting is missing or malformed. Names the setting and the value."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, name: str, value: object, problem: str) -> None:
        self.name, self.value, self.problem = name, value, problem
        super().__init__(f"{name}={value!s}: {problem}" if value is not None else f"{name}: {problem}")


class UsageError(PipelineError):
    exit_code = EXIT_BAD_INPUT


class PreflightError(PipelineError):
    """Something outside pipeline is not usable; found before anything changed."""

    exit_code = EXIT_PREFLIGHT


class RouteRefused(PreflightError):
    """The probing side would reach a color's address only through a gateway, or not at all."""


class SwitchUnavailable(PreflightError):
    """The switch cannot say where traffic goes now (e.g. nginx's admin port does not answer)."""


class AdminUnavailable(SwitchUnavailable):
    """nginx's admin server did not give a usable answer: which color it serves is unknown."""

    def __init__(self, url: str, problem: str) -> None:
        self.url, self.problem = url, problem
        super().__init__(f"nginx admin {url}: {problem}")


class AdminTokenRefused(AdminUnavailable):
    """The admin token file is missing or unusable on the nginx host, or nginx refused its token."""

    def __init__(self, url: str, token_file: str, problem: str) -> None:
        self.token_file = token_file
        super().__init__(url, f"NGINX_ADMIN_TOKEN_FILE={token_file}: {problem}")


class AdminRefused(AdminUnavailable):
    """nginx's admin answered a change with an error (400: not an address list, 403: an address
    not allowed, 500: not stored): app-live.conf stored nothing, unlike a request whose answer was
    lost, which may have landed."""


class IncludeMismatch(SwitchUnavailable):
    """nginx reads a route's address at start from another file than the tool writes."""


class IncludeNotLoaded(SwitchUnavailable):
    """SWITCH_MODE=reload: the live include was written, but nginx was not seen loading it (a run
    killed between the write and the reload, a reload that did not apply): nginx may still serve
    what an older include named. `address` is what the include names."""

    def __init__(self, message: str, address: Optional[Route]) -> None:
        self.address = address
        super().__init__(message)


class HostsDisagree(SwitchUnavailable):
    """NGINX_HOSTS: the nginx hosts route the same traffic to different places (a switch that
    could not be undone on one of them, or a host set by hand): nothing is changed until they
    agree (exit 3). The message says what each serves."""


class LockHeld(PipelineError):
    exit_code = EXIT_LOCKED


class NothingToDo(PipelineError):
    exit_code = EXIT_NOTHING_TO_DO


class DeployFailed(PipelineError):
    """The release could not be made live; the working version keeps serving."""

    exit_code = EXIT_DEPLOY_FAILED

    def __init__(self, message: str, detail_lines: Sequence[str] = ()) -> None:
        super().__init__(message)
        self._detail = list(detail_lines)

    def detail(self) -> Sequence[str]:
        return self._detail


class BuildFailed(DeployFailed):
    def __init__(self, command: str, code: int, tail: Sequence[str]) -> None:
        super().__init__(f"build command `{command}` exited with {code}", tail)


class HealthCheckFailed(DeployFailed):
    def __init__(self, url: str, attempts: int, last: str, logs: Sequence[str] = ()) -> None:
        self.url, self.attempts, self.last = url, attempts, last
        super().__init__(
            f"{url} did not answer 200 after {attempts} attempts (last: {last})",
            [f"container log: {line}" for line in logs],
        )


class ContainerExited(DeployFailed):
    def __init__(self, name: str, state: str, logs: Sequence[str] = ()) -> None:
        self.name = name
        super().__init__(
            f"container {name} stopped while starting ({state})",
            [f"container log: {line}" for line in logs],
        )


class NotEnoughNodes(PreflightError):
    """More REPLICAS than swarm nodes that can take a task (at most one task of a color per node)."""

    def __init__(self, replicas: int, ready: Sequence[str], down: Sequence[str] = ()) -> None:
        self.replicas, self.ready, self.down = replicas, list(ready), list(down)
        names = ", ".join(self.ready) or "none"
        gone = f"; not ready: {', '.join(self.down)}" if self.down else ""
        super().__init__(f"REPLICAS={replicas} but only {len(self.ready)} swarm node(s) can run a task "
                         f"(ready: {names}{gone}); at most one task of a color runs per node")


class TaskFailed(DeployFailed):
    """A swarm task of the new release failed, restarted or was moved off its node while starting."""

    def __init__(self, service: str, task_id: str, node: str, state: str, logs: Sequence[str] = ()) -> None:
        self.service, self.task_id, self.node, self.state = service, task_id, node, state
        super().__init__(
            f"task {task_id[:12]} of service {service} on node {node} failed while starting ({state})",
            [f"task log: {line}" for line in logs],
        )


class RemoteCommandFailed(DeployFailed):
    """A command on the nginx host (test, reload) exited non-zero."""

    def __init__(self, command: str, code: int, output_tail: Sequence[str], what: str = "") -> None:
        self.command, self.code = command, code
        prefix = f"{what}: " if what else ""
        super().__init__(f"{prefix}`{command}` exited with {code}", list(output_tail))


class LiveSwitchFailed(DeployFailed):
    """Setting the new address failed; the include and nginx's address were put back."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; raised in the main thread so cleanup runs.

    Not an Exception, as KeyboardInterrupt is not: an `except PipelineError` (or `except
    Exception`) around a step must never swallow the signal and let the run carry on. Code that
    must clean up on a signal says so (`except Interrupted`, `except BaseException`, `finally`).
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    def detail(self) -> Sequence[str]:
        return ()


class InterruptedAfterSwitch(Interrupted):
    """SIGINT/SIGTERM held through the live switch: the new release serves, the old one runs."""


class OutsideFailure(DeployFailed):
    """A part outside pipeline failed while in use: `PART: ACTION: CAUSE` in one line.

    Raised by the adapters (engine.py, nginx_host.py, ...) `from` the library's exception, so the
    flows never see a docker, paramiko or requests type.
    """

    def __init__(self, part: str, action: str, cause: str, detail_lines: Sequence[str] = ()) -> None:
        self.part, self.action, self.cause = part, action, cause
        super().__init__(f"{part}: {action}: {cause}", detail_lines)


class EngineFailed(OutsideFailure):
    """The docker engine did not do what was asked (API error, connection lost, no answer)."""


class RegistryFailed(OutsideFailure):
    """The registry (reached through the docker engine) refused or did not answer."""


class NginxHostFailed(OutsideFailure):
    """A file or command on the nginx host failed: over SSH/SFTP, or on this machine."""


class NotText(NginxHostFailed):
    """A file on the nginx host holds bytes that are not UTF-8 (a hand edit, a line cut short by a
    full disk). Carries what was read, so a reader that can use the rest (the history, line by
    line) still can; read as a plain NginxHostFailed it is one line naming the file and the byte."""

    def __init__(self, part: str, path: str, data: bytes, error: UnicodeDecodeError) -> None:
        self.path, self.data, self.offset = path, data, error.start
        super().__init__(part, f"reading {path}",
                         f"not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})")


class SwitchIncomplete(DeployFailed):
    """A switch failed and could not be undone: the include may name the new release (reload
    mode), or nginx's balancer may send traffic to it (live mode). The flows leave its container
    running whenever a switch raises this; the message says what to do.

    `what` is the message without `todo`, what to do on one nginx host: with several hosts
    (fleet.FleetSwitch) that advice alone would leave them disagreeing, so the fleet says its own."""

    def __init__(self, message: str, detail_lines: Sequence[str] = (), todo: str = "") -> None:
        super().__init__(f"{message}{todo}", detail_lines)
        self.what = message


def tail(text: Optional[str], lines: int = 20) -> list[str]:
    """The last non-empty lines of a command's output, for error details."""
    if not text:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class ReleasePhaseFailed(DeployFailed):
    """RELEASE_COMMAND exited non-zero or ran past RELEASE_TIMEOUT; nothing was started or switched."""

    history_result = "release phase failed"


class SmokeFailed(DeployFailed):
    """SMOKE_COMMAND exited non-zero (or ran too long); nothing was switched."""


class HookFailed(DeployFailed):
    """A pre-deploy or pre-rollback hook exited non-zero, ran too long or could not start; the run
    stopped before changing anything. (A post hook's failure is a warning, never an error.)"""


class SwitchedBack(DeployFailed):
    """The new release failed verification; traffic is back on the old one."""

    history_result = "switched back"


class SwitchedBackAfterBug(Exception):
    """A bug in pipeline inside the verification window: traffic was put back on the old release
    first. Not a PipelineError: it is still a bug (exit 70, its traceback with --verbose)."""

    history_result = "switched back"


class LiveUnverified(PipelineError):
    """The new release failed verification (or verification could not go on, or was interrupted)
    and switching back failed too: the new release keeps the traffic, unproven, while the old one
    still runs. Not exit 1, which says the working version still serves; `history` marks the
    release live. The message says what serves and what to run."""

    exit_code = EXIT_LIVE_UNVERIFIED
    history_result = "live unverified"

    def __init__(self, message: str, color: str, detail_lines: Sequence[str] = ()) -> None:
        self.color = color
        super().__init__(message)
        # Why switching back failed (e.g. the reload command's own output), under the line.
        self._detail = list(detail_lines)

    def detail(self) -> Sequence[str]:
        return self._detail


class SwitchedBackOnSignal(Interrupted):
    """SIGINT/SIGTERM during verification: traffic was put back on the old release first."""

    history_result = "switched back"

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(signum)
        self.args = (f"{self.args[0]} during verification; {message}",)
