#!/usr/bin/env bash
# Makes Debian's Chromium available for the dashboard's browser test (headless). Idempotent:
# does nothing when /usr/bin/chromium is there. Prints the path of the browser.
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

if ! command -v chromium >/dev/null 2>&1; then
    sift_prepare_dirs
    sift_apt_install chromium fonts-dejavu-core
fi
command -v chromium
