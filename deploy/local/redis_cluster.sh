#!/usr/bin/env bash
# A local Redis Cluster without Docker: 3 masters and 3 replicas on 127.0.0.1, one
# redis-server each (Debian's package, installed when missing), for the tests that run sift's
# Redis layer against a cluster (MOVED, failover). make test starts it; make up does not.
# Usage: deploy/local/redis_cluster.sh start|stop|status
#   start:  leaves a healthy cluster as it is. Otherwise starts the nodes: when none of this
#           script's nodes runs, their old files are wiped and the cluster is created anew;
#           when only some run, the missing ones are started again from their node files
#           and rejoin (a killed master comes back as a replica: when its replica still
#           runs, it is started only once that replica has taken over). Waits until every node
#           says cluster_state:ok and every replica's link to its master is up, then prints
#           SIFT_REDIS_CLUSTER_URLS=redis://127.0.0.1:P1,...,redis://127.0.0.1:P6
#   stop:   stops the nodes this script started (SHUTDOWN NOSAVE; SIGKILL if that fails).
#   status: exit 0 only when the cluster is ok (as start waits for it).
# Nothing is kept on disk (no RDB, no append-only file): a node started again comes back
# empty and takes its data from its master, and the tests do not rely on what a previous run
# wrote. (So a killed master must not come back before its replica took over: start waits.)
# Env: SIFT_REDIS_CLUSTER_PORTS (24001,...,24006: the first three become masters; each
#      node's cluster bus listens on its port + 100), SIFT_REDIS_CLUSTER_NODE_TIMEOUT_MS
#      (2000: how long a master may be silent before its replica takes over),
#      SIFT_LOCAL_DIR (nodes under $SIFT_LOCAL_DIR/redis-cluster/<port>), SIFT_WAIT_SECS (60).
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

IFS=, read -r -a PORTS <<<"${SIFT_REDIS_CLUSTER_PORTS:-24001,24002,24003,24004,24005,24006}"
NODE_TIMEOUT_MS="${SIFT_REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"
BUS_OFFSET=100
CLUSTER_DIR="$SIFT_LOCAL_DIR/redis-cluster"

