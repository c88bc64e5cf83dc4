#!/usr/bin/env bash
# A Docker Swarm of N nodes on this one machine, for the swarm target's tests and demo:
#   N dockerd, each in its own network namespace (and UTS namespace, so each has its own host
#   name), joined into one swarm (node 1 is the manager), and a registry the nodes reach.
#
# Usage: scripts/swarm.sh start [N]|stop|env|status|stop-node I|push IMAGE [NAME]
#
#   start [N]    bring up N nodes (default 3, or as many as the running swarm has); idempotent:
#                starts only what is missing, a stopped node's dockerd comes back and rejoins
#   stop         stop every node, the registry, and remove the namespaces, bridge and state
#                (the nodes' dockerd logs are kept in $SWARM_DIR.logs)
#   env          print `export` lines: eval "$(scripts/swarm.sh env)"
#   status       show each node's dockerd, its swarm state, and the swarm's node list
#   stop-node I  stop node I's dockerd (by its pid file), leaving its state: a node that is down
#   push IMAGE [NAME]  copy IMAGE from the stack's dockerd (DOCKERD_SOCKET) into the swarm's registry as
#                REGISTRY/NAME (default: IMAGE's own name) through the manager node
#
# The network: bridge pswarm0 with 10.99.0.1/24 on the host; node I is 10.99.0.(10+I) in netns
# pswarm-nI (veth pswarm-hI on the host side). The namespaces have no default route, so nothing
# a node runs can leave the machine. The registry listens on 10.99.0.1:5001 (plain http, which the
# nodes trust as insecure; only this host and the namespaces reach it) with password auth for user
# pipeline (password in $SWARM_DIR/registry-password).
#
# The kernel here has no IPVS, so the routing mesh and VIPs do not work: services publish their
# ports in host mode, with endpoint mode dnsrr.
#
# Every daemon is acted on by its own pid file, never by process name: the machine runs other
# dockerd (the stack's, which this script never touches). State lives in
# ${SWARM_DIR:-/tmp/pipeline-swarm}.
set -euo pipefail

SWARM_DIR="${SWARM_DIR:-/tmp/pipeline-swarm}"
BRIDGE=pswarm0
SUBNET_PREFIX=10.99.0
HOST_ADDR="$SUBNET_PREFIX.1"
REGISTRY_PORT=5001
SWARM_REGISTRY="$HOST_ADDR:$REGISTRY_PORT"
REGISTRY_USER=pipeline
REGISTRY_PASSWORD_FILE="$SWARM_DIR/registry-password"
# Overlay networks (swarm's ingress) get their subnets from here, well away from the bridge's.
ADDR_POOL=10.98.0.0/16
# The docker CLI below talks to the nodes only; DOCKER_HOST of the caller must not leak in.
unset DOCKER_HOST DOCKER_CONTEXT

log() { echo "swarm: $*"; }
note() { echo "swarm: note: $*" >&2; }
die() {
    echo "swarm: ERROR: $*" >&2
    exit 1
}

node_dir() { echo "$SWARM_DIR/n$1"; }
node_ns() { echo "pswarm-n$1"; }
node_addr() { echo "$SUBNET_PREFIX.$((10 + $1))"; }
node_sock() { echo "unix://$(node_dir "$1")/docker.sock"; }
ndocker() {
    local i="$1"
    shift
    docker -H "$(node_sock "$i")" "$@"
}

# True if the pid in file $1 is alive and its command line contains $2 (guards a reused pid).
pid_alive() {
    local pidfile="$1" name="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(<"$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$name"* ]]
}

