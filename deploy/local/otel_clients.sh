#!/usr/bin/env bash
# Installs the real OpenTelemetry GenAI client the `otel_clients` end-to-end test drives
# (tests/otel/requirements.txt, pinned) into .local/otel-venv. Idempotent: does nothing when
# the venv already holds exactly those packages. Prints the venv's python.
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

sift_prepare_dirs
VENV="${SIFT_OTEL_VENV:-$SIFT_LOCAL_DIR/otel-venv}"
REQUIREMENTS="$SIFT_ROOT/tests/otel/requirements.txt"
STAMP="$VENV/.requirements"
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$REQUIREMENTS" "$STAMP"; then
    log="$SIFT_LOG_DIR/otel-pip.log"
    PYTHON="${PYTHON:-python3}"
    command -v "$PYTHON" >/dev/null 2>&1 || sift_apt_install python3 python3-venv
    if ! "$PYTHON" -m venv --clear "$VENV" >>"$log" 2>&1; then
        sift_apt_install python3-venv
        "$PYTHON" -m venv --clear "$VENV" >>"$log" 2>&1 || sift_die "cannot create venv $VENV (see $log)"
    fi
    "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$REQUIREMENTS" >>"$log" 2>&1 ||
        sift_die "pip install -r $REQUIREMENTS into $VENV failed (see $log)"
    cp "$REQUIREMENTS" "$STAMP"
fi
echo "$VENV/bin/python"
