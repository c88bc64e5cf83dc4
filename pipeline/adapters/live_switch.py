"""SWITCH_MODE=live: move traffic by telling nginx's Lua balancer the new address; never reload.

nginx runs nginx/live/app-live.conf: a balancer that takes each route's address from a shared
dict, and an admin server on the nginx host's loopback that sets and reports it:

    PUT /pipeline/live     body IP:PORT[,IP:PORT...]  -> 200 and the same (400: not a list of
                                                 1-32 distinct addresses; 403: one is not allowed)
    GET /pipeline/live                    -> 200 what was set, or 404 when nothing is set
    (the same for /pipeline/preview)

One address is a container of the single engine; several are a swarm color's tasks, which
nginx's balancer takes in turn, trying the next one when a connection fails.

Every request carries `Authorization: Bearer TOKEN`, else nginx answers 401. The token is read
from NGINX_ADMIN_TOKEN_FILE on the nginx host (over SFTP when it is remote), once per run, and is
kept in a `Secret` so it never reaches a log line or an error message. A 401 or an unusable token
file is a preflight error (exit 3) naming that file. nginx stores only addresses inside the
networks app-live.conf allows (`allowed_networks`): a 403 names the refused address (one refused
address refuses the whole list).

A switch writes the include first (atomically: nginx reads it when it starts or reloads, so it
stays the truth for restarts), then PUTs the address and GETs it back. It never runs the reload
command, so no nginx worker restarts and no client connection is closed. On any failure the
include is put back and so is the address nginx served before.

`current()` reports what nginx's admin says, not what the include says. The two differ only when
a switch was cut short between writing the include and the PUT (e.g. SIGKILL); then nginx still
serves the old color, and deciding by the include would make the next deploy replace the
container that carries the traffic. When the admin does not answer, `current()` fails (exit 3,
nothing changed) rather than guess.

The admin is reached through `NginxHost.open_channel`: a plain socket when nginx is local, a
direct-tcpip channel of the SSH connection when it is remote, so the admin port is never exposed.
"""
from __future__ import annotations

import http.client
import logging
import re
import socket
from typing import Dict, NoReturn, Optional, Tuple
from urllib.parse import urlsplit

import paramiko
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from pipeline.core.answers import AnswerReader, StatsReader
from pipeline.core.clock import SYSTEM, Clock
from pipeline.core.decide import parse_include, parse_route, render_route
from pipeline.core.route import Route, shown
from pipeline.core.errors import (AdminRefused, AdminTokenRefused, AdminUnavailable, IncludeMismatch, Interrupted,
                     LiveSwitchFailed, NginxHostFailed, PipelineError, SwitchIncomplete)
from pipeline.log import register_secret
from pipeline.adapters.channel_http import ChannelConnection
from pipeline.core.host import NginxHost
from pipeline.core.maintenance import Maintenance, admin_body, describe, parse_admin_answer, with_flag
from pipeline.core.settings import Secret, SwitchSettings
from pipeline.core.switch import LIVE, PREVIEW, IncludeFiles

log = logging.getLogger("pipeline")

FILES = "files"           # GET /pipeline/files: "ROUTE PATH" lines, the includes nginx reads
MAINTENANCE = "maintenance"   # GET/PUT/DELETE /pipeline/maintenance: the 503 page of maintenance mode
MAX_MAINTENANCE_BYTES = 16 * 1024   # "on SECONDS\n" and a page of at most MAX_PAGE_BYTES
STATS = "stats"           # GET /pipeline/stats: "IP:PORT STATUS COUNT" lines (pipeline/flows/verify.py)
MAX_STATS_BYTES = 64 * 1024   # at most 1024 counters of a few dozen bytes
ADMIN_TIMEOUT = 5.0       # per request: connect (or channel open), send, answer
ADMIN_ATTEMPTS = 3        # GET and PUT are idempotent, so a dropped connection is simply retried
ADMIN_RETRY_WAIT = 0.3
MAX_ANSWER_BYTES = 1024   # the admin answers a few bytes; anything longer is not our admin
# What app-live.conf accepts as a token (RFC 6750 token68, at least 32 characters); surrounding
# whitespace, such as the newline `openssl rand -hex 32 > FILE` writes, is not part of it.
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/-]{32,}=*")

