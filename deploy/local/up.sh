#!/usr/bin/env bash
# Make Redis, PostgreSQL and ClickHouse available on 127.0.0.1 for local runs and tests, without
# Docker. A service that already answers on its port is used as it is; a missing one is installed
# (apt-get: redis-server, postgresql; PyPI: chdb-core for ClickHouse) and started. What this script
# started itself is recorded in $SIFT_LOCAL_DIR/state so that down.sh stops only that.
# Prints one status line per service. Safe to run again.
# Env: SIFT_REDIS_PORT (6379), SIFT_PG_PORT (5432), SIFT_CLICKHOUSE_HTTP_PORT (8123),
#      SIFT_CLICKHOUSE_TCP_PORT (9000), SIFT_LOCAL_DIR (<repo>/.local), SIFT_WAIT_SECS (60).
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

sift_check_port SIFT_REDIS_PORT "$SIFT_REDIS_PORT"
sift_check_port SIFT_PG_PORT "$SIFT_PG_PORT"
sift_check_port SIFT_CLICKHOUSE_HTTP_PORT "$SIFT_CLICKHOUSE_HTTP_PORT"
sift_check_port SIFT_CLICKHOUSE_TCP_PORT "$SIFT_CLICKHOUSE_TCP_PORT"
sift_prepare_dirs
sift_lock "$SIFT_STATE_DIR/.lock"

port_in_use() { # port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ---------------------------------------------------------------- Redis

redis_cmd() { # port args...
    local port="$1"
    shift
    redis-cli -h 127.0.0.1 -p "$port" "$@"
}

redis_ping() { # port
    if command -v redis-cli >/dev/null 2>&1; then
        [[ "$(redis_cmd "$1" ping 2>/dev/null)" == "PONG" ]]
    else
        # No client yet (fresh machine): speak RESP directly.
        local reply=""
        exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 || true
        exec 3>&-
        [[ "$reply" == "+PONG"* ]]
    fi
}

redis_policy() { # port
    if command -v redis-cli >/dev/null 2>&1; then
        redis_cmd "$1" config get maxmemory-policy 2>/dev/null | sed -n 2p
    fi
}

redis_policy_note() { # policy
    case "$1" in
    noeviction | volatile-*) echo "maxmemory-policy $1" ;;
    "") echo "maxmemory-policy unknown" ;;
    *) echo "maxmemory-policy $1 -- WARNING: can evict the queue, use noeviction" ;;
    esac
}

redis_version() { # port
    if command -v redis-cli >/dev/null 2>&1; then
        redis_cmd "$1" info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p'
    fi
}

# sift's Lua scripts need Redis 7.0 or later (the `#!lua` shebang); the binaries refuse older.
redis_version_note() { # version
    local major="${1%%.*}"
    if [[ -z "$1" ]]; then
        echo "Redis version unknown"
    elif [[ "$major" =~ ^[0-9]+$ ]] && ((major < 7)); then
        echo "Redis $1 -- WARNING: sift needs Redis 7.0 or later; sift-ingest and sift-batcher refuse to start"
    else
        echo "Redis $1"
    fi
}

# "Redis 7.0.15, maxmemory-policy noeviction" for the status line of the server on PORT.
redis_notes() { # port
    echo "$(redis_version_note "$(redis_version "$1")"), $(redis_policy_note "$(redis_policy "$1")")"
}

