#!/usr/bin/env bash
# CPU throughput of host engines: prefill and decode tokens/s on the tiny
# presets and on a mid-size random model (hidden 1024, 8 layers), at
# KILN_THREADS threads (default: every core). bench/cpu-vs-llamacpp.sh is
# the side-by-side comparison with llama.cpp.
#   bench/cpu-throughput.sh [build-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build}/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| model | prompt | prefill tokens/s | decode tokens/s (32 steps) |"
echo "| --- | --- | --- | --- |"
run() {
  local name=$1 prompt=$2; shift 2
  "$bin/kiln-mkmodel" "$@" -o "$work/$name"
  "$bin/kilnc" "$work/$name" --target host -o "$work/$name.kiln"
  /usr/bin/python3 "$root/test/e2e/Inputs/make_tokens.py" "$prompt" 256 5 > "$work/tokens"
  out=$("$bin/kiln-run" "$work/$name.kiln" --checkpoint "$work/$name" \
        --tokens-file "$work/tokens" --max-new-tokens 33 --ignore-eos 2>/dev/null)
  prefill=$(sed -n 's/^prefill: .*(\(.*\) tokens\/s)/\1/p' <<<"$out")
  decode=$(sed -n 's/^decode: .*(\(.*\) tokens\/s)/\1/p' <<<"$out")
  echo "| $name | $prompt | $prefill | $decode |"
}
run tiny-scout 64 --preset tiny-scout
run tiny-maverick 64 --preset tiny-maverick
run mid-1024x8 64 --preset tiny-scout --hidden-size 1024 --layers 8 --heads 8 \
  --kv-heads 2 --head-dim 128 --intermediate-size 1024 --intermediate-size-mlp 2048
