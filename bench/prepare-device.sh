#!/usr/bin/env bash
# Prepares what bench/device.sh needs on a GPU machine, which has no MLIR:
# tiny checkpoints with their host and sm_90a engines, the sm_90a engine of a
# 4-layer real-size Scout-shaped model (config only: device.sh draws random
# weights there), and the prompts. Host engines are built for any AVX2 CPU
# on one thread (the GPU machine may lack AVX-512 and libomp). Run here, then
# carry the folder:
#   bench/prepare-device.sh [out-dir=bench-inputs] [build-dir=build]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bench-inputs}
bin=${2:-$root/build}/bin
py=/usr/bin/python3
rm -rf "$out" && mkdir -p "$out"
model() {
  local name=$1; shift
  "$bin/kiln-mkmodel" "$@" -o "$out/$name"
  "$bin/kilnc" "$out/$name" --target host --cpu x86-64-v3 --host-threads=false -o "$out/$name.host.kiln"
  "$bin/kilnc" "$out/$name" --target sm_90a -o "$out/$name.sm90.kiln"
}
model tiny-scout --preset tiny-scout
model tiny-maverick --preset tiny-maverick
# A prefill of 40 tokens crosses two chunk boundaries.
model tiny-scout-chunk16 --preset tiny-scout --attention-chunk-size 16
# The shapes of the emulator's GPU-engine suite (test/Emulator/gpu-engines-
# *.test): every wgmma kernel (head_dim 128, GQA, hidden 512, a 2048-wide
# gate/up, grouped expert GEMMs, a NoPE layer, chunks of 64), so the first
# GPU run checks what the emulator checked.
wgmma=(--hidden-size 512 --head-dim 128 --heads 8 --kv-heads 2 --layers 4
       --intermediate-size 256 --intermediate-size-mlp 1024 --experts 4
       --vocab 1024 --attention-chunk-size 64)
model wgmma-scout --preset tiny-scout "${wgmma[@]}"
model wgmma-maverick --preset tiny-maverick "${wgmma[@]}"

mkdir -p "$out/scout4"
$py - "$root/test/Inputs/models/llama4-scout-17b-16e/config.json" \
  "$out/scout4/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["text_config"]["num_hidden_layers"] = 4
json.dump(c, open(sys.argv[2], "w"), indent=1)
PY
"$bin/kilnc" "$out/scout4" --target sm_90a --kernel-resources \
  -o "$out/scout4.sm90.kiln" > "$out/scout4.resources.txt"

tokens="$root/test/e2e/Inputs/make_tokens.py"
$py "$tokens" 40 256 3 > "$out/prompt40"
$py "$tokens" 72 1024 3 > "$out/prompt72"
$py "$tokens" 128 202048 5 > "$out/prompt128"
$py "$tokens" 4096 202048 7 > "$out/prompt4k"
$py "$tokens" 16384 202048 11 > "$out/prompt16k"
du -sh "$out"
