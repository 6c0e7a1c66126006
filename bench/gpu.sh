#!/usr/bin/env bash
# The GPU check: on one GPU, in under 10 minutes,
#   1. the GPU against the CPU on the committed fixtures, SD, SDXL, DiT and the judges (examples/device_agreement.rs: text encoder,
#      network output, h and the alignment gradient, decoder, a short DMA run; each within its tolerance, else exit 1);
#   2. alignment-iteration throughput (latent-iterations per second) at SD 1.5 size, random weights, for f32, bf16
#      and f16 at batch 1, 2, 4, 8, 16, 32;
#   3. the wall time and counted passes of one DMA run at Stable Diffusion's defaults on that model
#      (2 and 3: examples/gpu_bench.rs);
#   4. the half-precision alignment gradient at SDXL base's size (random weights, 128x128 latents, h 1280x32x32):
#      cosine of f16's and bf16's against f32's (examples/half_gradients.rs; BENCHMARKS.md "Half-precision
#      alignment gradients" has SD 1.5's from a CPU, where SDXL's f16 would take hours).
#
#   bench/gpu.sh [--device cuda|cuda:N|cpu] [--quick] [--dma-iters N]
#
# --quick: the tiny fixtures instead of SD 1.5 and SDXL, batches 1 and 2, a 3-step DMA run (the CPU path the tests
# run). --dma-iters N: at most N Adam iterations per aligned step in part 3 (the defaults' 300 at K 32 are up to
# 96,000 latent-iterations, minutes even on a GPU, where a lease is short); the passes it prints scale the time.
# Every part runs even when an earlier one fails; the exit status is 1 if any failed.
# libtorch: a python3 whose torch is 2.11.0 where there is one (the lent GPU machines, which cannot download), else
# the project's own (scripts/env.sh). The examples: built with cargo where there is one (DMA_GPU_PREBUILT=1 skips
# that), else those in target/release/examples, built on another machine and carried along. The tables go to
# stdout and, when OUT is set, to $OUT/gpu-check.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
QUICK=0
DMA_ITERS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --dma-iters) DMA_ITERS=(--dma-iters "$2"); shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if python3 -c 'import sys, torch; sys.exit(0 if torch.__version__.startswith("2.11.0") else 1)' 2>/dev/null; then
  TORCH_LIB="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
  export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LIBTORCH_USE_PYTORCH=1
else
  # shellcheck source=../scripts/env.sh
  source scripts/env.sh
fi
if [ "${DMA_GPU_PREBUILT:-0}" != 1 ] && command -v cargo >/dev/null; then
  cargo build --release --quiet --example device_agreement --example gpu_bench --example half_gradients
fi
BIN=target/release/examples
for example in device_agreement gpu_bench half_gradients; do
  [ -x "$BIN/$example" ] || { echo "bench/gpu.sh: no $BIN/$example: build it (cargo build --release --example $example) or carry it" >&2; exit 1; }
done

REPORT="${OUT:+$OUT/gpu-check.txt}"
report() { if [ -n "$REPORT" ]; then tee -a "$REPORT"; else cat; fi; }
FAILED=()
# One part: its title, then its output and errors in the report; a failure is noted and the next part runs.
part() {
  local title="$1"; shift
  echo "## $title" | report
  "$@" 2>&1 | report || { FAILED+=("$title"); echo "(failed: $title)" | report; }
}
{
  echo "# bench/gpu.sh --device $DEVICE$([ $QUICK = 1 ] && echo ' --quick') ${DMA_ITERS[*]}, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
} | report
part "1. The device against the CPU" "$BIN/device_agreement" "$DEVICE"
if [ "$QUICK" = 1 ]; then
  part "2-3. Alignment throughput and one DMA run" \
    "$BIN/gpu_bench" --device "$DEVICE" --model tests/fixtures/tiny-sd1 --batches 1,2 --iters 2 --latents 2 --dma-steps 3 --dma-iters 2
  SDXL_CONFIG=tests/fixtures/tiny-sdxl/unet/config.json
else
  part "2-3. Alignment throughput and one DMA run" "$BIN/gpu_bench" --device "$DEVICE" "${DMA_ITERS[@]}"
  SDXL_CONFIG=assets/configs/sdxl/unet/config.json
fi
part "4. Half-precision alignment gradients at SDXL size (cosine against f32)" \
  "$BIN/half_gradients" --device "$DEVICE" --config "$SDXL_CONFIG"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "bench/gpu.sh: failed: ${FAILED[*]}" | report
  exit 1
fi