[[ ${#PORTS[@]} -eq 6 ]] || sift_die "SIFT_REDIS_CLUSTER_PORTS takes six ports (3 masters, 3 replicas), got '${SIFT_REDIS_CLUSTER_PORTS:-}'"
for i in "${!PORTS[@]}"; do
    sift_check_port SIFT_REDIS_CLUSTER_PORTS "${PORTS[$i]}"
    PORTS[i]=$((10#${PORTS[$i]}))
    ((PORTS[i] + BUS_OFFSET <= 65535)) || sift_die "port ${PORTS[$i]}: its cluster bus port $((PORTS[i] + BUS_OFFSET)) is past 65535"
done
if [[ -n "$(for p in "${PORTS[@]}"; do echo "$p"; echo "$((p + BUS_OFFSET))"; done | sort | uniq -d)" ]]; then
    sift_die "SIFT_REDIS_CLUSTER_PORTS: the ports and their bus ports (port + $BUS_OFFSET) must all differ"
fi
if [[ ! "$NODE_TIMEOUT_MS" =~ ^[0-9]{1,9}$ ]] || ((10#$NODE_TIMEOUT_MS < 100)); then
    sift_die "SIFT_REDIS_CLUSTER_NODE_TIMEOUT_MS must be a number of milliseconds (100 or more), got '$NODE_TIMEOUT_MS'"
fi

urls() {
    local p out=""
    for p in "${PORTS[@]}"; do out+="${out:+,}redis://127.0.0.1:$p"; done
    echo "$out"
}

cli() { # port args...
    local port="$1"
    shift
    timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null
}

# The value of FIELD in the INFO-style text on stdin (CLUSTER INFO, INFO replication).
field() { # field
    tr -d '\r' | sed -n "s/^$1://p" | head -n 1
}

node_dir() { # port
    echo "$CLUSTER_DIR/$1"
}

# The pid of the redis-server this script started on PORT, when it still runs ("" otherwise).
our_pid() { # port
    local pid
    pid="$(cat "$(node_dir "$1")/redis.pid" 2>/dev/null || true)"
    if sift_pid_alive "$pid" && [[ "$(sift_pid_cmdline "$pid")" =~ redis-server.*:$1([^0-9]|$) ]]; then
        echo "$pid"
    fi
}

port_in_use() { # port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Sets PROBLEM to why the cluster is not ok yet and fails; succeeds when every node answers
# with cluster_state:ok in a cluster of 6 nodes and 3 masters serving every slot, and every
# replica's link to its master is up.
PROBLEM=""
cluster_check() {
    local p info repl state role masters=0 replicas=0
    command -v redis-cli >/dev/null 2>&1 || {
        PROBLEM="redis-cli is not installed"
        return 1
    }
    for p in "${PORTS[@]}"; do
        if ! info="$(cli "$p" cluster info)" || [[ -z "$info" ]]; then
            PROBLEM="127.0.0.1:$p does not answer CLUSTER INFO"
            return 1
        fi
        state="$(field cluster_state <<<"$info")"
        if [[ "$state" != ok ]]; then
            PROBLEM="127.0.0.1:$p says cluster_state:${state:-?}"
            return 1
        fi
        if [[ "$(field cluster_known_nodes <<<"$info")" != 6 || "$(field cluster_size <<<"$info")" != 3 ||
            "$(field cluster_slots_ok <<<"$info")" != 16384 ]]; then
            PROBLEM="127.0.0.1:$p knows $(field cluster_known_nodes <<<"$info") nodes, $(field cluster_size <<<"$info") masters with slots, $(field cluster_slots_ok <<<"$info") slots ok (want 6, 3, 16384)"
            return 1
        fi
        repl="$(cli "$p" info replication)"
        role="$(field role <<<"$repl")"
        case "$role" in
        master) masters=$((masters + 1)) ;;
        slave)
            replicas=$((replicas + 1))
            if [[ "$(field master_link_status <<<"$repl")" != up ]]; then
                PROBLEM="replica 127.0.0.1:$p: link to its master $(field master_port <<<"$repl") is not up yet"
                return 1
            fi
            ;;
        *)
            PROBLEM="127.0.0.1:$p has role '${role:-?}'"
            return 1
            ;;
        esac
    done
    if ((masters != 3 || replicas != 3)); then
        PROBLEM="$masters masters and $replicas replicas (want 3 and 3)"
        return 1
    fi
    PROBLEM=""
}

start_node() { # port
    local port="$1" dir
    dir="$(node_dir "$port")"
    mkdir -p "$dir"
    rm -f "$dir/redis.pid"
    # The queue must never be evicted (noeviction). cluster-require-full-coverage no: while one
    # master's slots wait for its replica, the other masters keep answering.
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
        --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
        --cluster-port "$((port + BUS_OFFSET))" --cluster-node-timeout "$NODE_TIMEOUT_MS" \
        --cluster-require-full-coverage no \
        --appendonly no --save "" --repl-diskless-sync-delay 0 --maxmemory-policy noeviction \
        --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" \
        >>"$CLUSTER_DIR/start.log" 2>&1 9>&- || {
        sift_tail_log "$dir/redis.log"
        sift_die "redis-server failed to start on 127.0.0.1:$port"
    }
}

# The node on PORT answers PING and is the redis-server this script started.
node_up() { # port
    [[ "$(cli "$1" ping)" == PONG && -n "$(our_pid "$1")" ]]
}

wait_nodes_answer() { # ports...
    local p
    for p in "$@"; do
        if ! sift_wait_until "$SIFT_WAIT_SECS" "redis-server on 127.0.0.1:$p" node_up "$p"; then
            sift_tail_log "$(node_dir "$p")/redis.log"
            exit 1
        fi
    done
}

# Whether any running node already knows others (a cluster was created on these nodes).
cluster_joined() {
    local p
    for p in "${PORTS[@]}"; do
        [[ "$(cli "$p" cluster info | field cluster_known_nodes)" =~ ^[2-9] ]] && return 0
    done
    return 1
}

# Whether the node on PORT, as the live node on VIA sees it, is a master that still serves
# slots and has a replica that answers (one that can take over).
master_with_live_replica() { # port via
    local replica
    for replica in $(cli "$2" cluster nodes | awk -v addr="127.0.0.1:$1" '
        { split($2, a, "@"); node[NR] = a[1]; master[NR] = $4 }
        a[1] == addr && $3 ~ /master/ && NF > 8 { id = $1 }
        END { if (id != "") for (i in master) if (master[i] == id) print node[i] }'); do
        [[ "$(cli "${replica##*:}" ping)" == PONG ]] && return 0
    done
    return 1
}

replica_took_over() { # port via
    ! master_with_live_replica "$1" "$2"
}

# A master that is down while its slots are still its own would come back empty (nothing is
# kept on disk), and its replica would then copy the empty data set. Wait for the replica to
# take over first (a failover takes about twice the node timeout).
wait_replica_took_over() { # port via
    master_with_live_replica "$1" "$2" || return 0
    echo "redis-cluster: waiting for the replica of 127.0.0.1:$1 to take over before starting it again" >&2
    sift_wait_until "$((NODE_TIMEOUT_MS * 5 / 1000 + 5))" "the replica of 127.0.0.1:$1 to take over" \
        replica_took_over "$1" "$2" ||
        echo "warning: 127.0.0.1:$1 starts again as an empty master; its replica will copy that" >&2
}

wait_ok() {
    if ! sift_wait_until "$SIFT_WAIT_SECS" "the Redis Cluster on 127.0.0.1:${PORTS[0]}..${PORTS[5]} to be ok" cluster_check; then
        echo "error: last check: $PROBLEM (node logs in $CLUSTER_DIR/<port>/redis.log)" >&2
        exit 1
    fi
}

now_ms() {
    date +%s%3N
}

redis_version() {
    cli "${PORTS[0]}" info server | field redis_version
}

describe() { # what
    echo "redis-cluster: $1 on 127.0.0.1 ports ${PORTS[*]} (3 masters + 3 replicas, bus port +$BUS_OFFSET, node timeout $(cli "${PORTS[0]}" config get cluster-node-timeout | sed -n 2p) ms, Redis $(redis_version), dir $CLUSTER_DIR)"
}

create_anew() {
    local p
    for p in "${PORTS[@]}"; do
        rm -rf "$(node_dir "$p")"
        start_node "$p"
    done
    wait_nodes_answer "${PORTS[@]}"
    local nodes=()
    for p in "${PORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
    # Masters are the first three nodes given; each of the others replicates one of them.
    timeout "$SIFT_WAIT_SECS" redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
        >"$CLUSTER_DIR/create.log" 2>&1 9>&- || {
        sift_tail_log "$CLUSTER_DIR/create.log"
        sift_die "redis-cli --cluster create failed (see $CLUSTER_DIR/create.log)"
    }
}

do_start() {
    sift_prepare_dirs
    mkdir -p "$CLUSTER_DIR"
    sift_lock "$CLUSTER_DIR/.lock"
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        sift_apt_install redis-server redis-tools
    fi
    # down.sh stops the cluster on the ports recorded here.
    printf 'ports=%s\n' "$(IFS=,; echo "${PORTS[*]}")" >"$SIFT_STATE_DIR/redis-cluster"
    if cluster_check; then
        describe "running"
        urls | sed 's/^/SIFT_REDIS_CLUSTER_URLS=/'
        return 0
    fi

    local p ours=() missing=()
    for p in "${PORTS[@]}"; do
        if [[ -n "$(our_pid "$p")" ]]; then
            ours+=("$p")
        elif port_in_use "$p"; then
            sift_die "127.0.0.1:$p is in use by a process this script did not start (set SIFT_REDIS_CLUSTER_PORTS)"
        elif port_in_use "$((p + BUS_OFFSET))"; then
            sift_die "127.0.0.1:$((p + BUS_OFFSET)) (the cluster bus port of $p) is in use (set SIFT_REDIS_CLUSTER_PORTS)"
        else
            missing+=("$p")
        fi
    done

    local started
    started="$(now_ms)"
    if [[ ${#ours[@]} -gt 0 ]] && cluster_joined; then
        # Some nodes run: start the missing ones from their node files, so that they rejoin.
        for p in "${missing[@]}"; do wait_replica_took_over "$p" "${ours[0]}"; done
        for p in "${missing[@]}"; do start_node "$p"; done
        wait_nodes_answer "${missing[@]}"
        if sift_wait_until "$SIFT_WAIT_SECS" "the Redis Cluster to heal" cluster_check; then
            describe "healed (started again: ${missing[*]:-none}; ok in $(($(now_ms) - started)) ms)"
            urls | sed 's/^/SIFT_REDIS_CLUSTER_URLS=/'
            return 0
        fi
        echo "redis-cluster: not ok after restarting the missing nodes ($PROBLEM): creating it anew" >&2
    fi
    # Nothing of ours runs (stale files of an earlier run), or it never became a cluster, or
    # it did not heal: start from nothing.
    [[ ${#ours[@]} -eq 0 ]] || do_stop >/dev/null
    started="$(now_ms)"
    create_anew
    wait_ok
    describe "started (ok in $(($(now_ms) - started)) ms)"
    urls | sed 's/^/SIFT_REDIS_CLUSTER_URLS=/'
}

do_stop() {
    local p pid stopped=()
    for p in "${PORTS[@]}"; do
        pid="$(our_pid "$p")"
        [[ -n "$pid" ]] || continue
        # NOW: a master does not wait for its replicas to catch up (they are being stopped too).
        cli "$p" shutdown nosave now >/dev/null || true
        stopped+=("$p:$pid")
    done
    local entry
    for entry in "${stopped[@]}"; do
        sift_stop_pid "${entry#*:}" "redis-server on port ${entry%%:*}"
    done
    if [[ ${#stopped[@]} -gt 0 ]]; then
        echo "redis-cluster: stopped ${#stopped[@]} node(s) on 127.0.0.1: ${stopped[*]%%:*}"
    else
        echo "redis-cluster: no node started by this script runs"
    fi
}

case "${1:-}" in
start) do_start ;;
stop)
    mkdir -p "$CLUSTER_DIR"
    sift_lock "$CLUSTER_DIR/.lock"
    do_stop
    ;;
status)
    if cluster_check; then
        describe "ok"
    else
        echo "redis-cluster: not ok: $PROBLEM"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
