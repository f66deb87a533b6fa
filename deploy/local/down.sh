#!/usr/bin/env bash
# Stop the local services that deploy/local/up.sh started itself (as recorded in
# $SIFT_LOCAL_DIR/state); services that were already running before up.sh are left alone.
# Also stops the local Redis Cluster of deploy/local/redis_cluster.sh (make test starts it)
# and the sift processes make run-cluster left running.
# Data is kept (ClickHouse data dir, PostgreSQL clusters); Redis started here keeps nothing.
# Usage: deploy/local/down.sh [run-cluster] [redis] [redis-cluster] [postgres] [clickhouse]
#        (default: all)
# Safe to run again: with nothing recorded, it only reports that.
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

clickhouse_down() {
    local state="$SIFT_STATE_DIR/clickhouse"
    if [[ ! -f "$state" ]]; then
        echo "clickhouse: nothing started by up.sh; left alone"
        return 0
    fi
    local run_dir
    run_dir="$(sift_state_get "$state" run_dir)"
    SIFT_CLICKHOUSE_DIR="${run_dir:-$SIFT_LOCAL_DIR/clickhouse}" "$SIFT_DEPLOY_DIR/clickhouse.sh" stop 9>&-
    rm -f "$state"
}

redis_down() {
    local state found=0
    for state in "$SIFT_STATE_DIR"/redis-*; do
        [[ -f "$state" ]] || continue
        found=1
        local pid port
        pid="$(sift_state_get "$state" pid)"
        port="$(sift_state_get "$state" port)"
        # Only the process we recorded, and only if it still is that redis-server.
        if sift_pid_alive "$pid" && [[ "$(sift_pid_cmdline "$pid")" == *"redis-server"*":$port"* ]]; then
            sift_stop_pid "$pid" "redis-server on port $port"
            echo "redis: stopped server on 127.0.0.1:$port (pid $pid)"
        else
            echo "redis: server on 127.0.0.1:$port (pid $pid) is no longer running"
        fi
        rm -f "$state"
    done
    [[ $found -eq 1 ]] || echo "redis: nothing started by up.sh; left alone"
}

redis_cluster_down() {
    local state="$SIFT_STATE_DIR/redis-cluster"
    if [[ ! -f "$state" && ! -d "$SIFT_LOCAL_DIR/redis-cluster" ]]; then
        echo "redis-cluster: not started by deploy/local/redis_cluster.sh; nothing to stop"
        return 0
    fi
    # The ports it was last started on (its defaults when that was not recorded); only the
    # nodes whose pid files it wrote are stopped.
    local ports
    ports="$(sift_state_get "$state" ports)"
    SIFT_REDIS_CLUSTER_PORTS="${ports:-${SIFT_REDIS_CLUSTER_PORTS:-}}" "$SIFT_DEPLOY_DIR/redis_cluster.sh" stop 9>&-
    rm -f "$state"
}

# The sift processes `make run-cluster` started, if it left any running (it stops them itself
# on Ctrl-C).
run_cluster_down() {
    local pids="$SIFT_STATE_DIR/run-cluster.pids" pid
    [[ -f "$pids" ]] || return 0
    while read -r pid; do
        if sift_pid_alive "$pid" && [[ "$(sift_pid_cmdline "$pid")" == *sift-* ]]; then
            sift_stop_pid "$pid" "sift process $pid of make run-cluster"
            echo "run-cluster: stopped pid $pid"
        fi
    done <"$pids"
    rm -f "$pids"
}

postgres_down() {
    local state found=0
    for state in "$SIFT_STATE_DIR"/postgres-*; do
        [[ -f "$state" ]] || continue
        found=1
        local ver name port
        ver="$(sift_state_get "$state" version)"
        name="$(sift_state_get "$state" cluster)"
        port="$(sift_state_get "$state" port)"
        if pg_lsclusters -h "$ver" "$name" 2>/dev/null | awk '{print $4}' | grep -q online; then
            sift_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" stop -m fast \
                >>"$SIFT_LOG_DIR/postgres.log" 2>&1 ||
                sift_die "pg_ctlcluster $ver $name stop failed (see $SIFT_LOG_DIR/postgres.log)"
            echo "postgresql: stopped cluster $ver/$name on 127.0.0.1:$port (data kept)"
        else
            echo "postgresql: cluster $ver/$name on 127.0.0.1:$port is no longer running"
        fi
        rm -f "$state"
    done
    [[ $found -eq 1 ]] || echo "postgresql: nothing started by up.sh; left alone"
}

sift_prepare_dirs
sift_lock "$SIFT_STATE_DIR/.lock"

services=("$@")
[[ ${#services[@]} -gt 0 ]] || services=(run-cluster clickhouse redis-cluster redis postgres)
for svc in "${services[@]}"; do
    case "$svc" in
    run-cluster) run_cluster_down ;;
    clickhouse) clickhouse_down ;;
    redis) redis_down ;;
    redis-cluster) redis_cluster_down ;;
    postgres | postgresql) postgres_down ;;
    *) sift_die "unknown service '$svc' (expected run-cluster, redis, redis-cluster, postgres, clickhouse)" ;;
    esac
done
