#!/usr/bin/env bash
# Debian's Chromium, for the test that opens report.html in a real headless browser. Once per machine.
set -euo pipefail
if [ -x /usr/bin/chromium ] || [ -n "${DMA_CHROMIUM:-}" ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing Debian's chromium (for the report test)..." >&2
$SUDO apt-get update -qq >/dev/null || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
