#!/usr/bin/env bash
# Speed of the sm_90a emulator (emulator/, docs/emulator.md): warp
# instructions per second on Kiln's own launches, with every check on (the
# default) and off (KILN_EMU_CHECKS=0), one core. Models: tiny-scout (SIMT
# attention, m64n32 wgmma GEMMs) and a mid-size random model whose shapes
# take the wgmma flash attention and 128-wide GEMM tiles.
#   bench/emulator.sh [build-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
bin=$build/bin
emu=$build/lib/libkiln-cuda-emu.so
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| model | kernel | checks | launches | warp instructions | seconds | M warp instr/s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
run() {
  local name=$1 prompt=$2 kernels=$3; shift 3
  "$bin/kiln-mkmodel" "$@" -o "$work/$name" > /dev/null
  "$bin/kilnc" "$work/$name" --target sm_90a -o "$work/$name.kiln" > /dev/null
  /usr/bin/python3 "$root/test/e2e/Inputs/make_tokens.py" "$prompt" 256 5 > "$work/tokens"
  for checks in on off; do
    local flag=1
    [ "$checks" = off ] && flag=0
    KILN_EMU_CHECKS=$flag KILN_EMU_STATS=kernels KILN_LIBCUDA=$emu \
      "$bin/kiln-run" "$work/$name.kiln" --checkpoint "$work/$name" \
      --tokens-file "$work/tokens" --dump-logits "$work/logits.npy" \
      > /dev/null 2> "$work/stats"
    grep -E "kiln-emu: kernel ($kernels) " "$work/stats" |
      awk -v m="$name" -v c="$checks" '{printf "| %s | %s | %s | %s | %s | %s | %s |\n", m, $3, c, $4, $8, $11, $13}'
    awk -v m="$name" -v c="$checks" '/launches, .* blocks/ {
      printf "| %s | (all) | %s | %s | %s | %s | %s |\n", m, c, $2, $6, $13, $15 }' "$work/stats"
  done
}
run tiny-scout 64 "gemm_0_decode|attention_0|grouped_gemm_0_tiles" \
  --preset tiny-scout
run mid-512 64 "gemm_0_decode|attention_0_flash|grouped_gemm_0_decode" \
  --preset tiny-scout --hidden-size 512 --head-dim 128 --heads 4 --kv-heads 2 \
  --layers 2 --intermediate-size 256 --intermediate-size-mlp 1024 --experts 4 \
  --vocab 512
