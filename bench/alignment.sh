#!/usr/bin/env bash
# One alignment iteration of DMA (encoder-only forward + backward to the latent) at the SD 1.5 UNet config
# (random weights, 64x64 latent, f32, CPU): Rust (examples/bench_alignment.rs) against PyTorch/diffusers
# (bench/torch_alignment.py) on the same machine, alternating, plus the encoder-only speed-up and peak memory.
#
#   bench/alignment.sh [--dit | --sdxl] [-r ROUNDS] [-b "1 2 4"] [--no-memory] [--no-timing]
#
# --dit: the same at DiT-XL/2-256's config (random weights, 32x32x4 latent, class-conditional; h the last of 28
# transformer blocks' tokens) instead of SD 1.5's UNet.
# --sdxl: at SDXL base 1.0's UNet config (random weights, 128x128x4 latent, 77x2048 text context, the pooled
# embedding and size numbers of a 1024 px image; h the mid block's 1280x32x32). Two loaded SDXL processes do not fit
# in 24 GB beside each other, so the lockstep timing is skipped: the per-process memory runs (batches "1 2", one
# timed iteration after one of warm-up, Rust and PyTorch alternating which goes first) give the seconds and the
# ratio, and the largest batch is derived for 24 and 80 GB. Stop other heavy work first (about 30 minutes, 22 GB).
#
# Environment (flags win): ROUNDS (default 3): rounds of timing, each one repetition of every mode in Rust and in
# PyTorch, back to back (the two processes stay loaded and take turns; which goes first alternates);
# MEM_BATCHES (default "1 2 4"), MEM_REPS alignment iterations per memory process (default 2),
# BUDGET_GB (default 24), DMA_BENCH_UNET (the network's folder; default $DMA_CACHE/bench/sd15-random-unet, or
# dit-xl-256-random-transformer with --dit, made if missing), DMA_BENCH_OUT (where the JSON lines go; default $DMA_CACHE/bench/results).
#
# Setup: installs the venv of scripts/env.sh with diffusers (once per machine), makes the random SD 1.5 UNet
# (about 3.4 GB, once), builds the example. Wall time with the defaults on an idle 2-core machine: about
# 6 minutes (first time: plus the weights, about 1 minute, and the build).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
MEM_BATCHES="${MEM_BATCHES:-1 2 4}"
MEM_REPS="${MEM_REPS:-2}"
MEM_WARMUP=0
BUDGET_GB="${BUDGET_GB:-24}"
DO_TIMING=1
DO_MEMORY=1
NETWORK=sd15-unet
while [ $# -gt 0 ]; do
  case "$1" in
    --dit) NETWORK=dit-xl-256; shift ;;
    --sdxl) NETWORK=sdxl-unet; DO_TIMING=0; MEM_REPS=1; MEM_WARMUP=1; MEM_BATCHES="${MEM_BATCHES_SET:-1 2}"; BUDGET_GB="24 80"; shift ;;
    -r|--rounds) ROUNDS="$2"; shift 2 ;;
    -b|--batches) MEM_BATCHES="$2"; MEM_BATCHES_SET="$2"; shift 2 ;;
    --no-memory) DO_MEMORY=0; shift ;;
    --no-timing) DO_TIMING=0; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

export DMA_FIXTURE_DEPS=1
# shellcheck source=../scripts/env.sh
source scripts/env.sh
CACHE="${DMA_CACHE:-$HOME/.cache/dma}"
if [ "$NETWORK" = dit-xl-256 ]; then
  UNET="${DMA_BENCH_UNET:-$CACHE/bench/dit-xl-256-random-transformer}"
  NET_FLAG=--transformer
elif [ "$NETWORK" = sdxl-unet ]; then
  UNET="${DMA_BENCH_UNET:-$CACHE/bench/sdxl-random-unet}"
  NET_FLAG=--unet
