"""Where health probes run: the transports a Gate's probes go through (the gate itself: gate.py).

Probes run where nginx runs, because that is where the release has to be reachable: through a
direct-tcpip channel of the SSH connection when nginx is on another machine (`ChannelTransport`),
from this machine otherwise (`LocalTransport`). A `Prober` wraps either and never lets a probe
leave unless the probing side may take its route to the address:

- one engine (TARGET=docker): only over a directly connected interface, i.e. the deploy network is
  a local bridge there: an address reached only through the default route (a docker network on
  some other engine, or one that is gone) may be answered by anything outside.
- a swarm (TARGET=swarm, `nodes` given): only to an address of a node the manager reports, on a
  color's published port, and then over any route the probing side has (directly connected on
  any interface, or through a gateway): a task published in host mode answers at its node's own
  address, and the color's port there is ours alone, so nginx proxies to it by whatever route
  the nginx host has, and the probes go the same way (issue 20).

Callers also probe only an address a container (or running task) of ours holds, checked before
every probe.
"""
from __future__ import annotations

import http.client
import logging
import re
import socket
from typing import AbstractSet, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import paramiko
import requests

from pipeline.core.errors import NginxHostFailed, PreflightError, RouteRefused
from pipeline.core.gate import NotHealthyYet, Transport
from pipeline.adapters.channel_http import ChannelConnection
from pipeline.core.host import CommandResult, NginxHost

log = logging.getLogger("pipeline")

# A health answer is a few bytes; more is read no further (it only goes into messages).
MAX_ANSWER_BYTES = 4096


class LocalTransport:
    """Probes from this machine (nginx is local)."""

    where = "this machine"

    def __init__(self, session: Optional[requests.Session] = None) -> None:
        self.session = session or requests.Session()
        # Straight to the container: a proxy from the environment is not where nginx is.
        self.session.trust_env = False

    def get(self, url: str, timeout: float) -> Tuple[int, str]:
        try:
            response = self.session.get(url, timeout=(min(timeout, 2.0), timeout), allow_redirects=False)
        except requests.RequestException as exc:
            raise NotHealthyYet(_short(exc)) from exc
        return response.status_code, _preview(response)

    def can_connect(self, ip: str, port: int, timeout: float) -> bool:
        try:
            socket.create_connection((ip, port), timeout=timeout).close()
            return True
        except OSError:
            return False


class ChannelTransport:
    """Probes from the nginx host: each one a direct-tcpip channel of the SSH connection, so the
    connection to the container is made by the nginx host's sshd, from where nginx is."""

    def __init__(self, host: NginxHost) -> None:
        self.host = host
        self.where = f"the nginx host {host.description}"

    def get(self, url: str, timeout: float) -> Tuple[int, str]:
        parts = urlsplit(url)
        assert parts.hostname, url
        connection = ChannelConnection(self.host, parts.hostname, parts.port or 80, timeout)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", path, headers={"Connection": "close"})
            response = connection.getresponse()
            body = response.read(MAX_ANSWER_BYTES)
            return response.status, body.decode("utf-8", "replace")[:120]
        except paramiko.ChannelException as exc:
            # The nginx host's sshd tried and could not connect (refused, unreachable).
            raise NotHealthyYet(f"connection refused or unreachable from the nginx host ({exc.text})") from exc
        except socket.timeout as exc:
            raise NotHealthyYet("timed out") from exc
        except (OSError, EOFError, paramiko.SSHException, http.client.HTTPException) as exc:
            raise NotHealthyYet(f"through the nginx host: {type(exc).__name__}: {exc}") from exc
        finally:
            connection.close()

    def can_connect(self, ip: str, port: int, timeout: float) -> bool:
        try:
            self.host.open_channel(ip, port, timeout).close()
            return True
        except (OSError, EOFError, paramiko.SSHException):
            return False


