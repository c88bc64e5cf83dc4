#!/usr/bin/env bash
# Bring up the real local stack that the integration tests and the demo deploy to:
#   dockerd, an sshd on 127.0.0.1:$SSH_PORT (the "remote" deploy host), a docker
#   registry with htpasswd auth on 127.0.0.1:5000, the scratch JRE base image and the
#   demo jar.
#
# Usage: scripts/stack.sh start|stop [--all]|status|env|install
#
#   start    install what is missing, start what is not running, verify it all
#            (ssh login as root and as SSH_OTHER_USER, registry login); blackhole
#            routes for the private ranges
#            (see ensure_blackholes); idempotent, safe to run repeatedly
#   stop     stop the sshd and registry that start launched (by pid file);
#            --all also stops dockerd if (and only if) start launched it
#   status   show what is running
#   env      print `export` lines for tests/demo:  eval "$(scripts/stack.sh env)"
#   install  apt-get install the Debian packages the stack needs (only missing ones)
#   restart-dockerd  stop dockerd and start it again (live-restore keeps containers up)
#
# All state lives in ${STACK_DIR:-/tmp/pipeline-stack}. Everything started here runs
# in the background, in its own session, and outlives this script.
#
# The dockerd managed here is named by its own pid file and socket, never by process name:
# tests run more dockerd on this machine (swarm nodes), and those are not ours to touch.
# DOCKERD_PIDFILE, DOCKERD_SOCKET, DOCKERD_CONFIG and DOCKERD_ARGS (more dockerd flags, split on
# spaces) name another daemon; they exist to try this script on a throwaway dockerd.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

STACK_DIR="${STACK_DIR:-/tmp/pipeline-stack}"
SSH_PORT="${SSH_PORT:-2222}"
REGISTRY_PORT=5000
REGISTRY_ADDR="127.0.0.1:$REGISTRY_PORT"
REGISTRY_USER=pipeline
JRE_IMAGE="${JRE_IMAGE:-pipeline/jre:17}"

DOCKERD_PIDFILE="${DOCKERD_PIDFILE:-/var/run/docker.pid}"
DOCKERD_SOCKET="${DOCKERD_SOCKET:-/var/run/docker.sock}"
DOCKERD_CONFIG="${DOCKERD_CONFIG:-/etc/docker/daemon.json}"
read -r -a DOCKERD_ARGS <<<"${DOCKERD_ARGS:-}"
# Every docker command below (and in the build scripts it runs) talks to that daemon, whatever
# DOCKER_HOST the caller had (it may name a swarm manager).
export DOCKER_HOST="unix://$DOCKERD_SOCKET"
unset DOCKER_CONTEXT

SSH_KEY="$STACK_DIR/id_ed25519"
# A login that is not root, with the same key (the tests' "nginx's log is 0640 root:adm and the
# SSH user is not in adm" case): created by start, no password, home in STACK_DIR.
SSH_OTHER_USER="${SSH_OTHER_USER:-pipeline-other}"
SSH_KNOWN_HOSTS="$STACK_DIR/known_hosts"
REGISTRY_PASSWORD_FILE="$STACK_DIR/registry-password"

PACKAGES=(docker.io nginx-light openssh-server docker-registry wrk libnginx-mod-http-lua
    psmisc curl apache2-utils
    # The dependency jars of the Spring Boot-layout test service (demo/layered/build.py).
    libtomcat10-embed-java libjackson2-databind-java libjackson2-core-java libjackson2-annotations-java
    libguava-java libbcprov-java libcommons-math3-java libcommons-lang3-java libicu4j-java
    # SQLite's JDBC driver and its JNI library, for the release-phase tests' real database
    # (demo/build.sh's app-sqlite.jar on pipeline/jre-sql:17, teststack/sqlite.py).
    libxerial-sqlite-jdbc-java libxerial-sqlite-jdbc-jni)

log() { echo "stack: $*"; }
note() { echo "stack: note: $*" >&2; }
die() {
    echo "stack: ERROR: $*" >&2
    exit 1
}

# ---------------------------------------------------------------------------- helpers

