#!/usr/bin/env bash
# Local ClickHouse server without Docker, from the PyPI wheel chdb-core (ClickHouse 26.9).
# Usage: deploy/local/clickhouse.sh start|stop|status   (up.sh calls "start", down.sh "stop")
#   start:  creates the venv (.local/venv) if needed, writes .local/clickhouse/config.xml and
#           users.xml (127.0.0.1 only, ports, a fresh random display_name), launches
#           clickhouse_server.py in the background and waits until /ping answers with that
#           display_name. Data in .local/clickhouse/data persists across restarts.
#   stop:   stops the server this run dir started (SIGTERM, clean shutdown); nothing else.
#   status: exit 0 if our server runs and answers, 3 if it is not running, 1 if it is unhealthy.
# Env: SIFT_LOCAL_DIR, SIFT_CLICKHOUSE_HTTP_PORT (8123), SIFT_CLICKHOUSE_TCP_PORT (9000),
#      SIFT_CLICKHOUSE_DIR (run dir), SIFT_CLICKHOUSE_VENV, SIFT_PYTHON (python3), SIFT_WAIT_SECS.
# Differences from clickhouse-server (see clickhouse_server.py): no Keeper,
# user default only, one server per data dir, system.query_log not kept across restarts.
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

CHDB_VERSION="26.9.0"
CH_VENV="${SIFT_CLICKHOUSE_VENV:-$SIFT_LOCAL_DIR/venv}"
CH_RUN_DIR="${SIFT_CLICKHOUSE_DIR:-$SIFT_LOCAL_DIR/clickhouse}"
case "$CH_RUN_DIR" in /*) ;; *) CH_RUN_DIR="$PWD/$CH_RUN_DIR" ;; esac
CH_DATA_DIR="$CH_RUN_DIR/data"
CH_PID_FILE="$CH_RUN_DIR/server.pid"
CH_LOG="$CH_RUN_DIR/server.log"
CH_CONFIG="$CH_RUN_DIR/config.xml"
CH_LAUNCHER="$SIFT_DEPLOY_DIR/clickhouse_server.py"
PYTHON="${SIFT_PYTHON:-python3}"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Print the X-ClickHouse-Server-Display-Name of the ClickHouse on 127.0.0.1:PORT; fails when
# /ping does not answer. (/ping itself carries no such header; a query response does.)
display_name_at() { # port
    curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$1/ping" 2>/dev/null || return 1
    local headers
    headers="$(curl -fsS -m 5 -D - -o /dev/null "http://127.0.0.1:$1/?query=SELECT%201" 2>/dev/null)" || return 1
    printf '%s\n' "$headers" | tr -d '\r' |
        awk 'tolower($1) == "x-clickhouse-server-display-name:" { print $2 }'
}

answers_as() { # port display_name
    [[ "$(display_name_at "$1")" == "$2" ]]
}

port_in_use() { # port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid of the server launched for this run dir, if it is alive.
our_pid() {
    local pid
    pid="$(cat "$CH_PID_FILE" 2>/dev/null || true)"
    sift_pid_alive "$pid" || return 1
    [[ "$(sift_pid_cmdline "$pid")" == *"clickhouse_server.py --run-dir $CH_RUN_DIR "* ]] || return 1
    echo "$pid"
}

config_value() { # tag: read from the config.xml of the running server
    sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$CH_CONFIG" 2>/dev/null | head -n 1
}

ensure_venv() {
    local have=""
    if [[ -x "$CH_VENV/bin/python" ]]; then
        have="$("$CH_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("chdb-core"))' 2>/dev/null || true)"
    fi
    [[ "$have" == "$CHDB_VERSION" ]] && return 0
    sift_prepare_dirs
    local log="$SIFT_LOG_DIR/pip.log"
    echo "clickhouse: installing chdb-core==$CHDB_VERSION into $CH_VENV (once; about 180 MB)" >&2
    if ! "$CH_VENV/bin/python" -c '' >/dev/null 2>&1; then
        # Missing, or broken (e.g. the repository moved): (re)create it.
        local clear=()
        [[ -f "$CH_VENV/pyvenv.cfg" ]] && clear=(--clear)
        command -v "$PYTHON" >/dev/null 2>&1 || sift_apt_install python3 python3-venv
        if ! "$PYTHON" -m venv "${clear[@]}" "$CH_VENV" >>"$log" 2>&1; then
            # Debian's own python3 needs python3-venv (ensurepip) for this.
            sift_apt_install python3-venv
            "$PYTHON" -m venv --clear "$CH_VENV" >>"$log" 2>&1 || sift_die "cannot create venv $CH_VENV (see $log)"
        fi
    fi
    "$CH_VENV/bin/python" -m pip install --disable-pip-version-check --no-deps "chdb-core==$CHDB_VERSION" >>"$log" 2>&1 ||
        sift_die "pip install chdb-core==$CHDB_VERSION into $CH_VENV failed (see $log)"
}

write_config() { # display_name
    mkdir -p "$CH_RUN_DIR" "$CH_DATA_DIR"
    cat >"$CH_CONFIG.tmp" <<EOF
<!-- Written by deploy/local/clickhouse.sh at every start; edits here are overwritten. -->
<clickhouse>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$SIFT_CLICKHOUSE_HTTP_PORT</http_port>
    <tcp_port>$SIFT_CLICKHOUSE_TCP_PORT</tcp_port>
    <display_name>$1</display_name>
    <users_config>users.xml</users_config>
    <!-- Kept in memory only by this build: gone after a restart. -->
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <flush_interval_milliseconds>7500</flush_interval_milliseconds>
        <ttl>event_date + INTERVAL 3 DAY DELETE</ttl>
    </query_log>
</clickhouse>
EOF
    mv "$CH_CONFIG.tmp" "$CH_CONFIG"
    # User "default" must stay without a password (the engine logs itself in as default).
    # async_insert = 0 as in clickhouse-server (this build defaults to 1).
    cat >"$CH_RUN_DIR/users.xml.tmp" <<'EOF'
<!-- Written by deploy/local/clickhouse.sh at every start; edits here are overwritten. -->
<clickhouse>
    <profiles>
        <default>
            <async_insert>0</async_insert>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default></default>
    </quotas>
</clickhouse>
EOF
    mv "$CH_RUN_DIR/users.xml.tmp" "$CH_RUN_DIR/users.xml"
}

server_version() { # port
    curl -fsS -m 5 "http://127.0.0.1:$1/?query=SELECT%20version()" 2>/dev/null || echo "?"
}

cmd_status() {
    local pid port name
    if ! pid="$(our_pid)"; then
        echo "clickhouse: not running (run dir $CH_RUN_DIR)"
        return 3
    fi
    port="$(config_value http_port)"
    name="$(display_name_at "$port" || true)"
    if [[ -n "$name" && "$name" == "$(config_value display_name)" ]]; then
        echo "clickhouse: running, ClickHouse $(server_version "$port") on 127.0.0.1:$port (http) and :$(config_value tcp_port) (tcp), pid $pid"
        return 0
    fi
    echo "clickhouse: process $pid is alive but 127.0.0.1:$port/ping does not answer as it (log: $CH_LOG)"
    return 1
}

cmd_start() {
    sift_check_port SIFT_CLICKHOUSE_HTTP_PORT "$SIFT_CLICKHOUSE_HTTP_PORT"
    sift_check_port SIFT_CLICKHOUSE_TCP_PORT "$SIFT_CLICKHOUSE_TCP_PORT"
    command -v curl >/dev/null 2>&1 || sift_apt_install curl ca-certificates
    local pid port
    if pid="$(our_pid)"; then
        if [[ "$(config_value http_port)" != "$SIFT_CLICKHOUSE_HTTP_PORT" || "$(config_value tcp_port)" != "$SIFT_CLICKHOUSE_TCP_PORT" ]]; then
            sift_die "clickhouse from $CH_RUN_DIR already runs (pid $pid) on ports $(config_value http_port)/$(config_value tcp_port); stop it first to change ports"
        fi
        # Already ours: wait in case it is still starting up.
        if ! sift_wait_until "$SIFT_WAIT_SECS" "clickhouse (pid $pid) to answer" \
            answers_as "$SIFT_CLICKHOUSE_HTTP_PORT" "$(config_value display_name)"; then
            sift_tail_log "$CH_LOG"
            exit 1
        fi
        echo "clickhouse: already running, ClickHouse $(server_version "$SIFT_CLICKHOUSE_HTTP_PORT") on 127.0.0.1:$SIFT_CLICKHOUSE_HTTP_PORT (http) and :$SIFT_CLICKHOUSE_TCP_PORT (tcp), pid $pid"
        return 0
    fi

    local other
    if other="$(display_name_at "$SIFT_CLICKHOUSE_HTTP_PORT")"; then
        sift_die "127.0.0.1:$SIFT_CLICKHOUSE_HTTP_PORT already answers as another ClickHouse (display name '${other:-?}'), not the one of $CH_RUN_DIR"
    fi
    for port in "$SIFT_CLICKHOUSE_HTTP_PORT" "$SIFT_CLICKHOUSE_TCP_PORT"; do
        port_in_use "$port" && sift_die "127.0.0.1:$port is already in use by another program"
    done

    ensure_venv
    local name t0 t1
    name="sift-local-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
    write_config "$name"
    rm -f "$CH_PID_FILE"

    t0="$(now_ms)"
    echo "=== $(date '+%Y-%m-%d %H:%M:%S') clickhouse.sh start: http $SIFT_CLICKHOUSE_HTTP_PORT, tcp $SIFT_CLICKHOUSE_TCP_PORT, display_name $name" >>"$CH_LOG"
    setsid nohup "$CH_VENV/bin/python" "$CH_LAUNCHER" --run-dir "$CH_RUN_DIR" --data-dir "$CH_DATA_DIR" \
        --pid-file "$CH_PID_FILE" </dev/null >>"$CH_LOG" 2>&1 9>&- &
    local launched=$!

    local deadline=$((SECONDS + SIFT_WAIT_SECS)) got=""
    while :; do
        got="$(display_name_at "$SIFT_CLICKHOUSE_HTTP_PORT" || true)"
        [[ "$got" == "$name" ]] && break
        if [[ -n "$got" ]]; then
            sift_stop_pid "$launched" clickhouse
            sift_die "127.0.0.1:$SIFT_CLICKHOUSE_HTTP_PORT answers as '$got', expected our '$name'"
        fi
        if ! sift_pid_alive "$launched"; then
            sift_tail_log "$CH_LOG"
            sift_die "clickhouse exited during start-up (log: $CH_LOG)"
        fi
        if ((SECONDS >= deadline)); then
            sift_tail_log "$CH_LOG"
            sift_stop_pid "$launched" clickhouse
            sift_die "clickhouse did not answer on 127.0.0.1:$SIFT_CLICKHOUSE_HTTP_PORT/ping within ${SIFT_WAIT_SECS}s (log: $CH_LOG)"
        fi
        sleep 0.1
    done
    t1="$(now_ms)"
    pid="$(our_pid || echo "$launched")"
    printf 'clickhouse: started ClickHouse %s on 127.0.0.1:%s (http) and :%s (tcp), pid %s, ready in %d.%03ds (data %s)\n' \
        "$(server_version "$SIFT_CLICKHOUSE_HTTP_PORT")" "$SIFT_CLICKHOUSE_HTTP_PORT" "$SIFT_CLICKHOUSE_TCP_PORT" "$pid" \
        $(((t1 - t0) / 1000)) $(((t1 - t0) % 1000)) "$CH_DATA_DIR"
}

cmd_stop() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$CH_PID_FILE"
        echo "clickhouse: not running (run dir $CH_RUN_DIR)"
        return 0
    fi
    sift_stop_pid "$pid" clickhouse
    rm -f "$CH_PID_FILE"
    echo "clickhouse: stopped (pid $pid)"
}

case "${1:-}" in
start)
    mkdir -p "$CH_RUN_DIR"
    sift_lock "$CH_RUN_DIR/.lock"
    cmd_start
    ;;
stop)
    [[ -d "$CH_RUN_DIR" ]] && sift_lock "$CH_RUN_DIR/.lock"
    cmd_stop
    ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