else
  UNET="${DMA_BENCH_UNET:-$CACHE/bench/sd15-random-unet}"
  NET_FLAG=--unet
fi
OUT_DIR="${DMA_BENCH_OUT:-$CACHE/bench/results}"
mkdir -p "$OUT_DIR"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="$OUT_DIR/alignment-$NETWORK-$STAMP.jsonl"
LOG="$OUT_DIR/alignment-$NETWORK-$STAMP.log"

log() { echo "[bench $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

python3 bench/make_random_network.py --network "$NETWORK" --out "$UNET" 2>&1 | tee -a "$LOG" >&2
cargo build --release --example bench_alignment 2>&1 | tail -3 | tee -a "$LOG" >&2
RUST_BIN=target/release/examples/bench_alignment

# PyTorch gets the thread count libtorch chooses in the Rust process.
THREADS="$("$RUST_BIN" --info | python3 -c 'import json, sys; print(json.load(sys.stdin)["threads"]["intra_op"])')"
TORCH_DEFAULT="$(python3 -c 'import torch; print(torch.get_num_threads())')"
log "threads: Rust (libtorch default) $THREADS, PyTorch default $TORCH_DEFAULT; both run with $THREADS"
log "results: $RESULTS"

# run ROLE ROUND IMPL ARGS...: one process, its JSON line tagged and appended to the results.
run() {
  local role="$1" round="$2" impl="$3"
  shift 3
  local cmd
  if [ "$impl" = rust ]; then cmd=("$RUST_BIN"); else cmd=(python3 bench/torch_alignment.py); fi
  local line
  line="$("${cmd[@]}" "$NET_FLAG" "$UNET" --threads "$THREADS" "$@" 2>>"$LOG" | grep '^{' | tail -1)"
  [ -n "$line" ] || { log "$impl $role round $round: no result (see $LOG)"; return 1; }
  echo "{\"role\":\"$role\",\"round\":$round,${line#\{}" >>"$RESULTS"
  log "$impl $role round $round: $(echo "$line" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(" ".join(f"{k}={v:.2f}s" for k, v in d["median"].items()), "peak", round(d["rss"]["peak_bytes"] / 1e9, 2), "GB")'); loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
}

if [ "$DO_TIMING" = 1 ]; then
  # Both load once and take turns, one repetition each, per mode and round (bench/compare_alignment.py).
  log "timing: $ROUNDS rounds in lockstep (load $(cut -d' ' -f1-3 /proc/loadavg))"
  python3 bench/compare_alignment.py --rust-bin "$RUST_BIN" "$NET_FLAG" "$UNET" --threads "$THREADS" \
    --rounds "$ROUNDS" --warmup 1 >>"$RESULTS" 2> >(tee -a "$LOG" >&2)
fi

if [ "$DO_MEMORY" = 1 ]; then
  i=0
  for b in $MEM_BATCHES; do
    i=$((i + 1))
    if [ $((i % 2)) = 1 ]; then order="rust pytorch"; else order="pytorch rust"; fi
    for impl in $order; do
      run memory 0 "$impl" --modes enc_fwd_bwd --batch "$b" --reps "$MEM_REPS" --warmup "$MEM_WARMUP" --skip-check
    done
  done
fi

{
  echo "## Alignment iteration ($NETWORK config, CPU) - $STAMP"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.1f GB RAM", $2 * 1024 / 1e9}' /proc/meminfo); torch $(python3 -c 'import torch; print(torch.__version__)'), diffusers $(python3 -c 'import diffusers; print(diffusers.__version__)'); load average before/after: see $LOG."
  echo
  # shellcheck disable=SC2086 # one or more budgets
  python3 bench/summarize_alignment.py "$RESULTS" --budget-gb $BUDGET_GB
} | tee "$OUT_DIR/alignment-$NETWORK-$STAMP.md"
log "summary: $OUT_DIR/alignment-$NETWORK-$STAMP.md"
