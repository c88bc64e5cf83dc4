"""An nginx host of its own: a machine of its own for nginx, made on this one, that the tool
reaches over SSH as an operator's nginx host (issue 20; several of them: issue 17).

A host is a network namespace (no default route) joined to a bridge of this machine by a plain
veth, and a private mount namespace in which /etc/nginx, /var/log/nginx, /var/lib/nginx and /run
are directories of its own: the tool's defaults (NGINX_INCLUDE under /etc/nginx/conf.d,
NGINX_PID_FILE=/run/nginx.pid, `nginx -t`, `nginx -s reload`, NGINX_ACCESS_LOG) name its files,
not this machine's. Its own sshd (key auth, `internal-sftp`, the stack's PYENV_REHASH_TIMEOUT)
and its own nginx (the shipped nginx/conf.d files, unmodified, in its /etc/nginx/conf.d) run
inside both namespaces, so every SSH session sees what nginx sees.

    from teststack.nginxhost import NginxHost, Router

    host = NginxHost.start("pswarm0", "10.99.0.0/24")          # an address of its own on it
    env = {**tool_settings, **host.env()}   # NGINX_HOST, NGINX_SSH_KEY, NGINX_SSH_KNOWN_HOSTS,
                                            # NGINX_SSH_USER/PORT, NGINX_INCLUDE (upstream form)
    host.run("nginx", "-t")                 # a command inside it (CompletedProcess; check=True)
    host.file("/etc/nginx/conf.d/service-upstream.inc")   # that file, as a path on this machine
    host.include, host.access_log           # the same, for the two a test reads most
    host.get("/"), host.url                 # nginx on its address, port 80 (or preview=True: 8081)
    host.kill_sshd()                        # SIGKILL its sshd, the sessions too (sessions=False:
                                            # only the listener); host.start_sshd() brings it back
    host.stop()                             # kills everything inside, removes all it made

    router = Router.start("pswarm0", "10.99.0.0/24")           # a router namespace: one leg on
    far = NginxHost.behind(router)          # pswarm0, one on a bridge of its own (10.97.N.0/24);
    ...                                     # `far` reaches 10.99.0.0/24 only via the router
    far.stop(); router.stop()

Both are context managers too (`with NginxHost.start(...) as host:`). `form` picks the nginx
config: "upstream" (app-upstream.conf; TARGET=swarm's default), "set" (app.conf) or "live"
(nginx/live/app-live.conf; `allowed_networks` for its admin, token in
/etc/nginx/pipeline-admin.token). app-preview.conf comes with "upstream" and "set".

The router forwards between its legs and masquerades what leaves toward the upstream bridge, so
the nodes on it (whose namespaces have no route to the far subnet) answer the router; this
machine gets a route to the far subnet via the router, so the tool and the test reach the far
host's sshd and nginx. No namespace made here has a default route.

Addresses are claimed in /tmp/pipeline-nginxhosts/claims (one file each, under a lock): several
tests, or sessions, can make hosts on pswarm0 at the same time. A host takes .20 and up of its
network (the swarm's nodes are .11-.13); a claim whose owner's namespace is gone is taken over.
Everything is found again by its own pid or name, never by a process name: the machine runs
other sshd, nginx and dockerd.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import requests

from .realstack import LUA_MODULES, NGINX_CONF_D, NGINX_LIVE, _live_settings, wait_for

STATE = Path("/tmp/pipeline-nginxhosts")
CLAIMS = STATE / "claims"
# Subnets for routers' far side (and bridges made here): 10.97.N.0/24, away from the swarm's
# bridge (10.99.0.0/24) and its overlay pool (10.98.0.0/16).
FAR_SUBNETS = [f"10.97.{n}.0/24" for n in range(1, 251)]
# Inside the mount namespace, these are directories of the host's own.
PRIVATE_DIRS = ("/etc/nginx", "/var/log/nginx", "/var/lib/nginx", "/run")
SSHD = "/usr/sbin/sshd"   # sshd insists on an absolute path (it re-execs itself)


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


# -- claims --------------------------------------------------------------------------------------

@contextmanager
def _claims_locked() -> Iterator[None]:
    CLAIMS.mkdir(parents=True, exist_ok=True)
    with open(STATE / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def _owner_alive(owner: str) -> bool:
    """A claim's owner: a network namespace (`netns:NAME`) or a link of this machine (`link:NAME`)."""
    kind, _, name = owner.partition(":")
    return Path(f"/run/netns/{name}" if kind == "netns" else f"/sys/class/net/{name}").exists()


