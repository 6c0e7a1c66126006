# Sourced by the project's scripts: installs (once per machine) and activates the libtorch that `tch` links.
#
# tch 0.24 pins libtorch 2.11.0; PyPI's torch==2.11.0 wheel carries it (CPU and CUDA 13 in one build).
# The venv lives in a per-machine cache outside the repository so fresh clones (CI) reuse it.
# DMA_CACHE overrides the cache folder; DMA_PYTHON the interpreter that creates the venv.
# With DMA_FIXTURE_DEPS=1 it also installs what scripts/make_fixtures.py and the PyTorch benchmark need.

DMA_TORCH_VERSION=2.11.0
DMA_CACHE="${DMA_CACHE:-$HOME/.cache/dma}"
DMA_VENV="$DMA_CACHE/venv-torch-$DMA_TORCH_VERSION"

dma_log() { echo "[dma setup] $*" >&2; }

if [ ! -f "$DMA_VENV/.complete" ]; then
  dma_log "installing torch==$DMA_TORCH_VERSION into $DMA_VENV (once per machine, several GB)"
  rm -rf "$DMA_VENV"
  mkdir -p "$DMA_CACHE"
  "${DMA_PYTHON:-python3}" -m venv "$DMA_VENV" || return 1
  "$DMA_VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$DMA_TORCH_VERSION" numpy || return 1
  touch "$DMA_VENV/.complete"
fi

if [ "${DMA_FIXTURE_DEPS:-0}" = 1 ] && [ ! -f "$DMA_VENV/.fixture-deps-2" ]; then
  dma_log "installing diffusers, transformers and safetensors for fixtures and benchmarks"
  "$DMA_VENV/bin/pip" install --quiet --disable-pip-version-check \
    diffusers==0.42.1 transformers==5.23.0 safetensors==0.8.0 peft==0.21.2 accelerate || return 1
  touch "$DMA_VENV/.fixture-deps-2"
fi

# scripts/make_image_reward_fixture.py runs the image-reward package's own code; it pins timm and fairscale, and it
# and timm import torchvision (0.26.0 is the build paired with torch 2.11). --no-deps: its other requirements
# (openai's clip, datasets) are for parts the script does not import, and torch must stay as it is.
if [ "${DMA_FIXTURE_DEPS:-0}" = 1 ] && [ ! -f "$DMA_VENV/.fixture-deps-3" ]; then
  dma_log "installing image-reward, timm, fairscale and torchvision for the ImageReward fixture"
  "$DMA_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    image-reward==1.5 timm==0.6.13 fairscale==0.4.13 torchvision==0.26.0 || return 1
  touch "$DMA_VENV/.fixture-deps-3"
fi

# scripts/make_dreamsim_fixture.py runs the dreamsim package's own code (model.py, feature_extraction/*). --no-deps:
# its other requirements are installed above (peft, timm, torchvision, transformers) or not imported by what the
# script runs (scipy; open-clip-torch, imported only for load_open_clip_as_dino's unused _sanity_check, needs ftfy
# and timm>=1.0.17, which would clash with ImageReward's timm 0.6.13, so the script stubs that one import).
if [ "${DMA_FIXTURE_DEPS:-0}" = 1 ] && [ ! -f "$DMA_VENV/.fixture-deps-4" ]; then
  dma_log "installing dreamsim for the DreamSim fixture"
  "$DMA_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps dreamsim==0.2.1 || return 1
  touch "$DMA_VENV/.fixture-deps-4"
fi

# torch-sys asks `python3` where libtorch is, so the venv's interpreter must come first on PATH.
export PATH="$DMA_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
DMA_TORCH_LIB="$("$DMA_VENV/bin/python3" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export DMA_TORCH_LIB
export LD_LIBRARY_PATH="$DMA_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