class Prober:
    """A transport that lets no probe leave unless the probing side may take its route to the
    address (see the module's docstring and `route_problem`), asked of the nginx host (`host`:
    this machine or the SSH one). The route is checked once per address.

    `nodes` (TARGET=swarm): the node addresses the swarm manager reports, asked again when an
    address is not among those last reported; with it, only those addresses on `ports` are
    probed, over any route. Without it: any address, over a local bridge only."""

    def __init__(self, transport: Transport, host: NginxHost, network_hint: str = "",
                 nodes: Optional[Callable[[], Sequence[str]]] = None, ports: AbstractSet[int] = frozenset(),
                 gateway_ok: bool = True) -> None:
        self.transport = transport
        self.where = transport.where
        self.host = host
        self._hint = network_hint
        self._nodes_of = nodes
        self._nodes: FrozenSet[str] = frozenset()
        self._ports = frozenset(ports)
        self._gateway_ok = gateway_ok   # with `nodes`: False for PUBLISH_ADDRESS (issue 17), no gateway
        self._checked: Dict[str, Optional[str]] = {}
        self._routes: Dict[str, str] = {}              # address -> the route it is reached by
        self._bridges: Dict[str, Optional[str]] = {}   # device -> problem (None: a bridge)
        self._ran_commands = False

    @classmethod
    def for_host(cls, host: NginxHost, remote: bool, network_hint: str = "",
                 nodes: Optional[Callable[[], Sequence[str]]] = None, ports: AbstractSet[int] = frozenset(),
                 gateway_ok: bool = True) -> "Prober":
        """Probes from where nginx is: over the SSH connection when it is remote."""
        transport: Transport = ChannelTransport(host) if remote else LocalTransport()
        return cls(transport, host, network_hint, nodes, ports, gateway_ok)

    def check_route(self, ip: str) -> None:
        """Raise RouteRefused unless the probing side may take its route to `ip` (a swarm: `ip`
        is a node's address first)."""
        self._check_node(ip)
        if ip not in self._checked:
            self._checked[ip] = self._route_problem(ip, self.host.run(_route_get(ip)))
        problem = self._checked[ip]
        if problem is not None:
            hint = f" {self._hint}" if self._hint else ""
            raise RouteRefused(f"not probing {ip}: health probes run on {self.where}, which {problem}.{hint}")

    def route_to(self, ip: str) -> str:
        """How the probing side reaches `ip` ("via 10.0.0.1 on eth0", "directly on br-1a2b"), for
        `status`; RouteRefused as `check_route`."""
        self.check_route(ip)
        return self._routes.get(ip, "?")

    def _check_node(self, ip: str) -> None:
        """A swarm: RouteRefused unless `ip` is a node's address, as the manager reports them now."""
        if self._nodes_of is None:
            return
        if ip not in self._nodes:
            self._nodes = frozenset(self._nodes_of())
        if ip not in self._nodes:
            nodes = " ".join(sorted(self._nodes)) or "none"
            raise RouteRefused(f"not probing {ip}: not the address of a swarm node (the manager reports {nodes})")

    def _check_port(self, port: Optional[int]) -> None:
        if self._nodes_of is not None and port not in self._ports:
            ports = " ".join(str(p) for p in sorted(self._ports))
            raise RouteRefused(f"not probing port {port}: not a color's published port ({ports})")

    def check_routes(self, ips: Sequence[str]) -> None:
        """`check_route` for each address, the nginx host asked about all of them in one command.

        Over SSH every command is a session of its own: a process and the login shell's start-up
        on the nginx host (0.15 s of CPU where .bashrc runs `pyenv init`), which a saturated
        machine stretches to most of a second (issue 15). The first time, `true` comes first in
        the same command: preflight's proof that the nginx host runs commands at all (an
        SFTP-only account does not; the switch's `nginx -t` and reload would fail), until then a
        session of its own in SshHost.connect. Any failure of that command: PreflightError."""
        for ip in dict.fromkeys(ips):
            self._check_node(ip)
        new = [ip for ip in dict.fromkeys(ips) if ip not in self._checked]
        if new or not self._ran_commands:
            proof = [] if self._ran_commands else [["true"]]
            steps = [*proof, *(_route_get(ip) for ip in new)]
            try:
                results = self.host.run_steps(steps)
            except NginxHostFailed as exc:
                raise PreflightError(str(exc)) from exc
            if proof:
                if not results or results[0].code != 0:
                    code, output = (results[0].code, results[0].output) if results else (255, "")
                    over = "" if isinstance(self.transport, LocalTransport) else " over SSH"
                    raise PreflightError(f"nginx host {self.host.description}{over}: running `true` exited with "
                                         f"{code}: {' '.join(output.split())[:200]}")
                self._ran_commands = True
                results = results[1:]
            # run_steps stops at the first command that fails: that address is refused below,
            # before any address after it (left unasked) would be.
            for ip, result in zip(new, results):
                self._checked[ip] = self._route_problem(ip, result)
        for ip in ips:
            self.check_route(ip)

    def _route_problem(self, ip: str, result: CommandResult) -> Optional[str]:
        """What the answer of `ip -4 route get IP` says is wrong, or None: a local bridge."""
        output = route_answer(result.output, ip)
        any_route = self._nodes_of is not None
        problem = route_problem(result.code, output, gateway_ok=any_route and self._gateway_ok)
        if problem is not None:
            return problem
        self._routes[ip] = route_shown(output)
        if any_route:
            return None   # a swarm node's address: any interface, any gateway
        device = route_device(output)
        assert device is not None, output   # route_problem refuses an answer without one
        if device not in self._bridges:
            self._bridges[device] = self._bridge_problem(device)
        return self._bridges[device]

    def _bridge_problem(self, device: str) -> Optional[str]:
        # A docker network is a bridge; a plain interface (a VPN's tun0 carrying the default
        # route without a gateway, a LAN) is not where our containers are. Asked once per device:
        # both colors' addresses are on the same one.
        try:
            is_bridge = self.host.read_text(f"/sys/class/net/{device}/bridge/bridge_id") is not None
        except (OSError, NginxHostFailed) as exc:   # the nginx host reports its own as NginxHostFailed
            return f"reaches it on {device}, which could not be checked for being a bridge ({exc})"
        if not is_bridge:
            return f"reaches it on {device}, which is not a bridge (no docker network there)"
        return None

    def get(self, url: str, timeout: float) -> Tuple[int, str]:
        parts = urlsplit(url)
        self.check_route(parts.hostname or "")
        self._check_port(parts.port)
        return self.transport.get(url, timeout)

    def can_connect(self, ip: str, port: int, timeout: float) -> bool:
        self.check_route(ip)
        self._check_port(port)
        return self.transport.can_connect(ip, port, timeout)


