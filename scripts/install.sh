#!/usr/bin/env bash
# Installs the `dma` command into ~/.cargo/bin (or $CARGO_INSTALL_ROOT/bin): sets up libtorch (once per machine, in
# ${DMA_CACHE:-~/.cache/dma}) and builds the release binary there. The binary carries the embedded model and finds
# libtorch in that cache, so the clone may be moved or deleted afterwards. Extra arguments go to `cargo install`.
# Uninstall: `cargo uninstall dma`, and `rm -rf ~/.cache/dma` for libtorch, the data and the unpacked model.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo install --path . --locked "$@"
