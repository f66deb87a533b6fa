#!/usr/bin/env bash
# A local ClickHouse cluster of two shards without Docker: two servers from the same PyPI
# wheel as deploy/local/clickhouse.sh (each its own run dir, data and ports), each told of
# both in a config.d file (`remote_servers`, cluster `sift_local`), so that Distributed tables
# spread a tenant's rows to one shard by cityHash64(tenant_id). No Keeper: the wheel has none,
# so Replicated tables and ON CLUSTER do not run here (DDL goes to each server in turn).
# Usage: deploy/local/clickhouse_cluster.sh start|stop|status
#   start:  starts both shards (or leaves a running one as it is) and prints their HTTP URLs,
#           comma-separated, as SIFT_CLICKHOUSE_CLUSTER_URLS=...
#   stop:   stops both; data is kept.
#   status: exit 0 when both answer.
# Env: SIFT_LOCAL_DIR, SIFT_CLUSTER_DIR (where the shards' run dirs are; SIFT_LOCAL_DIR),
#      SIFT_CLUSTER_HTTP_PORTS (21123,22123), SIFT_CLUSTER_TCP_PORTS
#      (21900,22900), SIFT_CLUSTER_ONLY (0 or 1: start or stop that shard alone, as the
#      tests do to take one shard down and bring it back), and those of clickhouse.sh.
# sift on this cluster: sift-batcher migrate --cluster sift_local --clickhouse-nodes URLS
# (docs/deploy.md, "A two-shard ClickHouse on one machine").
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

IFS=, read -r -a HTTP_PORTS <<<"${SIFT_CLUSTER_HTTP_PORTS:-21123,22123}"
IFS=, read -r -a TCP_PORTS <<<"${SIFT_CLUSTER_TCP_PORTS:-21900,22900}"
[[ ${#HTTP_PORTS[@]} -eq 2 && ${#TCP_PORTS[@]} -eq 2 ]] ||
    sift_die "SIFT_CLUSTER_HTTP_PORTS and SIFT_CLUSTER_TCP_PORTS each take two ports"

run_dir() { # shard index
    echo "${SIFT_CLUSTER_DIR:-$SIFT_LOCAL_DIR}/clickhouse-shard$(($1 + 1))"
}

# The cluster both servers know: one replica per shard, addressed by its native TCP port.
write_cluster_config() { # run dir
    mkdir -p "$1/config.d"
    cat >"$1/config.d/cluster.xml.tmp" <<XML
<clickhouse>
  <remote_servers>
    <sift_local>
      <shard><replica><host>127.0.0.1</host><port>${TCP_PORTS[0]}</port></replica></shard>
      <shard><replica><host>127.0.0.1</host><port>${TCP_PORTS[1]}</port></replica></shard>
    </sift_local>
  </remote_servers>
</clickhouse>
XML
    mv "$1/config.d/cluster.xml.tmp" "$1/config.d/cluster.xml"
}

shard() { # index action
    SIFT_CLICKHOUSE_DIR="$(run_dir "$1")" \
        SIFT_CLICKHOUSE_HTTP_PORT="${HTTP_PORTS[$1]}" \
        SIFT_CLICKHOUSE_TCP_PORT="${TCP_PORTS[$1]}" \
        "$SIFT_DEPLOY_DIR/clickhouse.sh" "$2"
}

SHARDS=(0 1)
if [[ -n "${SIFT_CLUSTER_ONLY:-}" ]]; then
    [[ "$SIFT_CLUSTER_ONLY" == 0 || "$SIFT_CLUSTER_ONLY" == 1 ]] ||
        sift_die "SIFT_CLUSTER_ONLY is a shard index: 0 or 1"
    SHARDS=("$SIFT_CLUSTER_ONLY")
fi

case "${1:-}" in
start)
    sift_prepare_dirs
    for i in "${SHARDS[@]}"; do
        write_cluster_config "$(run_dir "$i")"
        shard "$i" start
    done
    echo "SIFT_CLICKHOUSE_CLUSTER_URLS=http://127.0.0.1:${HTTP_PORTS[0]},http://127.0.0.1:${HTTP_PORTS[1]}"
    ;;
stop)
    for i in "${SHARDS[@]}"; do
        if [[ -d "$(run_dir "$i")" ]]; then shard "$i" stop; fi
    done
    ;;
status)
    for i in "${SHARDS[@]}"; do shard "$i" status; done
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