# True if something accepts TCP connections on 127.0.0.1:$1 (loopback only).
port_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# True if the pid in file $1 is alive and its command line contains $2. The name check
# guards against a stale pid file whose pid was reused by an unrelated process.
pid_alive() {
    local pidfile="$1" name="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(<"$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

# Stop the process recorded in pid file $1 (if it is $2): TERM, then KILL after 10 s.
stop_pidfile() {
    local pidfile="$1" name="$2" pid i
    if ! pid_alive "$pidfile" "$name"; then
        log "$name: not running"
        rm -f "$pidfile"
        return 0
    fi
    pid="$(<"$pidfile")"
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        note "$name (pid $pid) ignored SIGTERM for 10 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "$name: stopped (pid $pid)"
}

# Start "$@" detached from this script (own session, no stdin, output to log $1).
# Prints the pid. Closes fd 9 (the stack lock) so the daemon does not hold the lock.
spawn() {
    local logfile="$1"
    shift
    setsid "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
    echo $!
}

# Write $2 to file $1 only if the content differs; return 0 if it changed.
write_if_changed() {
    local file="$1" content="$2"
    if [[ -f "$file" ]] && [[ "$(<"$file")" == "$content" ]]; then
        return 1
    fi
    printf '%s\n' "$content" >"$file"
    return 0
}

# --------------------------------------------------------------------------- install

cmd_install() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "packages: all installed"
        return 0
    fi
    [[ $EUID -eq 0 ]] || die "need root to install: ${missing[*]}"
    log "installing: ${missing[*]}"

    # Keep the packages' maintainer scripts from starting their services (the Debian
    # docker-registry and sshd would grab :5000 and :22 with their default configs);
    # this script runs its own instances. 101 = "action forbidden" for invoke-rc.d.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        own_policy=1
    fi
    # NEEDRESTART_SUSPEND: skip needrestart's interactive service-restart pass.
    local rc=0
    {
        export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
        apt-get update -q && apt-get install -y -q "${missing[@]}"
    } || rc=$?
    ((own_policy)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get failed (exit $rc) installing: ${missing[*]}"
}

# --------------------------------------------------------------------------- dockerd

# live-restore keeps containers running while dockerd itself restarts (an upgrade, a crash):
# the live color goes on serving. It is reloadable, so a running dockerd gets a SIGHUP.
ensure_live_restore() {
    local conf="$DOCKERD_CONFIG" pid
    if [[ ! -s "$conf" ]]; then
        mkdir -p "$(dirname "$conf")"
        printf '{\n  "live-restore": true\n}\n' >"$conf"
    elif ! grep -q '"live-restore": *true' "$conf"; then
        note "$conf exists without \"live-restore\": true; containers stop while dockerd restarts"
        return 0
    fi
    if docker info >/dev/null 2>&1 &&
        [[ "$(docker info --format '{{.LiveRestoreEnabled}}')" != true ]]; then
        pid="$(dockerd_pid)" || die "dockerd answers on $DOCKERD_SOCKET but $DOCKERD_PIDFILE names no running dockerd; cannot send it SIGHUP"
        kill -HUP "$pid"
        sleep 1
        log "dockerd: live-restore enabled (SIGHUP to pid $pid)"
    fi
}

# Print the pid of the dockerd this script manages, read from the pid file dockerd itself
# writes (it refuses to start while that file names a live process, and removes it on exit).
dockerd_pid() {
    pid_alive "$DOCKERD_PIDFILE" dockerd || return 1
    echo "$(<"$DOCKERD_PIDFILE")"
}

ensure_dockerd() {
    command -v docker >/dev/null || die "no docker client on PATH"
    ensure_live_restore
    if docker info >/dev/null 2>&1; then
        log "dockerd: running"
        return 0
    fi
    command -v dockerd >/dev/null || die "docker daemon not reachable and no dockerd binary"
    log "dockerd: starting (log $STACK_DIR/dockerd.log)"
    spawn "$STACK_DIR/dockerd.log" dockerd --pidfile "$DOCKERD_PIDFILE" -H "unix://$DOCKERD_SOCKET" \
        --config-file "$DOCKERD_CONFIG" "${DOCKERD_ARGS[@]}" >"$STACK_DIR/dockerd.pid"
    local i
    for ((i = 0; i < 120; i++)); do
        docker info >/dev/null 2>&1 && {
            log "dockerd: up after $((i / 2)) s"
            return 0
        }
        pid_alive "$STACK_DIR/dockerd.pid" dockerd ||
            die "dockerd exited; last log lines:$(printf '\n')$(tail -n 20 "$STACK_DIR/dockerd.log")"
        sleep 0.5
    done
    die "dockerd did not answer within 60 s; see $STACK_DIR/dockerd.log"
}

# ---------------------------------------------------------------------------- sysctl

tune_sysctl() {
    # Load tests through nginx open many short-lived loopback connections; without
    # reuse of TIME_WAIT sockets the ephemeral port range runs out.
    if echo 1 2>/dev/null >/proc/sys/net/ipv4/tcp_tw_reuse; then
        log "sysctl: net.ipv4.tcp_tw_reuse=1"
    else
        note "could not set net.ipv4.tcp_tw_reuse=1 (read-only /proc/sys?); long load tests may run out of ports"
    fi
}

# ---------------------------------------------------------------------- safety net

# A probe of a private address that no local bridge covers (a docker network that is gone, or one
# on another engine) must not leave by the default route, where something outside may answer it.
# Blackhole routes for the private ranges drop it here instead; docker's bridges are more specific
# and still win. The resolver, if it is a private address reached through the default gateway,
# keeps a /32 route via that gateway. `ip route replace` makes every run end in the same state.
PRIVATE_RANGES=(10.0.0.0/8 172.16.0.0/12 192.168.0.0/16)
BLACKHOLE_METRIC=4000

is_private_ipv4() {
    local a b c d
    IFS=. read -r a b c d <<<"$1"
    [[ "$a" =~ ^[0-9]+$ && "$b" =~ ^[0-9]+$ && -n "$c" && -n "$d" ]] || return 1
    ((a == 10)) || ((a == 172 && b >= 16 && b <= 31)) || ((a == 192 && b == 168))
}

ensure_blackholes() {
    if [[ $EUID -ne 0 ]]; then
        note "not root: no blackhole routes for private ranges (unrouted private probes may leave by the default route)"
        return 0
    fi
    local default gw dev ns route range
    default="$(ip -4 route show default | head -n1)"
    gw="$(awk '{for (i = 1; i < NF; i++) if ($i == "via") print $(i + 1)}' <<<"$default")"
    dev="$(awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' <<<"$default")"
    for ns in $(awk '$1 == "nameserver" {print $2}' /etc/resolv.conf 2>/dev/null); do
        is_private_ipv4 "$ns" || continue
        route="$(ip -4 route get "$ns" 2>/dev/null | head -n1 || true)"
        # Directly connected (no gateway): that route is more specific than a blackhole; leave it.
        [[ -n "$route" && "$route" != *" via "* ]] && continue
        # Reached through some other gateway than the default one: a more specific route already.
        [[ -n "$route" && "$route" != *" via $gw dev $dev "* ]] && continue
        if [[ -z "$gw" ]]; then
            note "resolver $ns: no default gateway to keep it reachable by; not adding blackhole routes"
            return 0
        fi
        ip -4 route replace "$ns/32" via "$gw" dev "$dev"
        log "route: resolver $ns/32 via $gw ($dev)"
    done
    for range in "${PRIVATE_RANGES[@]}"; do
        ip -4 route replace blackhole "$range" metric "$BLACKHOLE_METRIC"
    done
    log "route: blackhole ${PRIVATE_RANGES[*]} (metric $BLACKHOLE_METRIC); local bridges still win"
}

# ------------------------------------------------------------------------------ sshd

sshd_config_text() {
    cat <<EOF
# Generated by scripts/stack.sh; rewritten on every start.
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $STACK_DIR/ssh_host_ed25519_key
PidFile $STACK_DIR/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $STACK_DIR/authorized_keys
# StrictModes would reject the key: it requires every parent directory of
# authorized_keys to be non-world-writable, and STACK_DIR usually lives under /tmp.
StrictModes no
# PAM's session modules (pam_loginuid, pam_systemd) fail in some containers; key
# authentication needs no PAM.
UsePAM no
PrintMotd no
X11Forwarding no
# The deploy tool may upload files over SFTP and run many commands in parallel.
Subsystem sftp /usr/lib/openssh/sftp-server
# Every session (the SFTP subsystem too) starts in the user's login shell. On a machine whose
# ~/.bashrc runs pyenv's init, that shell runs \`pyenv rehash\`, which waits up to 60 s for a lock
# file; a shell killed mid-rehash (tests tear down namespaces and kill runs on purpose) leaves the
# lock behind, and every later session would start a minute late. A second is all it may wait here.
SetEnv PYENV_REHASH_TIMEOUT=1
MaxSessions 64
MaxStartups 64:30:128
EOF
}

ensure_sshd() {
    local sshd=/usr/sbin/sshd # sshd insists on an absolute path (it re-execs itself)
    [[ -x "$sshd" ]] || die "no $sshd (package openssh-server)"

    # With UsePAM no, sshd refuses every login, keys included, to a locked account.
    if [[ "$(getent shadow root | cut -d: -f2)" == '!'* ]]; then
        die "root's password field starts with '!' (locked), so sshd refuses key logins for root; unlock it without setting a password: usermod -p '*' root"
    fi

    mkdir -p /run/sshd # privilege-separation directory, normally made by the init script
    chmod 0755 /run/sshd

    [[ -f "$STACK_DIR/ssh_host_ed25519_key" ]] ||
        ssh-keygen -q -t ed25519 -N '' -C pipeline-stack-host -f "$STACK_DIR/ssh_host_ed25519_key"
    [[ -f "$SSH_KEY" ]] ||
        ssh-keygen -q -t ed25519 -N '' -C pipeline-stack-client -f "$SSH_KEY"
    # 0644: sshd reads it as the user logging in (root, or $SSH_OTHER_USER); a public key is no secret.
    install -m 644 "$SSH_KEY.pub" "$STACK_DIR/authorized_keys"
    # "[host]:port" is how OpenSSH and paramiko's load_host_keys() name hosts on a
    # port other than 22. Not hashed, so tests can read it.
    local hostkey
    hostkey="$(cut -d' ' -f1,2 "$STACK_DIR/ssh_host_ed25519_key.pub")"
    printf '[127.0.0.1]:%s,[localhost]:%s %s\n' "$SSH_PORT" "$SSH_PORT" "$hostkey" >"$SSH_KNOWN_HOSTS"

    local changed=0
    write_if_changed "$STACK_DIR/sshd_config" "$(sshd_config_text)" && changed=1
    "$sshd" -t -f "$STACK_DIR/sshd_config" || die "sshd rejects $STACK_DIR/sshd_config"

    if pid_alive "$STACK_DIR/sshd.pid" sshd; then
        if ((changed == 0)); then
            log "sshd: running on 127.0.0.1:$SSH_PORT"
            return 0
        fi
        log "sshd: config changed, restarting"
        stop_pidfile "$STACK_DIR/sshd.pid" sshd
    fi
    port_open "$SSH_PORT" && die "127.0.0.1:$SSH_PORT is already taken by another process (set SSH_PORT)"

    # sshd daemonizes by itself and writes its PidFile.
    "$sshd" -f "$STACK_DIR/sshd_config" -E "$STACK_DIR/sshd.log" 9>&-
    local i
    for ((i = 0; i < 50; i++)); do
        port_open "$SSH_PORT" && break
        sleep 0.1
    done
    pid_alive "$STACK_DIR/sshd.pid" sshd ||
        die "sshd did not start; last log lines:$(printf '\n')$(tail -n 20 "$STACK_DIR/sshd.log" 2>/dev/null)"
    log "sshd: started on 127.0.0.1:$SSH_PORT (pid $(<"$STACK_DIR/sshd.pid"))"
}

# $SSH_OTHER_USER: a system user outside `adm`, shell /bin/sh, home $STACK_DIR/home-other. With
# UsePAM no, sshd refuses every login to a locked account ('!' in shadow, as useradd leaves it), so
# its password field is set to '*': no password works, the key does (AuthorizedKeysFile is one file
# for every user).
ensure_ssh_user() {
    local home="$STACK_DIR/home-other"
    if ! getent passwd "$SSH_OTHER_USER" >/dev/null; then
        [[ $EUID -eq 0 ]] || die "need root to create the user $SSH_OTHER_USER"
        useradd --system --shell /bin/sh --home-dir "$home" --no-create-home "$SSH_OTHER_USER"
        log "user $SSH_OTHER_USER: created (logs in over ssh with the stack's key; not in adm)"
    fi
    if [[ "$(getent shadow "$SSH_OTHER_USER" | cut -d: -f2)" == '!'* ]]; then
        usermod -p '*' "$SSH_OTHER_USER"
    fi
    id -nG "$SSH_OTHER_USER" | tr ' ' '\n' | grep -qx adm &&
        die "$SSH_OTHER_USER is in the group adm: the tests need a user that cannot read adm's files"
    mkdir -p "$home"
    chown "$SSH_OTHER_USER" "$home"
}

verify_ssh() {
    local user
    for user in root "$SSH_OTHER_USER"; do
        ssh -i "$SSH_KEY" -p "$SSH_PORT" \
            -o UserKnownHostsFile="$SSH_KNOWN_HOSTS" -o GlobalKnownHostsFile=/dev/null \
            -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes \
            -o ConnectTimeout=5 "$user@127.0.0.1" true ||
            die "ssh login as $user@127.0.0.1:$SSH_PORT failed; see $STACK_DIR/sshd.log"
        log "ssh: $user@127.0.0.1:$SSH_PORT login OK"
    done
}

# -------------------------------------------------------------------------- registry

registry_config_text() {
    cat <<EOF
# Generated by scripts/stack.sh; rewritten on every start.
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $STACK_DIR/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
  secret: $(<"$STACK_DIR/registry-http-secret")
auth:
  htpasswd:
    realm: pipeline-registry
    path: $STACK_DIR/registry-htpasswd
EOF
}

ensure_registry() {
    local bin=/usr/bin/docker-registry
    [[ -x "$bin" ]] || die "no $bin (package docker-registry)"
    command -v htpasswd >/dev/null || die "no htpasswd (package apache2-utils)"

    mkdir -p "$STACK_DIR/registry"
    # Secrets are generated once and kept, so a restart keeps working credentials.
    # 18 random bytes -> 24 base64 chars, no padding; '+/' swapped to stay URL/shell-safe.
    (
        umask 077
        [[ -s "$REGISTRY_PASSWORD_FILE" ]] ||
            head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$REGISTRY_PASSWORD_FILE"
        [[ -s "$STACK_DIR/registry-http-secret" ]] ||
            head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$STACK_DIR/registry-http-secret"
    )
    chmod 600 "$REGISTRY_PASSWORD_FILE"

    local changed=0
    # Regenerate the bcrypt entry only if it no longer matches the password file.
    # -i reads the password from stdin (same as -b, but keeps it out of `ps`).
    if ! htpasswd -v -i "$STACK_DIR/registry-htpasswd" "$REGISTRY_USER" \
        <"$REGISTRY_PASSWORD_FILE" >/dev/null 2>&1; then
        (umask 077 && htpasswd -B -n -i "$REGISTRY_USER" <"$REGISTRY_PASSWORD_FILE" \
            >"$STACK_DIR/registry-htpasswd")
        changed=1
    fi
    write_if_changed "$STACK_DIR/registry.yml" "$(registry_config_text)" && changed=1

    if pid_alive "$STACK_DIR/registry.pid" docker-registry; then
        if ((changed == 0)); then
            log "registry: running on $REGISTRY_ADDR"
            return 0
        fi
        log "registry: config changed, restarting"
        stop_pidfile "$STACK_DIR/registry.pid" docker-registry
    fi
    port_open "$REGISTRY_PORT" && die "$REGISTRY_ADDR is already taken by another process"

    spawn "$STACK_DIR/registry.log" "$bin" serve "$STACK_DIR/registry.yml" >"$STACK_DIR/registry.pid"
    local i code
    for ((i = 0; i < 100; i++)); do
        # An authenticating registry answers /v2/ with 401 once it is up.
        code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$REGISTRY_ADDR/v2/" || true)"
        [[ "$code" == 401 ]] && break
        pid_alive "$STACK_DIR/registry.pid" docker-registry ||
            die "registry exited; last log lines:$(printf '\n')$(tail -n 20 "$STACK_DIR/registry.log")"
        sleep 0.3
    done
    [[ "$code" == 401 ]] || die "registry not answering on $REGISTRY_ADDR (last HTTP code '$code')"
    log "registry: started on $REGISTRY_ADDR (pid $(<"$STACK_DIR/registry.pid"))"
}

verify_registry() {
    # dockerd treats 127.0.0.0/8 registries as insecure (plain http) by default.
    # A throw-away DOCKER_CONFIG keeps the final logout from dropping credentials the
    # user (or a running test) stored in ~/.docker/config.json for this registry.
    local cfg rc=0
    cfg="$(mktemp -d)"
    DOCKER_CONFIG="$cfg" docker login -u "$REGISTRY_USER" --password-stdin "$REGISTRY_ADDR" \
        <"$REGISTRY_PASSWORD_FILE" >/dev/null 2>"$cfg/login.err" || rc=$?
    if ((rc == 0)); then
        DOCKER_CONFIG="$cfg" docker logout "$REGISTRY_ADDR" >/dev/null || rc=$?
    else
        cat "$cfg/login.err" >&2
    fi
    rm -rf "$cfg"
    ((rc == 0)) || die "docker login/logout $REGISTRY_ADDR as $REGISTRY_USER failed"
    log "registry: docker login/logout as $REGISTRY_USER OK"
}

# ---------------------------------------------------------------------------- images

build_artifacts() {
    JRE_IMAGE="$JRE_IMAGE" "$repo/docker/jre/build.sh"
    "$repo/demo/build.sh"
}

# -------------------------------------------------------------------------- commands

cmd_start() {
    ensure_blackholes
    cmd_install
    ensure_dockerd
    tune_sysctl
    ensure_sshd
    ensure_ssh_user
    verify_ssh
    ensure_registry
    verify_registry
    build_artifacts
    log "all up; use: eval \"\$($0 env)\""
}

# Stop dockerd and start it again (the fault test "the daemon restarts while the old version
# is live"). With live-restore the containers keep running meanwhile.
cmd_restart_dockerd() {
    local pid i
    pid="$(dockerd_pid)" || die "no running dockerd in $DOCKERD_PIDFILE"
    kill -TERM "$pid"
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "dockerd (pid $pid) did not stop within 20 s"
    rm -f "$STACK_DIR/dockerd.pid"
    log "dockerd: stopped (pid $pid)"
    ensure_dockerd
}

cmd_stop() {
    stop_pidfile "$STACK_DIR/sshd.pid" sshd
    stop_pidfile "$STACK_DIR/registry.pid" docker-registry
    if [[ "${1:-}" == --all ]]; then
        if [[ -f "$STACK_DIR/dockerd.pid" ]]; then
            stop_pidfile "$STACK_DIR/dockerd.pid" dockerd
        else
            log "dockerd: not started by stack.sh, leaving it running"
        fi
    fi
}

cmd_status() {
    local rc=0
    if docker info >/dev/null 2>&1; then log "dockerd: up"; else log "dockerd: DOWN" && rc=1; fi
    if pid_alive "$STACK_DIR/sshd.pid" sshd; then
        log "sshd: up on 127.0.0.1:$SSH_PORT (pid $(<"$STACK_DIR/sshd.pid"))"
    else log "sshd: DOWN" && rc=1; fi
    if pid_alive "$STACK_DIR/registry.pid" docker-registry; then
        log "registry: up on $REGISTRY_ADDR (pid $(<"$STACK_DIR/registry.pid"))"
    else log "registry: DOWN" && rc=1; fi
    if docker image inspect "$JRE_IMAGE" >/dev/null 2>&1; then log "image $JRE_IMAGE: present"
    else log "image $JRE_IMAGE: MISSING" && rc=1; fi
    if [[ -f "$repo/demo/build/libs/app.jar" ]]; then log "demo jar: present"
    else log "demo jar: MISSING" && rc=1; fi
    return "$rc"
}

cmd_env() {
    local name
    for name in STACK_DIR SSH_PORT SSH_KEY SSH_KNOWN_HOSTS SSH_OTHER_USER REGISTRY_ADDR REGISTRY_USER \
        REGISTRY_PASSWORD_FILE JRE_IMAGE; do
        printf 'export %s=%q\n' "$name" "${!name}"
    done
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
    env)
        cmd_env
        return 0
        ;;
    start | stop | status | install | restart-dockerd) ;;
    -h | --help | help)
        usage
        return 0
        ;;
    *)
        usage >&2
        return 2
        ;;
    esac

    mkdir -p "$STACK_DIR"
    chmod 755 "$STACK_DIR"
    # Serialise concurrent invocations (e.g. parallel test sessions starting the stack).
    exec 9>"$STACK_DIR/.lock"
    flock -w 600 9 || die "another stack.sh holds $STACK_DIR/.lock"

    case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status ;;
    install) cmd_install ;;
    restart-dockerd) cmd_restart_dockerd ;;
    esac
}

# Sourced (by a test of one function), define the functions only.
[[ "${BASH_SOURCE[0]}" != "$0" ]] || main "$@"
