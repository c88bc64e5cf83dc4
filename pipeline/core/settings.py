"""Settings, read once at the edge from the environment and a .env file.

`Settings.from_env(environ, cwd)` is the only reader of configuration. Every check names the
variable and the value it got, so a bad value is a one-line error before anything changes.

`Settings` is the parsed, validated whole, which the flows (the runbooks) read; its sections
(`settings.app`, `.build`, `.network`, `.swarm`, `.runtime`, `.nginx`, `.switch`, `.verify`,
`.rollout`, `.registry_access`) are frozen parts of it, and compose.py hands each adapter only
the sections it reads: every setting is in exactly one (tests/unit/test_sections.py).
"""
from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import Field, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import AbstractSet, Any, Callable, Dict, Generic, List, Mapping, Optional, Tuple, TypeVar
from urllib.parse import urlsplit

from pipeline.core.errors import SettingsError

COLORS = ("blue", "green")
SWITCH_MODES = ("reload", "live")
INCLUDE_FORMS = ("set", "upstream")
TARGETS = ("docker", "swarm")
IMAGE_BUILDS = ("dockerfile", "layered")
# The most addresses a live-mode route takes (nginx/live/app-live.conf, routes.max_addresses).
MAX_ROUTE_ADDRESSES = 32
# Settings that only one target reads: set explicitly for the other, they are refused.
DOCKER_ONLY = ("DEPLOY_NETWORK", "DEPLOY_SUBNET", "DEPLOY_GATEWAY", "BLUE_IP", "GREEN_IP", "PUBLISH_ADDRESS")
# Read with TARGET=docker too once PUBLISH_ADDRESS is set (each color's published host port).
PUBLISHED_PORTS = ("BLUE_PORT", "GREEN_PORT")
SWARM_ONLY = ("REPLICAS", "BLUE_PORT", "GREEN_PORT")
# Settings that only one IMAGE_BUILD reads: set explicitly for the other, they are refused.
DOCKERFILE_ONLY = ("DOCKERFILE", "BUILD_CONTEXT", "BUILD_ARGS")
LAYERED_ONLY = ("JAR", "BASE_IMAGE")

# Docker container names allow [a-zA-Z0-9][a-zA-Z0-9_.-]; "-blue" / "-green" is appended.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# Docker image tag grammar.
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# host[:port][/path] of a registry, as docker expects it in an image reference.
_REGISTRY_RE = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$")
_NGINX_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NETWORK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.:-]+$")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# An image reference: [registry[:port]/]path[:tag][@sha256:digest].
_IMAGE_RE = re.compile(r"^(?:[A-Za-z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
                       r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                       r"(?:@sha256:[0-9a-f]{64})?$")


class Secret:
    """A value that must never reach logs or output: repr and str show ***."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# A BUILD_ARGS or container env entry whose key holds one of these is a secret: masked everywhere
# (and, in BUILD_ARGS, warned about: the image keeps build args, see build.warn_secret_build_args).
SECRET_KEY_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
# Settings that no child process (build, git, nginx test/reload) gets in its environment.
SECRET_SETTINGS = frozenset({"REGISTRY_PASSWORD"})


def is_secret_name(key: str) -> bool:
    return any(word in key.upper() for word in SECRET_KEY_WORDS)


def without_secrets(environ: Mapping[str, str]) -> Dict[str, str]:
    """The environment for a child process: every secret setting left out."""
    return {k: v for k, v in environ.items() if k not in SECRET_SETTINGS}


def _mask_secret_words(raw: str) -> str:
    """KEY=VALUE words as shown in an error: the values of secret keys replaced by ***."""
    try:
        words = shlex.split(raw)
    except ValueError:
        # Cannot tell where the value ends: hide everything from the first secret key on.
        match = next((m for m in re.finditer(r"[A-Za-z0-9_.-]*=", raw) if is_secret_name(m.group())), None)
        return raw if match is None else raw[:match.end()] + "***"
    masked = []
    for word in words:
        key, sep, _ = word.partition("=")
        masked.append(f"{key}=***" if sep and is_secret_name(key) else word)
    return " ".join(masked)


# -- readers: (name, raw, cwd) -> value; each raises SettingsError naming the variable ------------

T = TypeVar("T")
N = TypeVar("N", int, float)
Reader = Callable[[str, str, Path], T]
_READER = "pipeline.core.settings.reader"   # where a Settings field keeps its reader (Field.metadata)


def _env(read: Reader[T], default: T) -> T:
    """A setting: its variable read by `read`, else `default`. Written where each field is
    declared, so that mypy holds the reader to the field's type."""
    return field(default=default, metadata={_READER: read})


def _env_made(read: Reader[T], make: Callable[[], T]) -> T:
    """A setting whose default is made anew for each Settings (a dict)."""
    return field(default_factory=make, metadata={_READER: read})