def _route_get(ip: str) -> List[str]:
    return ["ip", "-4", "route", "get", ip]


_DEVICE_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
# Route types `ip route get` prints first when the route is not a plain unicast one.
_NOT_UNICAST = ("local", "broadcast", "blackhole", "unreachable", "prohibit", "throw",
                "multicast", "anycast", "nat")


def route_answer(output: str, ip: str) -> str:
    """The lines of `ip route get IP`'s output that are its answer.

    The command's stderr comes mixed in, and over SSH so does whatever the login shell prints
    (seen here: a pyenv shim's `rm: cannot remove ...` racing another session). The answer's
    line starts with the address asked for, or with a route type.
    """
    lines = [line for line in output.splitlines() if line.strip()]
    answer = [line for line in lines if line.split()[0] in (ip, *_NOT_UNICAST)]
    return "\n".join(answer) if answer else output


def route_problem(code: int, output: str, gateway_ok: bool = False) -> Optional[str]:
    """What is wrong with the route `ip -4 route get IP` reported, or None if it is directly
    connected (`IP dev br-x src ...`: no gateway, a local interface; whether that interface is
    a bridge is the caller's next question) or, `gateway_ok` (a swarm node's address), a unicast
    route through a gateway (`IP via GW dev eth0 ...`).

    Pure: the answer of the command, as exit code and output, in; a phrase for the message out.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if code == 127:
        return "has no `ip` command (iproute2) to check the route with"
    if code == 255 and output.startswith("ssh: "):   # SshHost.run: the session itself failed
        return f"could not be asked for its route over SSH ({lines[-1][5:]})"
    if code == 124:                                  # LocalHost.run: the command's timeout
        return f"did not answer `ip route get` ({lines[-1] if lines else 'timed out'})"
    if code != 0:
        return f"has no route to it ({lines[-1] if lines else f'ip exited with {code}'})"
    if not lines:
        return "gave no answer to `ip route get`"
    words = lines[0].split()
    if words[0] in _NOT_UNICAST:
        if words[0] == "local":
            return "holds that address itself (it is not a container there)"
        return f"has a {words[0]} route for it"
    gateway, device = _word_after(words, "via"), _word_after(words, "dev")
    if gateway is not None and not gateway_ok:
        return f"reaches it only through the gateway {gateway} ({device or '?'}), not a local bridge"
    if device is None or not _DEVICE_RE.fullmatch(device):
        return f"gave an answer without an interface: {lines[0]!r}"
    return None


def route_shown(output: str) -> str:
    """How `status` names a route `route_problem` allowed: "via 10.0.0.1 on eth0" (through that
    gateway) or "directly on eth0" (directly connected)."""
    words = (output.strip().splitlines() or [""])[0].split()
    gateway, device = _word_after(words, "via"), _word_after(words, "dev") or "?"
    return f"via {gateway} on {device}" if gateway is not None else f"directly on {device}"


def route_device(output: str) -> Optional[str]:
    """The interface of a route `route_problem` found directly connected."""
    return _word_after(output.split(), "dev")


def _word_after(words: List[str], key: str) -> Optional[str]:
    for word, value in zip(words, words[1:]):
        if word == key:
            return value
    return None


def _preview(response: requests.Response) -> str:
    """The answer's start, for messages. Not `response.text`: for an answer that names no charset
    (Spring Boot's application/vnd.spring-boot.actuator.v3+json) requests would guess one with
    charset_normalizer: loading it (0.05-0.1 s, see pipeline/__init__.py), then running it on every
    probe. JSON is UTF-8 (RFC 8259); a charset the answer names is used as before."""
    try:
        return response.content.decode(response.encoding or "utf-8", "replace")[:120]
    except LookupError:   # a charset Python does not know
        return response.content.decode("utf-8", "replace")[:120]


def _short(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or unreachable"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__
