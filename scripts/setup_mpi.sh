#!/usr/bin/env bash
# Open MPI (runtime and headers) and libclang (rsmpi's bindings are generated at build time), for the build with
# `--features mpi` and the tests that run it under mpirun. Once per machine.
set -euo pipefail
if command -v mpirun >/dev/null && [ -f /usr/include/x86_64-linux-gnu/openmpi/include/mpi.h -o -n "$(command -v mpicc)" ] \
    && ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing Open MPI and libclang (for the MPI build and its tests)..." >&2
$SUDO apt-get update -qq >/dev/null || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