@dataclass(frozen=True)
class _Bounded(Generic[N]):
    """A reader of a number that has a largest value (SETTING_MAXIMUMS: the README's table says it)."""

    read: Reader[N]
    maximum: N

    def __call__(self, name: str, raw: str, cwd: Path) -> N:
        return self.read(name, raw, cwd)


def _text(pattern: Optional[re.Pattern[str]] = None, problem: str = "", allow_empty: bool = True) -> Reader[str]:
    def read(name: str, raw: str, cwd: Path) -> str:
        if not raw and not allow_empty:
            raise SettingsError(name, raw, "must not be empty")
        if raw and pattern is not None and not pattern.match(raw):
            raise SettingsError(name, raw, problem)
        return raw
    return read


def _optional(read: Reader[T]) -> Reader[Optional[T]]:
    """A setting that may be left empty: then it is not set (None)."""
    def read_unless_empty(name: str, raw: str, cwd: Path) -> Optional[T]:
        return read(name, raw, cwd) if raw else None
    return read_unless_empty


def _choice(options: Tuple[str, ...]) -> Reader[str]:
    def read(name: str, raw: str, cwd: Path) -> str:
        if raw not in options:
            raise SettingsError(name, raw, f"must be one of {', '.join(options)}")
        return raw
    return read


# Numbers are written the one way an operator reads them back: ASCII digits, an optional decimal
# point. Python's int() and float() take much more ('²'.isdigit(), int('٨٠٨٠') == 8080,
# float('1e10'), float('1_000'), 'nan', 'inf'), none of which belongs in a deploy setting.
_WHOLE_RE = re.compile(r"^[0-9]{1,12}$")
_DECIMAL_RE = re.compile(r"^(?:[0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})$")
# The longest wait any duration setting may ask for unless it says otherwise: generous for any
# start-up, drain or verification window, and far from where a sleep or a socket timeout
# overflows (time_t: OverflowError beyond ~9.2e9 s; DRAIN_SECONDS=1e10 used to crash after the switch).
MAX_DURATION = 3600.0


def _whole(raw: str) -> Optional[int]:
    """ASCII digits as an int, else None."""
    return int(raw) if _WHOLE_RE.match(raw) else None


def _decimal(raw: str) -> Optional[float]:
    """ASCII digits with an optional decimal point as a float, else None (no sign, exponent,
    underscore, nan or inf)."""
    return float(raw) if _DECIMAL_RE.match(raw) else None


def _between(parse: Callable[[str], Optional[N]], low: N, high: N, problem: str) -> Reader[N]:
    """A number written the one way `parse` takes, from `low` to `high`."""
    def read(name: str, raw: str, cwd: Path) -> N:
        value = parse(raw)
        if value is None or not low <= value <= high:
            raise SettingsError(name, raw, problem)
        return value
    return read


_port = _between(_whole, 1, 65535, "must be a port number from 1 to 65535")


@dataclass(frozen=True)
class HostAddress:
    """One entry of NGINX_HOSTS: `[user@]host[:port]` (an IPv6 address in brackets); a user or
    port left out is NGINX_SSH_USER's or NGINX_SSH_PORT's."""

    host: str
    user: Optional[str] = None
    port: Optional[int] = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")


_HOST_ENTRY_RE = re.compile(r"^(?:(?P<user>[^@]*)@)?(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[^:]*))?$")


def _host_list(name: str, raw: str, cwd: Path) -> Tuple[HostAddress, ...]:
    """Comma-separated `[user@]host[:port]`, none twice; each entry checked as NGINX_HOST,
    NGINX_SSH_USER and NGINX_SSH_PORT are."""
    hosts: List[HostAddress] = []
    for entry in (part.strip() for part in raw.split(",")):
        match = _HOST_ENTRY_RE.match(entry)
        host = match and (match.group("v6") if match.group("v6") is not None else match.group("host"))
        if not match or not host or not _HOST_RE.match(host):
            raise SettingsError(name, raw, f"{entry!r} is not [user@]host[:port]")
        user, port = match.group("user"), match.group("port")
        if user is not None and not _USER_RE.match(user):
            raise SettingsError(name, raw, f"{entry!r}: {user!r} is not a user name")
        number = _whole(port) if port is not None else None
        if port is not None and (number is None or not 1 <= number <= 65535):
            raise SettingsError(name, raw, f"{entry!r}: {port!r} is not a port number from 1 to 65535")
        address = HostAddress(host, user, number)
        if address in hosts:
            raise SettingsError(name, raw, f"{entry!r} is listed twice")
        hosts.append(address)
    return tuple(hosts)


def _optional_hosts(name: str, raw: str, cwd: Path) -> Tuple[HostAddress, ...]:
    return _host_list(name, raw, cwd) if raw else ()


def _duration(positive: bool = False, maximum: float = MAX_DURATION) -> _Bounded[float]:
    """Seconds, in plain decimal digits, from 0 (above 0 if `positive`) to `maximum`."""
    def read(name: str, raw: str, cwd: Path) -> float:
        value = _decimal(raw)
        if value is None or value > maximum or (positive and value == 0):
            kind = "a positive number of seconds" if positive else "a non-negative number of seconds"
            raise SettingsError(name, raw, f"must be {kind} in decimal digits (e.g. 2.5), at most {maximum:.15g}")
        return value
    return _Bounded(read, maximum)


