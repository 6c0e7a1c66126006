#!/usr/bin/env bash
# The test suite: sets up libtorch (once per machine), then runs every test in release mode (the model code
# is too slow unoptimised). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# The embedded model's training data (Fashion-MNIST, MNIST digits), once per machine.
scripts/setup_data.sh >/dev/null
# A real browser for the report test.
scripts/setup_chromium.sh
cargo test --release "$@"
