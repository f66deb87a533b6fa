#!/usr/bin/env bash
# `make run-cluster`: the whole distributed stack on this machine. A Redis Cluster of 3
# masters and 3 replicas (deploy/local/redis_cluster.sh), a ClickHouse cluster of two shards
# (deploy/local/clickhouse_cluster.sh), PostgreSQL (deploy/local/up.sh), the cluster schema on
# every ClickHouse node, a tenant with a fresh key, two ingest nodes and two batchers. Prints
# how to send events and where they land; Ctrl-C stops the four sift processes, `make down`
# stops them too (if still running) and the services.
# Env: SIFT_CLUSTER_INGEST_PORTS (8081,8082), SIFT_CLUSTER_BATCHER_PORTS (9091,9092),
#      SIFT_REDIS_SHARDS (3), SIFT_TENANT (local), SIFT_CLUSTER_DATABASE (sift_cluster: the
#      PostgreSQL database), SIFT_CLICKHOUSE_DATABASE, SIFT_KEY_PREFIX, SIFT_BIN_DIR (binaries
#      already built: no release build) and those of the scripts above.
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
cd "$SIFT_ROOT"

IFS=, read -r -a INGEST_PORTS <<<"${SIFT_CLUSTER_INGEST_PORTS:-8081,8082}"
IFS=, read -r -a BATCHER_PORTS <<<"${SIFT_CLUSTER_BATCHER_PORTS:-9091,9092}"
[[ ${#INGEST_PORTS[@]} -eq 2 && ${#BATCHER_PORTS[@]} -eq 2 ]] ||
    sift_die "SIFT_CLUSTER_INGEST_PORTS and SIFT_CLUSTER_BATCHER_PORTS each take two ports"
for port in "${INGEST_PORTS[@]}" "${BATCHER_PORTS[@]}"; do sift_check_port port "$port"; done
tenant="${SIFT_TENANT:-local}"
pids_file="$SIFT_STATE_DIR/run-cluster.pids"

# The value of NAME=... in a script's output.
value_of() { # name output
    sed -n "s/^$1=//p" <<<"$2" | tail -n 1
}

"$SIFT_DEPLOY_DIR/up.sh"
redis_out="$("$SIFT_DEPLOY_DIR/redis_cluster.sh" start)"
clickhouse_out="$("$SIFT_DEPLOY_DIR/clickhouse_cluster.sh" start)"
redis_urls="$(value_of SIFT_REDIS_CLUSTER_URLS "$redis_out")"
clickhouse_nodes="$(value_of SIFT_CLICKHOUSE_CLUSTER_URLS "$clickhouse_out")"
[[ -n "$redis_urls" && -n "$clickhouse_nodes" ]] ||
    sift_die "the cluster scripts did not print their URLs: $redis_out $clickhouse_out"

# Its own PostgreSQL database and key prefix: `make run`'s stack can run beside it.
export SIFT_POSTGRES_URL="postgres://postgres@127.0.0.1:${SIFT_PG_PORT}/${SIFT_CLUSTER_DATABASE:-sift_cluster}"
export SIFT_REDIS_URL="$redis_urls"
export SIFT_REDIS_CLUSTER=true
export SIFT_REDIS_SHARDS="${SIFT_REDIS_SHARDS:-3}"
export SIFT_KEY_PREFIX="${SIFT_KEY_PREFIX:-ai}"
export SIFT_CLICKHOUSE_URL="${clickhouse_nodes%%,*}"
export SIFT_CLICKHOUSE_CLUSTER=sift_local
export SIFT_CLICKHOUSE_NODES="$clickhouse_nodes"

if [[ -n "${SIFT_BIN_DIR:-}" ]]; then
    bin="$SIFT_BIN_DIR"
else
    cargo build --release --bins --quiet
    bin="$SIFT_ROOT/target/release"
fi

"$bin/sift-batcher" migrate
"$bin/sift-batcher" tenant create "$tenant" >/dev/null 2>&1 || true
key="$("$bin/sift-batcher" key create "$tenant" | sed -n 's/.*key=\([^ ]*\).*/\1/p')"

sift_prepare_dirs
: >"$pids_file"
children=()
start() { # log name, command...
    local log="$SIFT_LOG_DIR/$1.log"
    shift
    "$@" >>"$log" 2>&1 9>&- &
    children+=("$!")
    echo "$!" >>"$pids_file"
}
# shellcheck disable=SC2317 # called by the EXIT trap
stop_all() {
    for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${children[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "$pids_file"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

for i in 0 1; do
    start "cluster-batcher-$((i + 1))" "$bin/sift-batcher" run \
        --listen "127.0.0.1:${BATCHER_PORTS[$i]}" --worker-id "cluster-batcher-$((i + 1))"
    start "cluster-ingest-$((i + 1))" env SIFT_LISTEN="127.0.0.1:${INGEST_PORTS[$i]}" "$bin/sift-ingest"
done
for port in "${INGEST_PORTS[@]}"; do
    sift_wait_until "$SIFT_WAIT_SECS" "sift-ingest on port $port" \
        curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" ||
        sift_die "sift-ingest on port $port is not ready (see $SIFT_LOG_DIR/cluster-ingest-*.log)"
done

cat <<MSG

sift on a Redis Cluster ($redis_urls; $SIFT_REDIS_SHARDS shards) and a ClickHouse cluster
sift_local of two shards ($clickhouse_nodes), two ingest nodes and two batchers.

API key for tenant '$tenant' (shown once):
  $key

Send an event to either ingest node (a load balancer would spread them):
  curl -s -X POST http://127.0.0.1:${INGEST_PORTS[0]}/v1/ai/events -H 'Authorization: Bearer $key' -H 'Content-Type: application/json' -d '{"session_id":"session-0001","prompt_text":"Help me write code","model_version":"v1.2.3","latency_ms":120,"token_count":42}'
  curl -s -X POST http://127.0.0.1:${INGEST_PORTS[1]}/v1/ai/events -H 'Authorization: Bearer $key' -H 'Content-Type: application/json' -d '{"session_id":"session-0001","prompt_text":"help me write CODE!","model_version":"v1.2.3","latency_ms":120,"token_count":42}'
  (the second is the same intent: collapsed, whichever node takes it)

Load it:  target/release/sift-bench --url http://127.0.0.1:${INGEST_PORTS[0]} --key $key --batch-size 100 --duration 20s --clickhouse-url ${SIFT_CLICKHOUSE_URL} --clickhouse-database ${SIFT_CLICKHOUSE_DATABASE:-ai_analytics}

Where the events are (a tenant's rows live on one shard):
  curl -s '${SIFT_CLICKHOUSE_URL}' --data-binary 'SELECT _shard_num, tenant_id, count() FROM ${SIFT_CLICKHOUSE_DATABASE:-ai_analytics}.ai_events GROUP BY 1, 2'

Logs: $SIFT_LOG_DIR/cluster-{ingest,batcher}-{1,2}.log
Metrics: http://127.0.0.1:${INGEST_PORTS[0]}/metrics, http://127.0.0.1:${BATCHER_PORTS[0]}/metrics (and the second of each)

Running; Ctrl-C stops the four sift processes (make down stops the clusters too).
MSG
wait -n "${children[@]}" || true
echo "a sift process exited (see its log in $SIFT_LOG_DIR); stopping the others" >&2
exit 1