def read_seconds(name: str, raw: str, maximum: float = MAX_DURATION) -> float:
    """A duration given outside the settings (a command-line flag), read the same way."""
    return _duration(maximum=maximum)(name, raw, Path())


def _count(maximum: int) -> _Bounded[int]:
    return _Bounded(_between(_whole, 1, maximum, f"must be a whole number of at least 1, at most {maximum}"),
                    maximum)


_fraction = _between(_decimal, 0.0, 1.0, "must be a fraction from 0 to 1, e.g. 0.01 for 1%")


def _flag(name: str, raw: str, cwd: Path) -> bool:
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}
    if raw.lower() not in words:
        raise SettingsError(name, raw, "must be true or false")
    return words[raw.lower()]


def _ip(name: str, raw: str, cwd: Path) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(raw)
    except ValueError:
        raise SettingsError(name, raw, "not an IPv4 address") from None


def _subnet(name: str, raw: str, cwd: Path) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(raw, strict=True)
    except ValueError:
        raise SettingsError(name, raw, "not an IPv4 subnet like 172.20.0.0/16") from None
    if not net.is_private or net.prefixlen > 29:
        raise SettingsError(name, raw, "must be a private subnet of at least 8 addresses (/29 or larger)")
    return net


def _command(allow_empty: bool) -> Reader[Tuple[str, ...]]:
    def read(name: str, raw: str, cwd: Path) -> Tuple[str, ...]:
        try:
            argv = tuple(shlex.split(raw))
        except ValueError as exc:
            raise SettingsError(name, raw, f"cannot be split into words ({exc})") from None
        if not argv and not allow_empty:
            raise SettingsError(name, raw, "must not be empty")
        return argv
    return read


def _local_file(name: str, raw: str, cwd: Path) -> Path:
    path = Path(raw).expanduser()
    if not (path if path.is_absolute() else cwd / path).is_file():
        raise SettingsError(name, raw, "no such file")
    return path


def _path(name: str, raw: str, cwd: Path) -> Path:
    if not raw:
        raise SettingsError(name, raw, "must not be empty")
    return Path(raw).expanduser()


def _remote_path(name: str, raw: str, cwd: Path) -> PurePosixPath:
    path = PurePosixPath(raw)
    if not path.is_absolute() or ".." in path.parts or raw.endswith("/"):
        raise SettingsError(name, raw, "must be an absolute file path")
    return path


def _build_args(name: str, raw: str, cwd: Path) -> Dict[str, str]:
    args = {}
    try:
        words = _command(True)(name, raw, cwd)
    except SettingsError as exc:
        raise SettingsError(name, _mask_secret_words(raw), exc.problem) from None
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise SettingsError(name, _mask_secret_words(raw),
                                f"expected KEY=VALUE words, got {_mask_secret_words(word)!r}")
        args[key] = value
    return args


def _volumes(name: str, raw: str, cwd: Path) -> Tuple[str, ...]:
    volumes = tuple(v.strip() for v in raw.split(",") if v.strip())
    for volume in volumes:
        parts = volume.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]) or not parts[1].startswith("/"):
            raise SettingsError(name, raw, f"expected SOURCE:/container/path[:ro|rw], got {volume!r}")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise SettingsError(name, raw, f"mode must be ro or rw in {volume!r}")
    return volumes


