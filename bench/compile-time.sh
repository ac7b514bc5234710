#!/usr/bin/env bash
# Compile time of the real Llama 4 configs (no weights): import; the graph
# pipeline with the cost report (best of 5); and a full host engine with
# code generation (one run).
#   bench/compile-time.sh [build-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build}/bin
echo "| config | stage | time (ms) | kernels | launches |"
echo "| --- | --- | --- | --- | --- |"
for model in llama4-scout-17b-16e llama4-maverick-17b-128e; do
  dir=$root/test/Inputs/models/$model
  for stage in import compile host-engine; do
    best=999999
    runs=5
    [ $stage = host-engine ] && runs=1
    for _ in $(seq $runs); do
      start=$(date +%s%N)
      if [ $stage = import ]; then
        "$bin/kilnc" import "$dir" -o /dev/null
      elif [ $stage = host-engine ]; then
        "$bin/kilnc" "$dir" --target host -o /tmp/kiln-bench.$$.kiln
      else
        "$bin/kilnc" "$dir" --report > /tmp/kiln-report.$$
      fi
      ms=$(( ($(date +%s%N) - start) / 1000000 ))
      [ $ms -lt $best ] && best=$ms
    done
    kernels="-"; launches="-"
    if [ $stage = compile ]; then
      read -r kernels launches < <(sed -n 's/.*: \([0-9]*\) kernels, \([0-9]*\) launches.*/\1 \2/p' /tmp/kiln-report.$$)
    fi
    echo "| $model | $stage | $best | $kernels | $launches |"
  done
done
rm -f /tmp/kiln-report.$$ /tmp/kiln-bench.$$.kiln