# Transport failures: refused or timed-out sockets, an SSH channel that would not open (or the
# nginx host's own translation of that), a broken or non-HTTP answer.
_TRANSPORT_ERRORS = (OSError, EOFError, http.client.HTTPException, NginxHostFailed)


def _is_transport_error(exc: BaseException) -> bool:
    # paramiko's errors asked last: naming them loads paramiko (deferred, see pipeline/__init__.py),
    # which with nginx on this machine only a failure that is none of the others comes to.
    return isinstance(exc, _TRANSPORT_ERRORS) or isinstance(exc, paramiko.SSHException)


class NginxAdmin:
    """The admin protocol of nginx/live/app-live.conf, spoken over `host.open_channel`."""

    def __init__(self, host: NginxHost, url: str, token_file: str, timeout: float = ADMIN_TIMEOUT,
                 attempts: int = ADMIN_ATTEMPTS, retry_wait: float = ADMIN_RETRY_WAIT, clock: Clock = SYSTEM) -> None:
        parts = urlsplit(url)
        assert parts.hostname, f"NGINX_ADMIN_URL {url!r} was not validated"
        self.host = host
        self.url = url
        self.token_file = token_file
        self._token: Optional[Secret] = None
        self.address = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self.attempts = attempts
        self.retry_wait = retry_wait
        self.clock = clock   # the run's clock: the wait between attempts

    def get(self, route: str) -> Optional[Route]:
        """The route's address(es) as nginx uses them now; None when nginx has none set."""
        status, body = self._request("GET", route)
        if status == 404:
            return None
        if status != 200:
            raise AdminUnavailable(self.url, f"GET {self._path(route)} answered {status} {body[:80]!r}")
        targets = parse_route(body)
        if targets is None:
            raise AdminUnavailable(self.url, f"GET {self._path(route)} answered {body[:80]!r}, "
                                             f"not IP:PORT[,IP:PORT...]")
        return targets

    def files(self) -> Dict[str, str]:
        """The include file nginx reads each route's address from when it starts or reloads."""
        status, body = self._request("GET", FILES)
        found = dict(line.split(" ", 1) for line in body.splitlines() if " " in line)
        if status != 200 or not {LIVE, PREVIEW} <= found.keys():
            raise AdminUnavailable(self.url, f"GET {self._path(FILES)} answered {status} {body[:80]!r}; "
                                             f"nginx runs an app-live.conf older than this tool")
        return found

    def stats(self) -> str:
        """What nginx answered per upstream address and status since it started: the raw lines."""
        status, body = self._request("GET", STATS, limit=MAX_STATS_BYTES)
        if status != 200:
            raise AdminUnavailable(self.url, f"GET {self._path(STATS)} answered {status} {body[:80]!r}; "
                                             f"verification needs an app-live.conf with /pipeline/stats")
        return body

    def put(self, route: str, targets: Route) -> None:
        try:
            text = render_route(targets)
        except ValueError as exc:   # more than nginx takes: said before anything is sent
            raise AdminUnavailable(self.url, f"cannot set the {route} route to {shown(targets)}: {exc}") from exc
        status, body = self._request("PUT", route, text)
        if status == 403:
            raise AdminRefused(self.url, f"nginx refused {shown(targets)} for the {route} route: "
                                         f"{body.strip()[:160]}; it takes only addresses inside "
                                         f"allowed_networks in app-live.conf (set it to DEPLOY_SUBNET, or "
                                         f"the swarm nodes' network)")
        if status != 200:   # app-live.conf answers 200 right after storing: anything else stored nothing
            raise AdminRefused(self.url, f"PUT {self._path(route)} {shown(targets)} answered {status} "
                                         f"{body[:80]!r}")

    def maintenance(self) -> Optional[Maintenance]:
        """Whether the public server answers with the maintenance page (and which), or None."""
        status, body = self._request("GET", MAINTENANCE, limit=MAX_MAINTENANCE_BYTES)
        if status != 200:
            raise AdminUnavailable(self.url, f"GET {self._path(MAINTENANCE)} answered {status} {body[:80]!r}; "
                                             f"maintenance mode needs an app-live.conf with /pipeline/maintenance")
        try:
            return parse_admin_answer(body)
        except ValueError as exc:
            raise AdminUnavailable(self.url, f"GET {self._path(MAINTENANCE)}: {exc}") from exc

    def set_maintenance(self, flag: Optional[Maintenance]) -> None:
        """PUT the page (on) or DELETE it (off)."""
        if flag is None:
            status, body = self._request("DELETE", MAINTENANCE)
        else:
            status, body = self._request("PUT", MAINTENANCE, admin_body(flag))
        if status != 200:
            raise AdminRefused(self.url, f"{'DELETE' if flag is None else 'PUT'} {self._path(MAINTENANCE)} "
                                         f"answered {status} {body[:80]!r}")

    @staticmethod
    def _path(route: str) -> str:
        return f"/pipeline/{route}"

    def token(self) -> Secret:
        """The admin token from NGINX_ADMIN_TOKEN_FILE on the nginx host, read on first use."""
        if self._token is None:
            self._token = self._read_token()
        return self._token

    def _read_token(self) -> Secret:
        def refused(problem: str) -> AdminTokenRefused:
            return AdminTokenRefused(self.url, self.token_file, problem)

        try:
            text = self.host.read_text(self.token_file)
        except (NginxHostFailed, OSError, ValueError) as exc:   # ValueError: not UTF-8 text
            raise refused(f"cannot read it on the nginx host ({self.host.description}): "
                          f"{getattr(exc, 'cause', None) or getattr(exc, 'strerror', None) or exc}") from exc
        if text is None:
            raise refused(f"no such file on the nginx host ({self.host.description}); create it as "
                          f"docs/live-mode.md says (`openssl rand -hex 32`), then `nginx -s reload`")
        token = text.strip()
        if not token:
            raise refused("the file is empty; put a token in it (`openssl rand -hex 32`), then `nginx -s reload`")
        if not _TOKEN_RE.fullmatch(token):
            # Never the value itself: it may be a token with one typo.
            raise refused("does not hold one token of 32 or more letters and digits "
                          "(make one with `openssl rand -hex 32`)")
        register_secret(token)   # masked in every log line and output from here on
        return Secret(token)

    def _request(self, method: str, route: str, body: Optional[str] = None,
                 limit: int = MAX_ANSWER_BYTES) -> Tuple[int, str]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info("    nginx admin %s %s, attempt %d: %s; trying again", method, self._path(route),
                     state.attempt_number, exc)

        self.token()   # a token file problem is said once, before any attempt
        retrying = Retrying(stop=stop_after_attempt(self.attempts), wait=wait_fixed(self.retry_wait),
                            sleep=self.clock.sleep, retry=retry_if_exception(_is_transport_error),
                            before_sleep=before_sleep)
        try:
            status, answer = retrying(self._exchange, method, self._path(route), body, limit)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise AdminUnavailable(self.url, f"{method} {self._path(route)} failed {self.attempts} times, "
                                             f"last: {_describe(last)}; SWITCH_MODE=live needs nginx "
                                             f"running nginx/live/app-live.conf, its admin server at "
                                             f"NGINX_ADMIN_URL") from last
        if status == 401:
            raise AdminTokenRefused(self.url, self.token_file,
                                    f"nginx refused the token ({method} {self._path(route)} answered 401 "
                                    f"{answer.strip()[:80]!r}); it must be the token nginx read when it "
                                    f"last started or reloaded: after changing the file, run `nginx -s reload`")
        return status, answer

    def _exchange(self, method: str, path: str, body: Optional[str],
                  limit: int = MAX_ANSWER_BYTES) -> Tuple[int, str]:
        connection = ChannelConnection(self.host, self.address, self.port, self.timeout)
        try:
            headers = {"Connection": "close", "Authorization": f"Bearer {self.token().reveal()}"}
            if body is not None:
                headers["Content-Type"] = "text/plain"
            connection.request(method, path, body=body.encode() if body is not None else None, headers=headers)
            response = connection.getresponse()
            data = response.read(limit + 1)
            if len(data) > limit:
                raise http.client.HTTPException(f"answer longer than {limit} bytes")
            return response.status, data.decode("utf-8", "replace")
        finally:
            connection.close()