def _masked_url(raw: str) -> str:
    """A URL as shown in an error: whatever stands before its last '@' (user, password, token)
    replaced by ***. Found by text, not by urlsplit: a password holding '/' or '#' moves
    urlsplit's idea of where the host starts."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "", raw
    if "@" not in rest:
        return raw
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def _admin_url(name: str, raw: str, cwd: Path) -> str:
    shown = _masked_url(raw)
    if shown != raw:
        raise SettingsError(name, shown, "must not hold credentials (user:password@): the admin token is "
                                         "read from NGINX_ADMIN_TOKEN_FILE on the nginx host")
    parts = urlsplit(raw)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise SettingsError(name, raw, "must look like http://127.0.0.1:8091")
    try:
        parts.port
    except ValueError:
        raise SettingsError(name, raw, "has a bad port") from None
    return raw.rstrip("/")


def _registry(name: str, raw: str, cwd: Path) -> str:
    if raw and not _REGISTRY_RE.match(raw):
        shown = _masked_url(raw)   # a password written into the address is not echoed
        hint = " (the login goes in REGISTRY_USERNAME and REGISTRY_PASSWORD)" if shown != raw else ""
        raise SettingsError(name, shown, "not a registry address like host:5000" + hint)
    return raw


def _health_path(name: str, raw: str, cwd: Path) -> str:
    if not raw.startswith("/") or any(c.isspace() for c in raw):
        raise SettingsError(name, raw, "must be a URL path starting with /")
    return raw


def _secret(name: str, raw: str, cwd: Path) -> Secret:
    return Secret(raw)


# -- sections: the settings each part reads, handed to it alone (compose.py hands them out) ----------

@dataclass(frozen=True)
class AppSettings:
    """The release and its containers: what either target runs."""

    app_name: str
    app_version: Optional[str]
    app_port: int
    health_path: str
    container_env_file: Optional[Path]
    container_volumes: Tuple[str, ...]
    stop_timeout: float

    def container_name(self, color: str) -> str:
        return f"{self.app_name}-{color}"

    def volumes_for(self, color: str) -> Tuple[str, ...]:
        return tuple(v.replace("{color}", color) for v in self.container_volumes)


@dataclass(frozen=True)
class BuildSettings:
    """How the release image is built (IMAGE_BUILD=dockerfile or layered)."""

    build_command: Tuple[str, ...]
    image_build: str
    jar: Optional[Path]
    base_image: str
    dockerfile: Path
    build_context: Path
    build_args: Dict[str, str]

    def check_build_inputs(self, cwd: Path) -> None:
        """What only a build needs: checked in deploy's preflight, not by `status`."""
        if self.image_build == "layered":
            if not self.build_command:
                self.jar_path(cwd)   # no build makes it: it must be there now
            return
        dockerfile = self.dockerfile if self.dockerfile.is_absolute() else cwd / self.dockerfile
        if not dockerfile.is_file():
            raise SettingsError("DOCKERFILE", self.dockerfile, "no such file")
        context = self.build_context if self.build_context.is_absolute() else cwd / self.build_context
        if not context.is_dir():
            raise SettingsError("BUILD_CONTEXT", self.build_context, "no such directory")

    def jar_path(self, cwd: Path) -> Path:
        """The jar IMAGE_BUILD=layered builds from: JAR, else the one *.jar under build/libs/
        (Gradle's `-plain.jar`, the classes without their dependencies, left out)."""
        if self.jar is not None:
            path = self.jar if self.jar.is_absolute() else cwd / self.jar
            if not path.is_file():
                raise SettingsError("JAR", self.jar, "no such file")
            return path
        libs = cwd / "build" / "libs"
        found = sorted(p.name for p in libs.glob("*.jar") if p.is_file() and not p.name.endswith("-plain.jar"))
        if len(found) != 1:
            which = f"{len(found)} jars ({', '.join(found)})" if found else "no *.jar"
            raise SettingsError("JAR", None, f"not set, and {libs} holds {which} besides any -plain.jar: "
                                             f"set JAR to the one to release")
        return libs / found[0]


@dataclass(frozen=True)
class NetworkSettings:
    """TARGET=docker: the bridge network the colors live on, at fixed addresses (DOCKER_ONLY)."""

    deploy_network: str
    deploy_subnet: ipaddress.IPv4Network
    deploy_gateway: ipaddress.IPv4Address
    blue_ip: ipaddress.IPv4Address
    green_ip: ipaddress.IPv4Address
    # Nginx hosts on other machines (issue 17): each color's APP_PORT is also published on this
    # address of the engine's machine, on BLUE_PORT / GREEN_PORT, and nginx proxies to that.
    publish_address: Optional[ipaddress.IPv4Address]

    def ip_of(self, color: str) -> str:
        return str(self.blue_ip if color == "blue" else self.green_ip)

    @property
    def color_ips(self) -> Dict[str, str]:
        return {color: self.ip_of(color) for color in COLORS}


@dataclass(frozen=True)
class SwarmSettings:
    """TARGET=swarm: tasks per color and the node ports they publish (SWARM_ONLY)."""

    replicas: int
    blue_port: int
    green_port: int

    def port_of(self, color: str) -> int:
        """The node port a color's swarm tasks publish APP_PORT on (host mode)."""
        return self.blue_port if color == "blue" else self.green_port


@dataclass(frozen=True)
class RuntimeSettings:
    """Where releases run (TARGET, DOCKER_HOST) and how long any one network call may take."""

    target: str
    docker_host: str
    network_timeout: float


@dataclass(frozen=True)
class NginxSettings:
    """The nginx host and how it is reached (SSH; none: this machine)."""

    nginx_host: str
    nginx_hosts: Tuple["HostAddress", ...]
    nginx_ssh_user: str
    nginx_ssh_port: int
    nginx_ssh_key: Optional[Path]
    nginx_ssh_known_hosts: Path

    @property
    def remote(self) -> bool:
        return bool(self.nginx_host or self.nginx_hosts)

    def each(self) -> Tuple["NginxSettings", ...]:
        """One section per nginx host, each naming just its host (NGINX_HOSTS' in their order, the
        first one the default), with everything else shared: the same key, known_hosts file,
        include paths, commands and admin. Without NGINX_HOSTS: this section alone."""
        if not self.nginx_hosts:
            return (self,)
        return tuple(replace(self, nginx_host=h.host, nginx_ssh_user=h.user or self.nginx_ssh_user,
                             nginx_ssh_port=h.port or self.nginx_ssh_port, nginx_hosts=())
                     for h in self.nginx_hosts)