redis_up() {
    local port="$SIFT_REDIS_PORT"
    local state="$SIFT_STATE_DIR/redis-$port"
    if redis_ping "$port"; then
        local pid
        pid="$(sift_state_get "$state" pid)"
        if [[ -f "$state" ]] && sift_pid_alive "$pid"; then
            echo "redis: running on 127.0.0.1:$port (started by up.sh, pid $pid, $(redis_notes "$port"))"
        else
            rm -f "$state"
            echo "redis: using existing server on 127.0.0.1:$port ($(redis_notes "$port"))"
        fi
        return 0
    fi
    port_in_use "$port" && sift_die "127.0.0.1:$port is in use but does not answer a Redis PING (set SIFT_REDIS_PORT)"

    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        sift_apt_install redis-server redis-tools
        if redis_ping "$port"; then # the package's own service came up on this port
            echo "redis: using server started by the redis-server package on 127.0.0.1:$port ($(redis_notes "$port"))"
            return 0
        fi
    fi

    local dir="$SIFT_LOCAL_DIR/redis-$port"
    mkdir -p "$dir"
    rm -f "$dir/redis.pid"
    # The queue must never be evicted (noeviction) nor lost on a restart (append-only file).
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly yes \
        --maxmemory-policy noeviction --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" \
        >>"$SIFT_LOG_DIR/redis-$port.out" 2>&1 9>&- || {
        sift_tail_log "$dir/redis.log"
        sift_die "redis-server failed to start on 127.0.0.1:$port"
    }
    if ! sift_wait_until "$SIFT_WAIT_SECS" "redis on 127.0.0.1:$port" redis_ping "$port" ||
        ! sift_wait_until 10 "$dir/redis.pid" test -s "$dir/redis.pid"; then
        sift_tail_log "$dir/redis.log"
        exit 1
    fi
    local pid
    pid="$(cat "$dir/redis.pid")"
    printf 'pid=%s\nport=%s\ndir=%s\n' "$pid" "$port" "$dir" >"$state"
    echo "redis: started on 127.0.0.1:$port (pid $pid, $(redis_notes "$port"), log $dir/redis.log)"
}

# ---------------------------------------------------------------- PostgreSQL

pg_ready() { # port; pg_isready exit codes: 0 accepting, 1 rejecting (starting), 2 no response
    pg_isready -q -h 127.0.0.1 -p "$1"
}

# Can user postgres log in over TCP without a password?
pg_login_ok() { # port
    psql -h 127.0.0.1 -p "$1" -U postgres -d postgres -w -XAtqc 'select 1' >/dev/null 2>&1
}

pg_server_version() { # port
    psql -h 127.0.0.1 -p "$1" -U postgres -d postgres -w -XAtqc 'show server_version' 2>/dev/null | awk '{print $1}'
}

pg_clusters() { # "version name port status" lines
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters -h 2>/dev/null | awk '{print $1, $2, $3, $4}'
    fi
}

# Let 127.0.0.1 in without a password, on a cluster that these scripts created.
pg_trust_localhost() { # version name
    local hba="/etc/postgresql/$1/$2/pg_hba.conf"
    [[ -f "$hba" ]] || sift_die "no $hba"
    grep -q '# sift deploy/local: trust 127.0.0.1' "$hba" && return 0
    local tmp
    tmp="$(mktemp)"
    {
        echo '# sift deploy/local: trust 127.0.0.1 (cluster created by deploy/local/up.sh for local use)'
        echo 'host    all             all             127.0.0.1/32            trust'
        cat "$hba"
    } >"$tmp"
    sift_as_root cp "$tmp" "$hba"
    rm -f "$tmp"
}

