#!/usr/bin/env bash
# Sets up libtorch (once per machine) and builds the release binary; prints nothing on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet >&2