def claim(candidates: Sequence[str], owner: str) -> str:
    """The first of `candidates` (addresses, subnets) no living owner holds, now held by `owner`."""
    with _claims_locked():
        for candidate in candidates:
            path = CLAIMS / candidate.replace("/", "_")
            if path.exists() and _owner_alive(path.read_text().strip()):
                continue
            path.write_text(owner + "\n")
            return candidate
    raise RuntimeError(f"nothing free among {candidates[0]} .. {candidates[-1]}")


def release(candidate: str, owner: str) -> None:
    with _claims_locked():
        path = CLAIMS / candidate.replace("/", "_")
        if path.exists() and path.read_text().strip() == owner:
            path.unlink()


def _hosts_of(network: str, start: int = 20) -> List[str]:
    net = ipaddress.IPv4Network(network)
    return [str(ip) for ip in list(net.hosts())[start - 1:]]


# -- namespaces ----------------------------------------------------------------------------------

def _ns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def processes_in(netns: str) -> List[int]:
    """The pids of every process in network namespace `netns` (one the test made)."""
    inode, pids = _ns_inode(netns), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _kill_all_in(netns: str) -> None:
    if not Path(f"/run/netns/{netns}").exists():
        return
    for _ in range(50):
        pids = [pid for pid in processes_in(netns) if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _accept_bridged(bridge: str, add: bool) -> None:
    """Bridged frames between a bridge's ports go through this machine's FORWARD chain, whose
    policy is DROP once dockerd runs; DOCKER-USER is the chain docker leaves to us (as swarm.sh)."""
    rule = ["DOCKER-USER", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    if sh("iptables", "-n", "-L", "DOCKER-USER", check=False).returncode != 0:
        return
    present = sh("iptables", "-C", *rule, check=False).returncode == 0
    if add and not present:
        sh("iptables", "-I", *rule)
    elif not add and present:
        sh("iptables", "-D", *rule, check=False)


class Bridge:
    """A bridge of the test's own on a claimed 10.97.N.0/24, with this machine's address .1 on it
    (`host_address=True`) or none (a plain switch this machine has no foot in)."""

    def __init__(self, host_address: bool = True) -> None:
        self.name = f"pnb-{uuid.uuid4().hex[:6]}"
        self.owner = f"link:{self.name}"
        sh("ip", "link", "add", self.name, "type", "bridge")
        try:
            self.network = claim(FAR_SUBNETS, self.owner)
            self.host_address: Optional[str] = None
            if host_address:
                self.host_address = _hosts_of(self.network, 1)[0]
                sh("ip", "addr", "add", f"{self.host_address}/24", "dev", self.name)
            sh("ip", "link", "set", self.name, "up")
            _accept_bridged(self.name, True)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        _accept_bridged(self.name, False)
        sh("ip", "link", "del", self.name, check=False)
        if hasattr(self, "network"):
            release(self.network, self.owner)


def _veth_into(netns: str, bridge: str, inside: str, address: str, prefix: int) -> str:
    """A veth from `bridge` (host side, enslaved) into `netns` (as `inside`, with address/prefix).
    Returns the host side's name."""
    outside = f"{netns[:8]}-{inside}"[:15]
    sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", netns)
    sh("ip", "link", "set", outside, "master", bridge, "up")
    sh("ip", "-n", netns, "addr", "add", f"{address}/{prefix}", "dev", inside)
    sh("ip", "-n", netns, "link", "set", inside, "up")
    return outside


# -- a router ------------------------------------------------------------------------------------

class Router:
    """A router namespace: eth0 on `upstream_bridge` (an address of `upstream_network`), eth1 on a
    bridge of its own (`self.bridge`, `self.network`, the router `self.gateway` there). Built by
    `Router.start`; `stop()` removes it, its bridge and this machine's route to its far side."""

    def __init__(self, upstream_bridge: str, upstream_network: str) -> None:
        self.name = f"prt-{uuid.uuid4().hex[:6]}"
        self.owner = f"netns:{self.name}"
        self.upstream_network = upstream_network
        self.upstream_address: Optional[str] = None
        self.bridge: Optional[Bridge] = None
        self._routed = False
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "-n", self.name, "link", "set", "lo", "up")
            self.upstream_address = claim(_hosts_of(upstream_network), self.owner)
            _veth_into(self.name, upstream_bridge, "eth0", self.upstream_address,
                       ipaddress.IPv4Network(upstream_network).prefixlen)
            self.bridge = Bridge(host_address=False)
            self.network = self.bridge.network
            self.gateway = _hosts_of(self.network, 1)[0]
            _veth_into(self.name, self.bridge.name, "eth1", self.gateway, 24)
            self.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            self.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", self.network, "-o", "eth0",
                     "-j", "MASQUERADE")
            # This machine reaches the far side (the test's requests, the tool's SSH) via the router.
            sh("ip", "route", "replace", self.network, "via", self.upstream_address)
            self._routed = True
        except BaseException:
            self.stop()
            raise

    @classmethod
    def start(cls, upstream_bridge: str = "pswarm0", upstream_network: str = "10.99.0.0/24") -> "Router":
        return cls(upstream_bridge, upstream_network)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net=/run/netns/{self.name}", *argv, check=check)

    def stop(self) -> None:
        if self._routed:
            sh("ip", "route", "del", self.network, "via", str(self.upstream_address), check=False)
            self._routed = False
        _kill_all_in(self.name)
        sh("ip", "netns", "delete", self.name, check=False)   # its veths go with it
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None
        if self.upstream_address is not None:
            release(self.upstream_address, self.owner)

    def __enter__(self) -> "Router":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the nginx host ------------------------------------------------------------------------------

