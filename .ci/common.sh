#!/usr/bin/env bash
# Shared by .ci/demo and .ci/run: install what is missing (Debian/Ubuntu apt),
# then configure and build in build/. Idempotent: a second run installs
# nothing and rebuilds only what changed.
set -euo pipefail

KILN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN_BUILD=${KILN_BUILD:-$KILN_ROOT/build}
LLVM_PREFIX=/usr/lib/llvm-22

kiln_packages=(llvm-22-dev llvm-22-tools libmlir-22-dev mlir-22-tools clang-22
               lld-22 cmake ninja-build ccache python3 python3-numpy
               libgtest-dev coreutils pkg-config openmpi-bin
               libclang-rt-22-dev libomp-22-dev)

kiln_install() {
  local missing=()
  for p in "${kiln_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "kiln: all packages present"
    return
  fi
  echo "kiln: installing ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "kiln: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The same build with AddressSanitizer + UBSan in $KILN_BUILD_SANITIZED
# (docs/testing.md): the whole suite runs there too.
KILN_BUILD_SANITIZED=${KILN_BUILD_SANITIZED:-$KILN_ROOT/build-sanitized}

kiln_build_sanitized() {
  KILN_BUILD=$KILN_BUILD_SANITIZED kiln_build -DKILN_SANITIZE=address,undefined
}

# What a sanitized process does on a finding: report it and exit non-zero.
# lit sets the same for the processes it starts (test/lit.cfg.py); these
# reach the GoogleTest binaries ctest runs directly.
kiln_sanitizer_env() {
  export ASAN_OPTIONS=abort_on_error=0:halt_on_error=1:allocator_may_return_null=1:allow_user_poisoning=0:detect_stack_use_after_return=0
  export LSAN_OPTIONS=suppressions=$KILN_ROOT/test/sanitizers/lsan.supp
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
}

kiln_build() {
  local args=(-G Ninja -B "$KILN_BUILD" -S "$KILN_ROOT"
              -DCMAKE_BUILD_TYPE=Release
              -DMLIR_DIR=$LLVM_PREFIX/lib/cmake/mlir
              -DLLVM_EXTERNAL_LIT=$LLVM_PREFIX/bin/lit
              -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22
              -DLLVM_USE_LINKER=lld "$@")
  if [ ! -f "$KILN_BUILD/build.ninja" ]; then
    cmake "${args[@]}"
  fi
  cmake --build "$KILN_BUILD"
}