pg_up() {
    local port="$SIFT_PG_PORT"
    local state="$SIFT_STATE_DIR/postgres-$port"
    local log="$SIFT_LOG_DIR/postgres.log"

    # Something listens but there is no client to ask it: get the client only.
    if ! command -v pg_isready >/dev/null 2>&1 && port_in_use "$port"; then
        sift_apt_install postgresql-client
    fi
    local rc=0
    pg_ready "$port" || rc=$?
    if [[ $rc -eq 1 ]]; then # up but still starting
        sift_wait_until "$SIFT_WAIT_SECS" "postgresql on 127.0.0.1:$port" pg_ready "$port" || exit 1
    fi

    local created=0 ver="" name=""
    if ! pg_ready "$port"; then
        port_in_use "$port" && sift_die "127.0.0.1:$port is in use but is not a PostgreSQL server (set SIFT_PG_PORT)"
        if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1 ||
            ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
            local before after
            before="$(pg_clusters | awk '{print $1 "/" $2}')"
            sift_apt_install postgresql
            after="$(pg_clusters | awk '{print $1 "/" $2}')"
            # A cluster that appeared with the package counts as created by us.
            if comm -13 <(sort <<<"$before") <(sort <<<"$after") | grep -q .; then
                created=1
            fi
        fi
        read -r ver name _ <<<"$(pg_clusters | awk -v p="$port" '$3 == p {print $1, $2; exit}')"
        if [[ -z "$ver" ]]; then
            ver="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' | awk -F/ '{print $5}' | sort -V | tail -n 1)"
            [[ -n "$ver" ]] || sift_die "no PostgreSQL server binaries under /usr/lib/postgresql"
            name=main
            [[ -e "/etc/postgresql/$ver/main" ]] && name="sift$port"
            sift_as_root pg_createcluster -p "$port" "$ver" "$name" >>"$log" 2>&1 9>&- ||
                sift_die "pg_createcluster -p $port $ver $name failed (see $log)"
            created=1
        elif [[ "$(sift_state_get "$state" created)" == 1 ]]; then
            created=1
        fi
        [[ $created -eq 1 ]] && pg_trust_localhost "$ver" "$name"
        if pg_lsclusters -h "$ver" "$name" 2>/dev/null | awk '{print $4}' | grep -q online; then
            sift_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload >>"$log" 2>&1 9>&- || true
        else
            sift_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >>"$log" 2>&1 9>&- ||
                sift_die "pg_ctlcluster $ver $name start failed (see $log and /var/log/postgresql/)"
        fi
        if ! sift_wait_until "$SIFT_WAIT_SECS" "postgresql $ver/$name on 127.0.0.1:$port" pg_ready "$port"; then
            sift_tail_log "/var/log/postgresql/postgresql-$ver-$name.log"
            exit 1
        fi
        printf 'version=%s\ncluster=%s\nport=%s\ncreated=%s\n' "$ver" "$name" "$port" "$created" >"$state"
        pg_login_ok "$port" || sift_die "postgresql $ver/$name runs on 127.0.0.1:$port but user postgres cannot log in over TCP without a password (pg_hba.conf)"
        echo "postgresql: started cluster $ver/$name$([[ $created -eq 1 ]] && echo ' (created)') on 127.0.0.1:$port (PostgreSQL $(pg_server_version "$port"))"
        return 0
    fi

    local how="using existing server"
    if [[ -f "$state" ]]; then
        ver="$(sift_state_get "$state" version)"
        name="$(sift_state_get "$state" cluster)"
        if pg_lsclusters -h "$ver" "$name" 2>/dev/null | awk -v p="$port" '$3 == p && $4 ~ /online/' | grep -q .; then
            how="running (started by up.sh, cluster $ver/$name)"
        else
            rm -f "$state"
        fi
    fi
    if pg_login_ok "$port"; then
        echo "postgresql: $how on 127.0.0.1:$port (PostgreSQL $(pg_server_version "$port"))"
    else
        echo "postgresql: $how on 127.0.0.1:$port -- WARNING: user postgres cannot log in over TCP without a password; pg_hba.conf left unchanged (not our cluster)"
    fi
}

# ---------------------------------------------------------------- ClickHouse

clickhouse_up() {
    local port="$SIFT_CLICKHOUSE_HTTP_PORT"
    local state="$SIFT_STATE_DIR/clickhouse"
    command -v curl >/dev/null 2>&1 || sift_apt_install curl ca-certificates
    if curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$port/ping" 2>/dev/null; then
        local line
        if line="$("$SIFT_DEPLOY_DIR/clickhouse.sh" status 2>/dev/null)"; then
            [[ -f "$state" ]] && line="${line/clickhouse: running/clickhouse: running (started by up.sh)}"
            echo "$line"
        else
            rm -f "$state"
            local version
            version="$(curl -fsS -m 5 "http://127.0.0.1:$port/?query=SELECT%20version()" 2>/dev/null || echo '?')"
            echo "clickhouse: using existing server on 127.0.0.1:$port (ClickHouse $version)"
        fi
        return 0
    fi
    "$SIFT_DEPLOY_DIR/clickhouse.sh" start 9>&-
    printf 'run_dir=%s\n' "${SIFT_CLICKHOUSE_DIR:-$SIFT_LOCAL_DIR/clickhouse}" >"$state"
}

redis_up
pg_up
clickhouse_up
