# Shared settings and helpers for deploy/local/*.sh (sourced, not executed).
# Paths, default ports, a quiet apt-get wrapper, bounded waits and the state directory that
# records which services up.sh itself started (so down.sh stops only those).
# shellcheck shell=bash

SIFT_DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SIFT_ROOT="$(cd "$SIFT_DEPLOY_DIR/../.." && pwd)"

SIFT_LOCAL_DIR="${SIFT_LOCAL_DIR:-$SIFT_ROOT/.local}"
case "$SIFT_LOCAL_DIR" in /*) ;; *) SIFT_LOCAL_DIR="$PWD/$SIFT_LOCAL_DIR" ;; esac
SIFT_STATE_DIR="$SIFT_LOCAL_DIR/state"
SIFT_LOG_DIR="$SIFT_LOCAL_DIR/logs"

SIFT_REDIS_PORT="${SIFT_REDIS_PORT:-6379}"
SIFT_PG_PORT="${SIFT_PG_PORT:-5432}"
SIFT_CLICKHOUSE_HTTP_PORT="${SIFT_CLICKHOUSE_HTTP_PORT:-8123}"
SIFT_CLICKHOUSE_TCP_PORT="${SIFT_CLICKHOUSE_TCP_PORT:-9000}"
# Seconds to wait for a service to become ready / to stop.
SIFT_WAIT_SECS="${SIFT_WAIT_SECS:-60}"

export SIFT_LOCAL_DIR SIFT_REDIS_PORT SIFT_PG_PORT SIFT_CLICKHOUSE_HTTP_PORT SIFT_CLICKHOUSE_TCP_PORT SIFT_WAIT_SECS

sift_die() {
    echo "error: $*" >&2
    exit 1
}

sift_check_port() { # name value
    if [[ ! "$2" =~ ^[0-9]{1,5}$ ]] || ((10#$2 < 1 || 10#$2 > 65535)); then
        sift_die "$1 must be a TCP port (1-65535), got '$2'"
    fi
}

sift_prepare_dirs() {
    mkdir -p "$SIFT_STATE_DIR" "$SIFT_LOG_DIR"
}

# Serialize runs that share FILE (two up.sh at once, say). The lock is held on fd 9 until the
# script exits; whatever may leave a daemon behind is started with 9>&- so it does not keep it.
sift_lock() { # file
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$1"
    flock -w "$SIFT_WAIT_SECS" 9 || sift_die "$1 is locked by another deploy/local script for more than ${SIFT_WAIT_SECS}s"
}

# Run a command as root (directly when we are root, else through non-interactive sudo).
sift_as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        sift_die "need root (or sudo) to run: $*"
    fi
}

# apt-get install, with one apt-get update per script run; output goes to .local/logs/apt.log.
SIFT_APT_UPDATED=0
sift_apt_install() {
    command -v apt-get >/dev/null 2>&1 || sift_die "apt-get not found; install $* by hand"
    sift_prepare_dirs
    local log="$SIFT_LOG_DIR/apt.log"
    if [[ $SIFT_APT_UPDATED -eq 0 ]]; then
        sift_as_root env DEBIAN_FRONTEND=noninteractive apt-get update >>"$log" 2>&1 9>&- ||
            sift_die "apt-get update failed (see $log)"
        SIFT_APT_UPDATED=1
    fi
    # 9>&-: package scripts may start the service; it must not inherit our lock.
    sift_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1 9>&- ||
        sift_die "apt-get install $* failed (see $log)"
}

# sift_wait_until SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
sift_wait_until() {
    local secs="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "error: timed out after ${secs}s waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

# True when the process exists and is not a zombie (an unreaped zombie is as good as gone).
sift_pid_alive() { # pid
    [[ -n "${1:-}" && "$1" =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != "Z" ]]
}

# The command line of a process, NULs turned into spaces ("" when it is gone).
sift_pid_cmdline() {
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
}

# Send SIGTERM and wait (bounded) for the process to exit; SIGKILL as a last resort.
sift_stop_pid() { # pid name
    local pid="$1" name="$2"
    sift_pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + SIFT_WAIT_SECS))
    while sift_pid_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            echo "warning: $name (pid $pid) did not stop within ${SIFT_WAIT_SECS}s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.1
    done
}

# Value of KEY in a state file of key=value lines ("" if the file or key is missing).
sift_state_get() { # file key
    [[ -f "$1" ]] || return 0
    sed -n "s/^$2=//p" "$1" | head -n 1
}

sift_tail_log() { # file
    if [[ -f "$1" ]]; then
        echo "--- last lines of $1:" >&2
        tail -n 20 "$1" >&2
    fi
}