def _describe(exc: Optional[BaseException]) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, NginxHostFailed):
        return str(exc)
    if isinstance(exc, paramiko.ChannelException):
        return f"the nginx host could not connect ({exc.text})"
    return f"{type(exc).__name__}: {exc}" if exc else "unknown"


class LiveSwitch:
    """Write the include, set the address over the admin port, read it back; never reload."""

    mode = "live"
    settle_seconds = 0.0   # the shared dict is read by every worker on the next request

    def __init__(self, host: NginxHost, switch: SwitchSettings, timeout: float,
                 admin: Optional[NginxAdmin] = None) -> None:
        self.settings = switch
        self.includes = IncludeFiles(host, switch)
        # NETWORK_TIMEOUT (`timeout`) bounds each admin request; the admin answers in
        # milliseconds, so its own 5 s cap applies below that.
        self.admin = admin or NginxAdmin(host, switch.nginx_admin_url, str(switch.nginx_admin_token_file),
                                         timeout=min(ADMIN_TIMEOUT, timeout))

    def check(self) -> None:
        """The include files the tool writes must be the ones nginx reads when it starts:
        otherwise a restarted nginx would serve whatever an old file says."""
        reads = self.admin.files()
        for route, setting in ((LIVE, "NGINX_INCLUDE"), (PREVIEW, "NGINX_PREVIEW_INCLUDE")):
            ours = self.includes.path(route)
            if ours is not None and reads[route] != ours:
                raise IncludeMismatch(f"{setting}={ours}, but nginx reads the {route} route from "
                                      f"{reads[route]} when it starts (app-live.conf, init_by_lua_block); "
                                      f"a restarted nginx would not serve what the tool sets: make them the same")

    def current(self, route: str) -> Optional[Route]:
        """What nginx serves the route from (one address or several), or None."""
        served = self.admin.get(route)
        if self.includes.path(route):
            written = parse_include(self.includes.read(route))
            if written != (served or ()):
                # A switch cut short after writing the include, or someone set nginx by hand.
                # nginx is what carries the traffic, so it decides.
                log.warning("    the %s include says %s but nginx serves %s; going by nginx",
                            route, shown(written), shown(served))
        return served

    def maintenance(self) -> Optional[Maintenance]:
        """What nginx's balancer holds (its shared dict: kept across reloads)."""
        return self.admin.maintenance()

    def set_maintenance(self, flag: Optional[Maintenance]) -> None:
        """The live include first (nginx restores the flag from it when it starts or reloads), then
        the admin, read back; on failure both are put back."""
        try:
            served_before = self.admin.maintenance()
        except AdminUnavailable as exc:
            raise LiveSwitchFailed(f"cannot turn maintenance mode {describe(flag)}: {exc}; nothing was changed") from exc
        include_before = self.includes.read(LIVE)
        if include_before is not None:
            self.includes.write(LIVE, with_flag(include_before, flag, self.settings.nginx_include_form))
        try:
            self.admin.set_maintenance(flag)
            now = self.admin.maintenance()
            if now != flag:
                raise AdminUnavailable(self.admin.url, f"set maintenance {describe(flag)} but nginx reports "
                                                       f"{describe(now)}")
        except (PipelineError, Interrupted) as exc:
            problems = []
            if include_before is not None:
                try:
                    self.includes.write(LIVE, include_before)
                except NginxHostFailed as put_back:
                    problems.append(f"putting the include back failed ({put_back})")
            try:
                self.admin.set_maintenance(served_before)
            except AdminUnavailable as put_back:
                problems.append(f"setting nginx back to maintenance {describe(served_before)} failed "
                                f"({put_back.problem})")
            if isinstance(exc, Interrupted):
                raise
            left = ("; ".join(problems) + ": run `python -m pipeline status`") if problems else \
                f"put maintenance mode back {describe(served_before)}"
            raise LiveSwitchFailed(f"nginx did not take maintenance mode {describe(flag)}: {exc}; {left}") from exc

    def route_to(self, route: str, targets: Route) -> None:
        self.prepare(route, targets).commit()

    def prepare(self, route: str, targets: Route) -> "LivePrepared":
        """The checks before the PUT (the addresses are ones nginx takes, the admin answers with
        the token) and the include written, nginx still serving the old address."""
        try:
            render_route(targets)   # more addresses than nginx takes, or one twice: before anything changes
        except ValueError as exc:
            raise LiveSwitchFailed(f"cannot switch the {route} route to {shown(targets)}: {exc}; "
                                   f"nothing was changed") from exc
        try:
            served_before = self.admin.get(route)
        except AdminUnavailable as exc:
            raise LiveSwitchFailed(f"cannot switch the {route} route: {exc}; nothing was changed") from exc
        include_before = self.includes.read(route)
        self.includes.write(route, self.includes.render(route, targets, include_before))
        return LivePrepared(self, route, targets, served_before, include_before)

    def commit(self, route: str, targets: Route, served_before: Optional[Route],
               include_before: Optional[str]) -> None:
        """The PUT, read back; on failure the include and nginx's old address put back."""
        landed = True   # the PUT may have landed until nginx says it stored nothing
        try:
            try:
                self.admin.put(route, targets)
            except (AdminRefused, AdminTokenRefused):
                landed = False
                raise
            served_now = self.admin.get(route)
            if not served_now or served_now != tuple(targets):
                raise AdminUnavailable(self.admin.url, f"set {shown(targets)} but nginx reports {shown(served_now)}")
        except (PipelineError, Interrupted) as exc:
            self._undo(route, targets, include_before, served_before, landed, exc)
        log.info("    nginx %s route: %s -> %s (no reload)", route, shown(served_before), shown(targets))

    def undo(self, route: str, targets: Route, served_before: Optional[Route], include_before: Optional[str],
             put: bool) -> None:
        """A prepared (`put`: and committed) switch undone: nginx's old address, then the include."""
        problems = []
        if put and served_before is None:
            problems.append(f"nginx had no address before, so none can be set back: it still sends the {route} "
                            f"traffic to {shown(targets)}")
        elif put and served_before is not None:
            try:
                self.admin.put(route, served_before)
            except AdminUnavailable as exc:
                problems.append(f"setting nginx back to {shown(served_before)} failed ({exc.problem}): it may "
                                f"still send the {route} traffic to {shown(targets)}")
        try:
            self.includes.write(route, include_before)
        except NginxHostFailed as exc:
            problems.append(f"putting the old include back failed ({exc}): {self.includes.path(route)} names "
                            f"{shown(targets)}, which nginx serves if it restarts or reloads")
        if problems:
            raise SwitchIncomplete(f"{'; '.join(problems)} (nginx admin {self.admin.url})")

    def _undo(self, route: str, targets: Route, include_before: Optional[str], served_before: Optional[Route],
              landed: bool, why: BaseException) -> NoReturn:
        """Put the include back and, when the PUT may have landed (its answer or the read-back
        failed), nginx's old address too; a signal is raised on once that is done. When nginx may
        be left on the new address, or the include on it, SwitchIncomplete: the flow must then
        keep the new release running."""
        failed = f"nginx did not take {shown(targets)} for the {route} route: {why}"
        include_problem = nginx_problem = None
        try:
            self.includes.write(route, include_before)
        except NginxHostFailed as exc:
            include_problem = str(exc)
        if landed and served_before is None:
            nginx_problem = "nginx had no address before, so none can be set back"
        elif landed and served_before is not None:
            try:
                self.admin.put(route, served_before)
            except AdminUnavailable as exc:
                nginx_problem = f"setting nginx back to {shown(served_before)} failed too ({exc.problem})"
        if isinstance(why, Interrupted):   # a signal outside a critical step: undone as far as it goes
            raise why
        if nginx_problem is None and include_problem is None:
            done = (f"and nginx's address {shown(served_before)}" if landed else
                    f"(nginx kept {shown(served_before)})" if served_before else
                    "(nginx had no address before, so there is none to restore)")
            raise LiveSwitchFailed(f"{failed}; put the old include back {done}") from why
        raise SwitchIncomplete(self._left_on_new(route, targets, include_before, failed, include_problem,
                                                 nginx_problem)) from why

    def _left_on_new(self, route: str, targets: Route, include_before: Optional[str], failed: str,
                     include_problem: Optional[str], nginx_problem: Optional[str]) -> str:
        """What a switch that could not be undone left, and what to run."""
        path, new = self.includes.path(route), shown(targets)
        said = [failed]
        if nginx_problem is not None:
            said.append(f"then {nginx_problem}: nginx may still send the {route} traffic to {new}")
        if include_problem is not None:
            said.append(f"putting the old include back failed ({include_problem}): {path} names {new}, "
                        f"which nginx serves if it restarts or reloads")
        else:
            said.append(f"{path} names {shown(parse_include(include_before))} again")
        if include_problem is None and include_before is not None:
            fix = ("on the nginx host, run `nginx -s reload`: nginx then serves what the include names "
                   "(app-live.conf reads it when it reloads), and the next deploy goes to the other color")
        else:
            fix = (f"once nginx's admin at {self.admin.url} answers, `python -m pipeline status` shows what "
                   f"nginx serves, and the next deploy goes to the other color")
        return f"{'; '.join(said)}. So the new container is left running. To settle it, {fix}"

    def check_answers(self) -> None:
        """The admin answers `GET /pipeline/stats` (AdminUnavailable: exit 3)."""
        self.admin.stats()

    def answers(self, route: Route) -> AnswerReader:
        """nginx's counters for the route's addresses, from what they are now."""
        return StatsReader(self.admin, route)

    def describe(self) -> Dict[str, Optional[str]]:
        report: Dict[str, Optional[str]] = {"admin": self.admin.url}
        try:
            self.check()
        except IncludeMismatch as exc:
            report["problem"] = str(exc)
        except AdminUnavailable:
            pass   # each route below says so
        for route in (LIVE, PREVIEW):
            try:
                served = self.admin.get(route)
                report[route] = shown(served) if served else None
            except AdminUnavailable as exc:
                report[route] = f"unknown ({exc.problem})"
        return report


class LivePrepared:
    """One nginx host's live switch made ready, not yet PUT (core.switch.Prepared)."""

    def __init__(self, switch: LiveSwitch, route: str, targets: Route, served_before: Optional[Route],
                 include_before: Optional[str]) -> None:
        self.switch, self.route, self.targets = switch, route, targets
        self.before, self.include_before = served_before, include_before
        self.committed = False

    def commit(self) -> None:
        self.switch.commit(self.route, self.targets, self.before, self.include_before)
        self.committed = True

    def undo(self) -> None:
        self.switch.undo(self.route, self.targets, self.before, self.include_before, put=self.committed)