_MOUNT_SCRIPT = r"""
set -e
# Mounts this namespace needs no copy of (containers' layers, other namespaces' handles): left
# here they would pin what the machine's dockerd and swarm nodes unmount and remove.
awk '$9 == "overlay" || $9 == "nsfs" || $5 ~ "^(/var/lib/docker|/run/docker|/tmp/pipeline-swarm)(/|$)" {print $5}' \
    /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
# Its own /sys: sysfs mounted from inside the network namespace shows that namespace's
# interfaces (as `ip netns exec` does), so /sys/class/net/eth0 is its eth0.
mount -t sysfs sysfs /sys
dir="$1"; shift
for target in "$@"; do
    mount --bind "$dir/root$target" "$target"
done
echo ready
exec sleep infinity
"""


class NginxHost:
    """An nginx host of its own (see the module's docstring). Built by `NginxHost.start`."""

    def __init__(self, bridge: str, network: str, address: Optional[str], routes: Sequence[Tuple[str, str]],
                 form: str, allowed_networks: Sequence[str], user: str) -> None:
        assert form in ("upstream", "set", "live"), form
        self.name = f"pnh-{uuid.uuid4().hex[:6]}"
        self.owner = f"netns:{self.name}"
        self.form = form
        self.user = user
        self.network = network
        self.dir = STATE / self.name
        self.holder: Optional[subprocess.Popen] = None
        self.address = ""
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "-n", self.name, "link", "set", "lo", "up")
            self.address = address or claim(_hosts_of(network), self.owner)
            if address:
                claim([address], self.owner)
            _veth_into(self.name, bridge, "eth0", self.address, ipaddress.IPv4Network(network).prefixlen)
            for destination, gateway in routes:
                sh("ip", "-n", self.name, "route", "add", destination, "via", gateway)
            self._make_files(allowed_networks)
            self._enter_mounts()
            self.start_sshd()
            self.run("nginx")
            wait_for(self._nginx_answers, 10, interval=0.1, what=f"nginx in {self.name} to answer")
        except BaseException:
            self.stop()
            raise

    @classmethod
    def start(cls, bridge: str = "pswarm0", network: str = "10.99.0.0/24", address: Optional[str] = None,
              routes: Sequence[Tuple[str, str]] = (), form: str = "upstream",
              allowed_networks: Sequence[str] = ("10.99.0.0/24",), user: str = "root") -> "NginxHost":
        """A host on `bridge` at `address` (default: one claimed in `network`, .20 and up), with
        only the connected route plus `routes` ((destination, gateway) pairs)."""
        return cls(bridge, network, address, routes, form, allowed_networks, user)

    @classmethod
    def behind(cls, router: Router, **options: object) -> "NginxHost":
        """A host on the router's far bridge, reaching the router's upstream network through it only."""
        assert router.bridge is not None
        return cls.start(router.bridge.name, router.network,
                         routes=[(router.upstream_network, router.gateway)], **options)  # type: ignore[arg-type]

    # -- what the tool and the test are given ------------------------------------------------

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def env(self) -> Dict[str, str]:
        """The settings that make the tool use this host as its nginx host."""
        settings = {"NGINX_HOST": self.address, "NGINX_SSH_USER": self.user, "NGINX_SSH_PORT": "22",
                    "NGINX_SSH_KEY": str(self.key), "NGINX_SSH_KNOWN_HOSTS": str(self.known_hosts)}
        if self.form == "upstream":
            settings["NGINX_INCLUDE"] = "/etc/nginx/conf.d/service-upstream.inc"
        return settings

    def file(self, path: str) -> Path:
        """The host's file `path` (under one of PRIVATE_DIRS), as a path on this machine."""
        assert any(path == d or path.startswith(d + "/") for d in PRIVATE_DIRS), path
        return self.dir / "root" / path.lstrip("/")

    @property
    def include(self) -> Path:
        name = "service-upstream.inc" if self.form == "upstream" else "service-url.inc"
        return self.file(f"/etc/nginx/conf.d/{name}")

    @property
    def preview_include(self) -> Path:
        return self.file("/etc/nginx/conf.d/service-url-preview.inc")

    @property
    def access_log(self) -> Path:
        return self.file("/var/log/nginx/app.access.log")

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    def get(self, path: str = "/", preview: bool = False, timeout: float = 5.0) -> requests.Response:
        port = 8081 if preview else 80
        session = requests.Session()
        session.trust_env = False   # straight to the namespace, never a proxy
        with session:
            return session.get(f"http://{self.address}:{port}{path}", timeout=timeout,
                               headers={"Connection": "close"})

    def argv(self, *command: str) -> List[str]:
        """`command` as run inside the host's network and mount namespaces."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "--net", "--mount", "--", *command]

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh(*self.argv(*command), check=check, timeout=timeout)

    def routes(self) -> str:
        return sh("ip", "-n", self.name, "-4", "route").stdout

    # -- sshd ----------------------------------------------------------------------------------

    def sshd_pid(self) -> Optional[int]:
        """The sshd listener's pid, if it runs (not a zombie its parent has yet to reap)."""
        try:
            pid = int((self.dir / "sshd.pid").read_text())
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return pid if state != "Z" and _exe(pid) == SSHD else None

    def start_sshd(self) -> None:
        (self.dir / "sshd.pid").unlink(missing_ok=True)
        self.run(SSHD, "-f", str(self.dir / "sshd_config"), "-E", str(self.dir / "sshd.log"))
        wait_for(lambda: self.sshd_pid() is not None and self._can_connect(22), 10, interval=0.05,
                 what=f"the sshd of {self.name}")

    def kill_sshd(self, sessions: bool = True) -> None:
        """SIGKILL the sshd (its listener; with `sessions`, every sshd process inside, so open
        SSH connections die too)."""
        pids = {self.sshd_pid()} - {None}
        if sessions:
            pids |= {pid for pid in processes_in(self.name) if _exe(pid) == SSHD}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)   # type: ignore[arg-type]
            except ProcessLookupError:
                pass
        (self.dir / "sshd.pid").unlink(missing_ok=True)
        wait_for(lambda: not self._can_connect(22), 5, interval=0.05, what=f"the sshd of {self.name} to die")

    # -- making and removing -------------------------------------------------------------------

    def _make_files(self, allowed_networks: Sequence[str]) -> None:
        self.dir.mkdir(parents=True)
        root = self.dir / "root"
        for private in PRIVATE_DIRS:
            (root / private.lstrip("/")).mkdir(parents=True)
        (root / "run" / "sshd").mkdir(mode=0o755)   # sshd's privilege separation directory
        for name in ("id_ed25519", "ssh_host_ed25519_key"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.name}-{name}", "-f", str(self.dir / name))
        (self.dir / "authorized_keys").write_text((self.dir / "id_ed25519.pub").read_text())
        host_key = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"{self.address} {' '.join(host_key)}\n")
        (self.dir / "sshd_config").write_text(_sshd_config(self.dir))
        sh(SSHD, "-t", "-f", str(self.dir / "sshd_config"))
        self._write_nginx_config(root / "etc" / "nginx", list(allowed_networks))

    def _write_nginx_config(self, etc: Path, allowed_networks: List[str]) -> None:
        """The shipped files, unmodified, where an operator puts them, and a main nginx.conf."""
        conf_d = etc / "conf.d"
        conf_d.mkdir()
        modules: List[str] = []
        placeholder = "127.0.0.1:9"   # discard port: nothing serves until the first deploy
        if self.form == "live":
            modules = list(LUA_MODULES)
            files = [NGINX_CONF_D / "00-log-format.conf", NGINX_LIVE / "app-live.conf"]
            token = etc / "pipeline-admin.token"
            token.touch(mode=0o600)
            token.write_text(uuid.uuid4().hex + uuid.uuid4().hex + "\n")
        else:
            server = "app-upstream.conf" if self.form == "upstream" else "app.conf"
            files = [NGINX_CONF_D / name for name in ("00-log-format.conf", server, "app-preview.conf")]
            if self.form == "upstream":
                self.include.write_text(f"upstream app_live {{\n    server {placeholder};\n}}\n")
            else:
                self.include.write_text(f"set $service_url http://{placeholder};\n")
            self.preview_include.write_text(f"set $preview_url http://{placeholder};\n")
        for source in files:
            text = source.read_text()
            if source.name == "app-live.conf":
                text = _live_settings(text, Path("/etc/nginx/pipeline-admin.token"), allowed_networks)
            (conf_d / source.name).write_text(text)
        (etc / "nginx.conf").write_text("\n".join([
            "# Written by teststack/nginxhost.py: an nginx host of the test's own.",
            "worker_processes 1;", "pid /run/nginx.pid;", "error_log /var/log/nginx/error.log;",
            *modules,
            "events { worker_connections 4096; }",
            "http {", "    access_log off;",
            *(f"    include /etc/nginx/conf.d/{source.name};" for source in files),
            "}", ""]))

    def _enter_mounts(self) -> None:
        """The holder: a process in the network namespace and a private mount namespace with the
        bind mounts; every command (sshd, nginx, `run`) joins both through its pid."""
        self.holder = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.name}", "unshare", "--mount", "--propagation", "private",
             "sh", "-c", _MOUNT_SCRIPT, "sh", str(self.dir), *PRIVATE_DIRS],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        self.holder.stdout.close()
        if line.strip() != "ready":
            assert self.holder.stderr is not None
            raise RuntimeError(f"the mount namespace of {self.name} was not made: {self.holder.stderr.read()}")
        assert self.holder.stderr is not None
        self.holder.stderr.close()

    def _can_connect(self, port: int) -> bool:
        try:
            socket.create_connection((self.address, port), timeout=1).close()
            return True
        except OSError:
            return False

    def _nginx_answers(self) -> bool:
        try:
            self.get("/", timeout=2)
            return True
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """Kill everything inside (nginx, sshd and its sessions, the holder), delete the namespace
        (its veth with it) and the host's files, and give its address back."""
        _kill_all_in(self.name)
        if self.holder is not None:
            self.holder.wait(10)
        sh("ip", "netns", "delete", self.name, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.address:
            release(self.address, self.owner)

    def __enter__(self) -> "NginxHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _sshd_config(directory: Path) -> str:
    """The stack's sshd (scripts/stack.sh) on port 22 of the host's own address, and its files."""
    return f"""# Written by teststack/nginxhost.py.
Port 22
ListenAddress 0.0.0.0
HostKey {directory}/ssh_host_ed25519_key
PidFile {directory}/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile {directory}/authorized_keys
StrictModes no
UsePAM no
PrintMotd no
X11Forwarding no
Subsystem sftp internal-sftp
# As the stack's sshd: a stale pyenv rehash lock must not make every login a minute late.
SetEnv PYENV_REHASH_TIMEOUT=1
MaxSessions 64
MaxStartups 64:30:128
"""