@dataclass(frozen=True)
class SwitchSettings:
    """How traffic is switched on the nginx host: the include files, reload mode's commands, pid
    file and access log, live mode's admin server."""

    switch_mode: str
    nginx_include: PurePosixPath
    nginx_preview_include: Optional[PurePosixPath]
    nginx_include_form: str
    nginx_upstream: str
    nginx_test_command: Tuple[str, ...]
    nginx_reload_command: Tuple[str, ...]
    nginx_pid_file: PurePosixPath
    nginx_admin_url: str
    nginx_admin_token_file: PurePosixPath
    nginx_access_log: PurePosixPath


@dataclass(frozen=True)
class VerifySettings:
    """Verification under live traffic after the switch (flows/verify.py)."""

    verify_seconds: float
    verify_max_error_rate: float
    verify_min_requests: int


@dataclass(frozen=True)
class RolloutSettings:
    """The runbook's own waits and choices: health, smoke, hold, drain, what is kept, the hooks."""

    health_interval: float
    health_timeout: float
    smoke_command: str
    min_ready_seconds: float
    drain_seconds: float
    keep_previous_running: bool
    keep_releases: int
    # The release phase (migrations): once per deploy, before the new color starts (deploy.run_release_phase).
    release_command: Tuple[str, ...]
    release_timeout: float
    hooks_dir: Path
    hook_timeout: float
    maintenance_page: Optional[Path]
    maintenance_retry_after: int


@dataclass(frozen=True)
class RegistrySettings:
    """The registry releases go through, and its login."""

    registry: str
    registry_username: str
    registry_password: Secret


# Every section; each setting is in exactly one (tests/unit/test_sections.py).
SECTIONS = (AppSettings, BuildSettings, NetworkSettings, SwarmSettings, RuntimeSettings, NginxSettings,
            SwitchSettings, VerifySettings, RolloutSettings, RegistrySettings)