# Stop the process in pid file $1 (if it is $2): TERM, then KILL after $3 seconds (default 30).
stop_pidfile() {
    local pidfile="$1" name="$2" wait="${3:-30}" pid i
    if ! pid_alive "$pidfile" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    pid="$(<"$pidfile")"
    kill -TERM "$pid"
    for ((i = 0; i < wait * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        note "$name (pid $pid) ignored SIGTERM for $wait s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
    log "$name: stopped (pid $pid)"
}

# Unmount everything mounted under $1, deepest first. dockerd bind-mounts its data-root onto
# itself and leaves that mount behind when it exits; rm -rf must not walk into live mounts.
umount_under() {
    local dir="$1" target
    [[ -d "$dir" ]] || return 0
    while read -r target; do
        umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
    done < <(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
}

spawn() {
    local logfile="$1"
    shift
    setsid "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
}

# How many nodes the state directory knows, 0 if none.
known_nodes() {
    [[ -s "$SWARM_DIR/nodes" ]] && cat "$SWARM_DIR/nodes" || echo 0
}

# --------------------------------------------------------------------------- network

has_netns() { [[ -e "/run/netns/$1" ]]; }

ensure_bridge() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        log "bridge $BRIDGE: created"
    fi
    # (Tests on captured output, not `| grep -q`: with pipefail, grep's early exit fails the pipe.)
    [[ "$(ip addr show dev "$BRIDGE")" == *"inet $HOST_ADDR/24"* ]] || ip addr add "$HOST_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    # Bridged traffic between the namespaces goes through FORWARD, whose policy is DROP once the
    # main dockerd runs; DOCKER-USER is the chain docker leaves to us.
    if iptables -n -L DOCKER-USER >/dev/null 2>&1; then
        iptables -C DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null ||
            iptables -I DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
    else
        note "no DOCKER-USER chain (is the main dockerd running?); relying on the FORWARD policy"
    fi
}

ensure_netns() {
    local i="$1" ns veth addr
    ns="$(node_ns "$i")"
    veth="pswarm-h$i"
    addr="$(node_addr "$i")"
    has_netns "$ns" || ip netns add "$ns"
    if ! ip link show "$veth" >/dev/null 2>&1; then
        ip netns exec "$ns" ip link del eth0 2>/dev/null || true
        ip link add "$veth" type veth peer name eth0 netns "$ns"
    fi
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" link set lo up
    [[ "$(ip -n "$ns" addr show dev eth0)" == *"inet $addr/24"* ]] || ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    # No default route in the namespace: only 10.99.0.0/24 is reachable from a node.
    ip -n "$ns" route del default 2>/dev/null || true
}

# -------------------------------------------------------------------------- registry

ensure_registry() {
    local bin=/usr/bin/docker-registry i code=""
    [[ -x "$bin" ]] || die "no $bin (package docker-registry)"
    command -v htpasswd >/dev/null || die "no htpasswd (package apache2-utils)"
    mkdir -p "$SWARM_DIR/registry"
    # Password auth, as a real registry has: the nodes pull with the credentials the deploy tool
    # hands to the swarm with the service, never with their own.
    (
        umask 077
        [[ -s "$REGISTRY_PASSWORD_FILE" ]] || head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$REGISTRY_PASSWORD_FILE"
        htpasswd -B -n -i "$REGISTRY_USER" <"$REGISTRY_PASSWORD_FILE" >"$SWARM_DIR/registry-htpasswd"
    )
    cat >"$SWARM_DIR/registry.yml" <<EOF
# Generated by scripts/swarm.sh.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $SWARM_DIR/registry
  delete:
    enabled: true
http:
  addr: $SWARM_REGISTRY
auth:
  htpasswd:
    realm: pipeline-swarm-registry
    path: $SWARM_DIR/registry-htpasswd
EOF
    if pid_alive "$SWARM_DIR/registry.pid" docker-registry; then
        log "registry: running on $SWARM_REGISTRY"
        return 0
    fi
    spawn "$SWARM_DIR/registry.log" "$bin" serve "$SWARM_DIR/registry.yml"
    echo $! >"$SWARM_DIR/registry.pid"
    for ((i = 0; i < 50; i++)); do
        code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$SWARM_REGISTRY/v2/" || true)"
        [[ "$code" == 401 ]] && break
        pid_alive "$SWARM_DIR/registry.pid" docker-registry ||
            die "registry exited; last log lines:$(printf '\n')$(tail -n 20 "$SWARM_DIR/registry.log")"
        sleep 0.2
    done
    [[ "$code" == 401 ]] || die "registry not answering on $SWARM_REGISTRY (last HTTP code '$code')"
    log "registry: started on $SWARM_REGISTRY (pid $(<"$SWARM_DIR/registry.pid"))"
}

# ---------------------------------------------------------------------------- nodes

node_config_text() {
    # No live-restore: swarm refuses a daemon with it. A short shutdown timeout keeps
    # `stop-node` and `stop` quick (the demo service exits on SIGTERM at once anyway).
    cat <<EOF
{
  "insecure-registries": ["$SWARM_REGISTRY"],
  "live-restore": false,
  "shutdown-timeout": 5,
  "log-driver": "json-file"
}
EOF
}

# Start node I's dockerd if it is not running. Does not wait for it.
launch_node() {
    local i="$1" dir ns
    dir="$(node_dir "$i")"
    ns="$(node_ns "$i")"
    if pid_alive "$dir/docker.pid" dockerd; then
        return 0
    fi
    # A dockerd that crashed (seen: a swarmkit panic while a service was removed) leaves its pid
    # file, and a new one refuses to start ("pid file found"): it names no live dockerd (above).
    rm -f "$dir/docker.pid"
    mkdir -p "$dir/data" "$dir/exec"
    node_config_text >"$dir/daemon.json"
    # A dockerd that exited leaves its data-root bind mount; a new one would mount on top.
    umount_under "$dir/data"
    # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup mounts
    # ("Devices cgroup isn't mounted"). unshare --uts gives the node its own host name, which
    # swarm shows as the node's name. Both exec, so the pid is dockerd's.
    # shellcheck disable=SC2016 # "$1" and "$@" are the inner sh's own arguments
    spawn "$dir/dockerd.log" nsenter --net="/run/netns/$ns" unshare --uts \
        sh -c 'hostname "$1" && shift && exec "$@"' sh "$ns" \
        dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
        -H "$(node_sock "$i")" --config-file "$dir/daemon.json" \
        --containerd-namespace "$ns" --containerd-plugins-namespace "$ns-plugins"
    # Every step above execs, so $! is dockerd itself; its own pid file appears only later.
    echo $! >"$dir/launch.pid"
    log "node $i: dockerd starting in netns $ns ($(node_addr "$i"), log $dir/dockerd.log)"
}

wait_node() {
    local i="$1" dir k
    dir="$(node_dir "$i")"
    for ((k = 0; k < 240; k++)); do
        ndocker "$i" info >/dev/null 2>&1 && return 0
        if ! pid_alive "$dir/launch.pid" dockerd && ! pid_alive "$dir/docker.pid" dockerd; then
            die "node $i: dockerd exited; last log lines:$(printf '\n')$(tail -n 20 "$dir/dockerd.log")"
        fi
        sleep 0.25
    done
    die "node $i: dockerd did not answer within 60 s; see $dir/dockerd.log"
}

swarm_state() { ndocker "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo down; }

ensure_swarm() {
    local n="$1" i token manager_addr
    manager_addr="$(node_addr 1)"
    if [[ "$(swarm_state 1)" != active ]]; then
        ndocker 1 swarm init --advertise-addr "$manager_addr" --listen-addr "$manager_addr:2377" \
            --default-addr-pool "$ADDR_POOL" >/dev/null
        log "node 1: swarm initialised, manager at $manager_addr:2377"
    fi
    token="$(ndocker 1 swarm join-token -q worker)"
    for ((i = 2; i <= n; i++)); do
        [[ "$(swarm_state "$i")" == active ]] && continue
        ndocker "$i" swarm join --token "$token" --advertise-addr "$(node_addr "$i")" \
            --listen-addr "$(node_addr "$i"):2377" "$manager_addr:2377" >/dev/null
        log "node $i: joined the swarm"
    done
}

wait_ready() {
    local n="$1" k ready
    for ((k = 0; k < 240; k++)); do
        ready="$(ndocker 1 node ls --format '{{.Status}} {{.Availability}}' 2>/dev/null | grep -c '^Ready Active$' || true)"
        ((ready >= n)) && {
            log "swarm: $ready nodes ready"
            return 0
        }
        sleep 0.25
    done
    ndocker 1 node ls >&2 || true
    die "swarm: only ${ready:-0} of $n nodes ready after 60 s"
}

# -------------------------------------------------------------------------- commands

cmd_start() {
    local n="${1:-}" i
    if [[ -z "$n" ]]; then
        n="$(known_nodes)"
        ((n > 0)) || n=3
    fi
    [[ "$n" =~ ^[1-9]$ ]] || die "N must be a number of nodes from 1 to 9, got '$n'"
    command -v dockerd >/dev/null || die "no dockerd binary"
    (($(known_nodes) <= n)) || die "the swarm has $(known_nodes) nodes; stop it first to start fewer"
    echo "$n" >"$SWARM_DIR/nodes"
    ensure_bridge
    ensure_registry
    for ((i = 1; i <= n; i++)); do
        ensure_netns "$i"
        launch_node "$i"
    done
    for ((i = 1; i <= n; i++)); do
        wait_node "$i"
    done
    ensure_swarm "$n"
    wait_ready "$n"
    log "all up; use: eval \"\$($0 env)\""
}

cmd_stop_node() {
    local i="${1:-}"
    if ! [[ "$i" =~ ^[1-9]$ ]] || ((i > $(known_nodes))); then
        die "no node '$i' (the swarm has $(known_nodes))"
    fi
    stop_pidfile "$(node_dir "$i")/docker.pid" dockerd
    umount_under "$(node_dir "$i")/data"
}

cmd_stop() {
    local i n
    n="$(known_nodes)"
    for ((i = n; i >= 1; i--)); do
        stop_pidfile "$(node_dir "$i")/docker.pid" dockerd
    done
    stop_pidfile "$SWARM_DIR/registry.pid" docker-registry 10
    for ((i = 1; i <= 9; i++)); do
        if has_netns "$(node_ns "$i")"; then
            ip netns del "$(node_ns "$i")"
        fi
    done
    iptables -D DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
    umount_under "$SWARM_DIR"
    # Only after every mount is gone: data-roots hold container layers.
    if [[ "$(</proc/self/mountinfo)" == *" $SWARM_DIR"* ]]; then
        die "mounts left under $SWARM_DIR; not removing it"
    fi
    # The nodes' daemon logs outlive the swarm, for a crash found only after the fact.
    rm -rf "$SWARM_DIR.logs"
    mkdir -p "$SWARM_DIR.logs"
    for ((i = 1; i <= n; i++)); do
        cp "$(node_dir "$i")/dockerd.log" "$SWARM_DIR.logs/n$i-dockerd.log" 2>/dev/null || true
    done
    rm -rf "$SWARM_DIR"
    log "stopped and removed (the nodes' dockerd logs are kept in $SWARM_DIR.logs)"
}

cmd_status() {
    local n i rc=0 state
    n="$(known_nodes)"
    ((n > 0)) || {
        log "not started"
        return 1
    }
    if pid_alive "$SWARM_DIR/registry.pid" docker-registry; then
        log "registry: up on $SWARM_REGISTRY"
    else log "registry: DOWN" && rc=1; fi
    for ((i = 1; i <= n; i++)); do
        if pid_alive "$(node_dir "$i")/docker.pid" dockerd; then
            state="$(swarm_state "$i")"
            log "node $i: $(node_ns "$i") $(node_addr "$i") dockerd up (pid $(<"$(node_dir "$i")/docker.pid")), swarm $state"
        else
            log "node $i: $(node_ns "$i") $(node_addr "$i") dockerd DOWN" && rc=1
        fi
    done
    ndocker 1 node ls 2>/dev/null || rc=1
    return "$rc"
}

cmd_env() {
    local n i nodes=""
    n="$(known_nodes)"
    ((n > 0)) || n=3
    for ((i = 1; i <= n; i++)); do nodes+="${nodes:+ }$(node_addr "$i")"; done
    printf 'export SWARM_DIR=%q\n' "$SWARM_DIR"
    printf 'export SWARM_MANAGER=%q\n' "$(node_sock 1)"
    printf 'export SWARM_REGISTRY=%q\n' "$SWARM_REGISTRY"
    printf 'export SWARM_NODES=%q\n' "$nodes"
    printf 'export SWARM_HOST_ADDR=%q\n' "$HOST_ADDR"
    printf 'export SWARM_REGISTRY_USER=%q\n' "$REGISTRY_USER"
    printf 'export SWARM_REGISTRY_PASSWORD_FILE=%q\n' "$REGISTRY_PASSWORD_FILE"
}

# Copy an image of the main dockerd into the swarm's registry: the main dockerd would push over
# https only (the registry is not on loopback), the manager node trusts it.
cmd_push() {
    local image="${1:-}" name="${2:-}" target
    [[ -n "$image" ]] || die "usage: push IMAGE [NAME]"
    if [[ -z "$name" ]]; then
        name="$image"
        # Drop a registry host (a first component with '.' or ':', or localhost).
        [[ "${image%%/*}" == *[.:]* || "${image%%/*}" == localhost ]] && [[ "$image" == */* ]] && name="${image#*/}"
    fi
    target="$SWARM_REGISTRY/$name"
    [[ "$name" == *:* ]] || target="$target:latest"
    docker -H "unix://${DOCKERD_SOCKET:-/var/run/docker.sock}" save "$image" | ndocker 1 load >/dev/null
    ndocker 1 tag "$image" "$target"
    # A throw-away DOCKER_CONFIG: the credentials are not left behind for anyone.
    local cfg rc=0
    cfg="$(mktemp -d)"
    DOCKER_CONFIG="$cfg" ndocker 1 login -u "$REGISTRY_USER" --password-stdin "$SWARM_REGISTRY" \
        <"$REGISTRY_PASSWORD_FILE" >/dev/null && DOCKER_CONFIG="$cfg" ndocker 1 push "$target" >/dev/null || rc=$?
    rm -rf "$cfg"
    ((rc == 0)) || die "push of $target failed"
    log "pushed $image as $target"
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
    start | stop | status | stop-node | push) ;;
    -h | --help | help)
        usage
        return 0
        ;;
    *)
        usage >&2
        return 2
        ;;
    esac
    [[ $EUID -eq 0 ]] || die "needs root (network namespaces, iptables, dockerd)"
    mkdir -p "$SWARM_DIR"
    exec 9>"$SWARM_DIR/.lock"
    flock -w 600 9 || die "another swarm.sh holds $SWARM_DIR/.lock"
    case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    stop-node) cmd_stop_node "$@" ;;
    push) cmd_push "$@" ;;
    esac
}

main "$@"
