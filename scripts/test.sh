#!/usr/bin/env bash
# The test suite: sets up libtorch (once per machine), then runs every test in release mode (the model code
# is too slow unoptimised), and the MPI tests in a build with MPI. Extra arguments go to the first `cargo test`
# (and skip the MPI build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# The embedded model's training data (Fashion-MNIST, MNIST digits), once per machine.
scripts/setup_data.sh >/dev/null
# A real browser for the report test; Open MPI for the runs across ranks.
scripts/setup_chromium.sh
scripts/setup_mpi.sh
cargo test --release "$@"
# The runs across MPI ranks, in the build with `--features mpi` (its own target folder, so the two builds do not
# replace each other's artifacts).
if [ "$#" = 0 ]; then
    CARGO_TARGET_DIR=target/mpi cargo test --release --features mpi --test mpi
fi