@dataclass(frozen=True)
class Settings:
    """Every setting, each declared as `field: type = _env(reader, default)`: it is read from the
    variable of the field's name in capitals (APP_NAME for app_name)."""

    app_name: str = _env(_text(_NAME_RE, "must be lower-case letters, digits, '.', '_' or '-'", allow_empty=False),
                         "app")
    app_version: Optional[str] = _env(_optional(_text(_TAG_RE, "must be a docker tag: letters, digits, '.', '_', '-'")),
                                      None)
    build_command: Tuple[str, ...] = _env(_command(allow_empty=True), ("./gradlew", "bootJar"))
    # dockerfile: DOCKERFILE in BUILD_CONTEXT; layered: from JAR alone on BASE_IMAGE (layered.py).
    image_build: str = _env(_choice(IMAGE_BUILDS), "dockerfile")
    jar: Optional[Path] = _env(_optional(_path), None)
    base_image: str = _env(_text(_IMAGE_RE, "not an image reference like pipeline/jre:17", allow_empty=False),
                           "pipeline/jre:17")
    dockerfile: Path = _env(_path, Path("docker/Dockerfile"))
    build_context: Path = _env(_path, Path("."))
    build_args: Dict[str, str] = _env_made(_build_args, dict)
    deploy_network: str = _env(_text(_NETWORK_RE, "not a docker network name", allow_empty=False), "deploy")
    deploy_subnet: ipaddress.IPv4Network = _env(_subnet, ipaddress.IPv4Network("172.20.0.0/16"))
    deploy_gateway: ipaddress.IPv4Address = _env(_ip, ipaddress.IPv4Address("172.20.0.1"))
    blue_ip: ipaddress.IPv4Address = _env(_ip, ipaddress.IPv4Address("172.20.0.2"))
    green_ip: ipaddress.IPv4Address = _env(_ip, ipaddress.IPv4Address("172.20.0.3"))
    publish_address: Optional[ipaddress.IPv4Address] = _env(_optional(_ip), None)
    app_port: int = _env(_port, 8080)
    health_path: str = _env(_health_path, "/actuator/health")
    health_interval: float = _env(_duration(positive=True, maximum=600), 10.0)
    health_timeout: float = _env(_duration(), 300.0)
    nginx_host: str = _env(_text(_HOST_RE, "not a host name or address"), "")
    # Several nginx hosts switched as one (issue 17); replaces NGINX_HOST.
    nginx_hosts: Tuple[HostAddress, ...] = _env(_optional_hosts, ())
    nginx_ssh_user: str = _env(_text(_USER_RE, "not a user name", allow_empty=False), "root")
    nginx_ssh_port: int = _env(_port, 22)
    nginx_ssh_key: Optional[Path] = _env(_optional(_local_file), None)
    nginx_ssh_known_hosts: Path = _env(_path, Path("~/.ssh/known_hosts"))
    nginx_include: PurePosixPath = _env(_remote_path,
                                        PurePosixPath("/etc/nginx/conf.d/service-url.inc"))
    nginx_preview_include: Optional[PurePosixPath] = _env(_optional(_remote_path), None)
    nginx_include_form: str = _env(_choice(INCLUDE_FORMS), "set")
    nginx_upstream: str = _env(_text(_NGINX_NAME_RE, "not an nginx upstream name", allow_empty=False),
                               "app_live")
    nginx_test_command: Tuple[str, ...] = _env(_command(allow_empty=False), ("nginx", "-t"))
    nginx_reload_command: Tuple[str, ...] = _env(_command(allow_empty=False), ("nginx", "-s", "reload"))
    # Reload mode: nginx's pid file, to see a reload replace the master's worker processes.
    nginx_pid_file: PurePosixPath = _env(_remote_path, PurePosixPath("/run/nginx.pid"))
    switch_mode: str = _env(_choice(SWITCH_MODES), "reload")
    nginx_admin_url: str = _env(_admin_url, "http://127.0.0.1:8091")
    nginx_admin_token_file: PurePosixPath = _env(_remote_path,
                                                 PurePosixPath("/etc/nginx/pipeline-admin.token"))
    # `maintenance on`: the page nginx answers with (an HTML file here; empty: one made from
    # --message) and its Retry-After seconds (pipeline/core/maintenance.py).
    maintenance_page: Optional[Path] = _env(_optional(_local_file), None)
    maintenance_retry_after: int = _env(_count(maximum=86400), 120)
    drain_seconds: float = _env(_duration(), 10.0)
    stop_timeout: float = _env(_duration(), 30.0)
    # Verification under live traffic after the switch (pipeline/flows/verify.py).
    verify_seconds: float = _env(_duration(), 30.0)
    verify_max_error_rate: float = _env(_fraction, 0.01)
    verify_min_requests: int = _env(_count(maximum=1_000_000), 20)
    nginx_access_log: PurePosixPath = _env(_remote_path,
                                           PurePosixPath("/var/log/nginx/app.access.log"))
    smoke_command: str = _env(_text(), "")
    # After the health gate (and the smoke test), before any switch: the new release must stay
    # running and answer health this long (deploy.hold_ready; Kubernetes' minReadySeconds).
    min_ready_seconds: float = _env(_duration(), 0.0)
    # The release phase: RELEASE_COMMAND's words are the command of a one-off container of the new
    # image (its entry point kept), run before the new color starts; bounded by RELEASE_TIMEOUT.
    release_command: Tuple[str, ...] = _env(_command(allow_empty=True), ())
    release_timeout: float = _env(_duration(positive=True), 600.0)
    keep_previous_running: bool = _env(_flag, False)
    # Executables run on the tool's side before and after a deploy or rollback (flows/hooks.py).
    hooks_dir: Path = _env(_path, Path(".pipeline/hooks"))
    hook_timeout: float = _env(_duration(positive=True), 300.0)
    registry: str = _env(_registry, "")
    registry_username: str = _env(_text(), "")
    registry_password: Secret = _env(_secret, Secret(""))
    container_env_file: Optional[Path] = _env(_optional(_local_file), None)
    container_volumes: Tuple[str, ...] = _env(_volumes, ())
    keep_releases: int = _env(_count(maximum=1000), 5)
    docker_host: str = _env(_text(), "")
    network_timeout: float = _env(_duration(positive=True, maximum=600), 60.0)
    target: str = _env(_choice(TARGETS), "docker")
    replicas: int = _env(_count(maximum=1000), 2)
    blue_port: int = _env(_port, 8081)
    green_port: int = _env(_port, 8082)


    # -- sections ------------------------------------------------------------------------------
    # Built once per Settings (it is frozen; `replace` makes a new one with none built yet): the
    # flows' helpers below read them on every call, the health gate's and the window's included.

    def _values_of(self, section: Any) -> Dict[str, Any]:
        """This run's values of one section's fields (they have the same names and types here)."""
        return {f.name: getattr(self, f.name) for f in fields(section)}

    @cached_property
    def app(self) -> AppSettings:
        return AppSettings(**self._values_of(AppSettings))

    @cached_property
    def build(self) -> BuildSettings:
        return BuildSettings(**self._values_of(BuildSettings))

    @cached_property
    def network(self) -> NetworkSettings:
        return NetworkSettings(**self._values_of(NetworkSettings))

    @cached_property
    def swarm(self) -> SwarmSettings:
        return SwarmSettings(**self._values_of(SwarmSettings))

    @cached_property
    def runtime(self) -> RuntimeSettings:
        return RuntimeSettings(**self._values_of(RuntimeSettings))

    @cached_property
    def nginx(self) -> NginxSettings:
        return NginxSettings(**self._values_of(NginxSettings))

    @cached_property
    def switch(self) -> SwitchSettings:
        return SwitchSettings(**self._values_of(SwitchSettings))

    @cached_property
    def verify(self) -> VerifySettings:
        return VerifySettings(**self._values_of(VerifySettings))

    @cached_property
    def rollout(self) -> RolloutSettings:
        return RolloutSettings(**self._values_of(RolloutSettings))

    @cached_property
    def registry_access(self) -> RegistrySettings:
        """The registry section (`registry` is the REGISTRY setting itself)."""
        return RegistrySettings(**self._values_of(RegistrySettings))

    # -- derived (from more than one section, or kept here for the flows) --------------------------

    def container_name(self, color: str) -> str:
        return self.app.container_name(color)

    def port_of(self, color: str) -> int:
        return self.swarm.port_of(color)

    def ip_of(self, color: str) -> str:
        return self.network.ip_of(color)

    @property
    def color_ips(self) -> Dict[str, str]:
        return self.network.color_ips

    @property
    def remote(self) -> bool:
        return self.nginx.remote

    def image_ref(self, version: str) -> str:
        repo = f"{self.registry}/{self.app_name}" if self.registry else self.app_name
        return f"{repo}:{version}"

    def volumes_for(self, color: str) -> Tuple[str, ...]:
        return self.app.volumes_for(color)

    def lock_path(self) -> PurePosixPath:
        return self.nginx_include.parent / f"{self.app_name}.deploy.lock"

    def history_path(self) -> PurePosixPath:
        return self.nginx_include.parent / f"{self.app_name}.history.jsonl"

    def releases_path(self) -> PurePosixPath:
        return self.nginx_include.parent / f"{self.app_name}.releases.json"

    def check_build_inputs(self, cwd: Path) -> None:
        """What only a build needs: checked in deploy's preflight, not by `status`."""
        self.build.check_build_inputs(cwd)

    def jar_path(self, cwd: Path) -> Path:
        return self.build.jar_path(cwd)

    # -- reading ---------------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str], cwd: Path, env_file: Optional[Path] = None) -> "Settings":
        """Build settings from `env_file` (default `cwd/.env`, if present) overlaid by `environ`.

        os.environ is never modified: python-dotenv only parses the file here.
        """
        merged = _merged(environ, cwd, env_file)
        # Each value has its field's type: `_env` holds every field's reader to it, where declared.
        values: Dict[str, Any] = {SETTING_FIELDS[name]: read(name, merged[name].strip(), cwd)
                                  for name, read in _READERS.items() if name in merged}
        if values.get("target") == "swarm":
            # A color is several tasks: only the upstream form lists several servers.
            values.setdefault("nginx_include_form", "upstream")
        settings = cls(**values)
        given = {name for name, attr in SETTING_FIELDS.items() if attr in values}
        settings._check_target(given)
        settings._check_image_build(given)
        settings._check_together()
        return settings

    def _check_target(self, given: AbstractSet[str]) -> None:
        """Refuse settings the chosen target would silently ignore."""
        ignored, other = (SWARM_ONLY, "swarm") if self.target == "docker" else (DOCKER_ONLY, "docker")
        for name in ignored:
            if name in PUBLISHED_PORTS and self.publish_address is not None:
                continue
            if name in given:
                raise SettingsError(name, getattr(self, SETTING_FIELDS[name]),
                                    f"only read with TARGET={other}, not TARGET={self.target}")
        if self.publish_address is not None:
            address = self.publish_address
            if address.is_unspecified or address.is_multicast or address.is_link_local:
                raise SettingsError("PUBLISH_ADDRESS", address, "must be one address of the docker engine's machine "
                                                                "that the nginx hosts reach directly")
            if self.blue_port == self.green_port:
                raise SettingsError("GREEN_PORT", self.green_port, "same port as BLUE_PORT")
        if self.target == "swarm":
            if not self.registry:
                raise SettingsError("REGISTRY", None, "required with TARGET=swarm: every node pulls the release")
            if self.blue_port == self.green_port:
                raise SettingsError("GREEN_PORT", self.green_port, "same port as BLUE_PORT")
            if self.nginx_include_form != "upstream":
                raise SettingsError("NGINX_INCLUDE_FORM", self.nginx_include_form,
                                    "TARGET=swarm needs the upstream form: it lists every task as a server")
            if self.switch_mode == "live" and self.replicas > MAX_ROUTE_ADDRESSES:
                raise SettingsError("REPLICAS", self.replicas, f"SWITCH_MODE=live routes to at most "
                                                               f"{MAX_ROUTE_ADDRESSES} tasks")

    def _check_image_build(self, given: AbstractSet[str]) -> None:
        """Refuse build settings the chosen IMAGE_BUILD would silently ignore."""
        ignored, other = (LAYERED_ONLY, "layered") if self.image_build == "dockerfile" else \
            (DOCKERFILE_ONLY, "dockerfile")
        for name in ignored:
            if name in given:
                shown = self.public()[SETTING_FIELDS[name]] if name != "BUILD_ARGS" else \
                    " ".join(f"{k}={'***' if is_secret_name(k) else v}" for k, v in self.build_args.items())
                raise SettingsError(name, shown, f"only read with IMAGE_BUILD={other}, not IMAGE_BUILD={self.image_build}")

    def _check_together(self) -> None:
        if self.deploy_gateway not in self.deploy_subnet:
            raise SettingsError("DEPLOY_GATEWAY", self.deploy_gateway, f"not inside DEPLOY_SUBNET {self.deploy_subnet}")
        for name, ip in (("BLUE_IP", self.blue_ip), ("GREEN_IP", self.green_ip)):
            if ip not in self.deploy_subnet:
                raise SettingsError(name, ip, f"not inside DEPLOY_SUBNET {self.deploy_subnet}")
            if ip == self.deploy_gateway:
                raise SettingsError(name, ip, "is the DEPLOY_GATEWAY address")
            if ip in (self.deploy_subnet.network_address, self.deploy_subnet.broadcast_address):
                raise SettingsError(name, ip, f"is not a host address of {self.deploy_subnet}")
        if self.blue_ip == self.green_ip:
            raise SettingsError("GREEN_IP", self.green_ip, "same address as BLUE_IP")
        if self.nginx_preview_include is not None and self.nginx_preview_include == self.nginx_include:
            raise SettingsError("NGINX_PREVIEW_INCLUDE", self.nginx_preview_include, "same file as NGINX_INCLUDE")
        if self.nginx_host and self.nginx_hosts:
            raise SettingsError("NGINX_HOSTS", ",".join(map(str, self.nginx_hosts)),
                                f"replaces NGINX_HOST (set to {self.nginx_host}): set one of them")
        seen: Dict[Tuple[str, str, int], HostAddress] = {}
        for address, each in zip(self.nginx_hosts, self.nginx.each()):
            where = (each.nginx_ssh_user, each.nginx_host, each.nginx_ssh_port)
            if where in seen:
                raise SettingsError("NGINX_HOSTS", ",".join(map(str, self.nginx_hosts)),
                                    f"{address} and {seen[where]} are the same host")
            seen[where] = address
        if self.remote:
            if self.nginx_ssh_key is None:
                raise SettingsError("NGINX_SSH_KEY", "", "required when NGINX_HOST or NGINX_HOSTS is set")
            if not self.nginx_ssh_known_hosts.expanduser().is_file():
                raise SettingsError("NGINX_SSH_KNOWN_HOSTS", self.nginx_ssh_known_hosts, "no such file")
        if self.registry_username and not self.registry_password:
            raise SettingsError("REGISTRY_PASSWORD", None, "required when REGISTRY_USERNAME is set")

    def secret_values(self) -> Tuple[str, ...]:
        """Every value that must never be shown: for the log's masking (log.register_secret)."""
        values = [self.registry_password.reveal()]
        values += [v for k, v in self.build_args.items() if is_secret_name(k)]
        if self.container_env_file is not None:
            from dotenv import dotenv_values

            try:
                container_env = dotenv_values(self.container_env_file)
            except OSError:
                container_env = {}
            values += [v for k, v in container_env.items() if v and is_secret_name(k)]
        return tuple(v for v in values if v)

    def public(self) -> Dict[str, str]:
        """Every setting as text, secrets masked: for `status --json` and debugging."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "build_args":
                value = {k: "***" if is_secret_name(k) else v for k, v in value.items()}
            if isinstance(value, tuple):
                value = shlex.join(value) if f.name.endswith("command") else ",".join(map(str, value))
            out[f.name] = "" if value is None else str(value)
        return out


# Each variable's field, in the order they are read (the first bad value is the one reported).
_FIELDS: Dict[str, Field[Any]] = {f.name.upper(): f for f in fields(Settings)}
_READERS: Dict[str, Reader[Any]] = {name: f.metadata[_READER] for name, f in _FIELDS.items()}


def _merged(environ: Mapping[str, str], cwd: Path, env_file: Optional[Path]) -> Dict[str, str]:
    """The settings in `env_file` (default `cwd/.env`, if present) overlaid by `environ`."""
    path = env_file if env_file is not None else cwd / ".env"
    merged: Dict[str, str] = {}
    if env_file is not None and not path.is_file():
        raise SettingsError("--env-file", path, "no such file")
    if path.is_file():
        from dotenv import dotenv_values   # here: a run with no .env file starts without it

        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update({k: v for k, v in environ.items() if k in _READERS})
    return merged

SETTING_NAMES = tuple(_FIELDS)
# Each setting's Settings field, e.g. for checking the README's defaults against the reader's.
SETTING_FIELDS = {name: f.name for name, f in _FIELDS.items()}
# The largest value each bounded setting takes (durations, counts): the README's table says each.
SETTING_MAXIMUMS = {name: reader.maximum for name, reader in _READERS.items() if isinstance(reader, _Bounded)}
