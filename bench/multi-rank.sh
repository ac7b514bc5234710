#!/usr/bin/env bash
# Host engines split over ranks (one process per rank under OpenMPI's
# mpirun): prefill and decode tokens/s of one rank against TP 2, EP 2, PP 2
# and data-parallel attention (DP 2: two replicas, each with its own
# sequence, the experts divided over both ranks; the all-to-all token
# exchange and the all-gather + reduce-scatter one) on a mid-size random
# Llama 4 MoE model. For DP the aggregate is both replicas' tokens over the
# slower replica's time. Each rank takes its share of the cores (the
# runtime divides them by OMPI_COMM_WORLD_LOCAL_SIZE), so on one machine
# the splits measure their collectives and their load balance, not more
# compute: their gain needs more cores or more machines than one rank
# uses.
#   bench/multi-rank.sh [build-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build}/bin
command -v mpirun >/dev/null || { echo "bench/multi-rank.sh: no mpirun (openmpi-bin)"; exit 0; }
mpirun=(mpirun --oversubscribe)
[ "$(id -u)" = 0 ] && mpirun+=(--allow-run-as-root)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prompt=${KILN_BENCH_PROMPT:-128}
steps=${KILN_BENCH_STEPS:-32}
"$bin/kiln-mkmodel" --preset tiny-scout --hidden-size 1024 --layers 8 \
  --heads 8 --kv-heads 2 --head-dim 128 --intermediate-size 1024 \
  --intermediate-size-mlp 2048 --experts 8 -o "$work/m" > /dev/null
python3 "$root/test/e2e/Inputs/make_tokens.py" "$prompt" 256 5 > "$work/a"
python3 "$root/test/e2e/Inputs/make_tokens.py" "$prompt" 256 9 > "$work/b"
echo "model: tiny-scout shape, hidden 1024, 8 layers, 8 experts; prompt $prompt tokens, $steps decode steps, $(nproc) cores"
echo "| layout | ranks | prefill tokens/s | decode tokens/s |"
echo "| --- | --- | --- | --- |"
# The sum of the replicas' tokens/s over the slowest replica's time.
measure() {
  local name=$1 ranks=$2 flags=$3 prompts=$4
  "$bin/kilnc" "$work/m" $flags --target host -o "$work/e.kiln" > /dev/null
  local launch=("${mpirun[@]}" -np "$ranks")
  [ "$ranks" = 1 ] && launch=()
  out=$("${launch[@]}" "$bin/kiln-run" "$work/e.kiln" --checkpoint "$work/m" \
        $prompts --max-new-tokens $((steps + 1)) --ignore-eos 2>/dev/null)
  python3 - "$name" "$ranks" "$out" <<'PY'
import re, sys
name, ranks, out = sys.argv[1], sys.argv[2], sys.argv[3]
pre = [(int(n), float(s)) for n, s in re.findall(r"prefill: (\d+) tokens in ([\d.]+) s", out)]
dec = [(int(n), float(s)) for n, s in re.findall(r"decode: (\d+) steps in ([\d.]+) s", out)]
rate = lambda xs: sum(n for n, _ in xs) / max(s for _, s in xs)
print("| %s | %s | %.1f | %.1f |" % (name, ranks, rate(pre), rate(dec)))
PY
}
measure "one rank" 1 "" "--tokens-file $work/a"
measure "TP 2" 2 "--tp 2" "--tokens-file $work/a"
measure "EP 2" 2 "--ep 2" "--tokens-file $work/a"
measure "PP 2" 2 "--pp 2" "--tokens-file $work/a"
measure "DP 2 (EP 2) all-to-all, 2 sequences" 2 "--tp 1 --dp 2 --ep 2 --exchange all-to-all" "--tokens-file $work/a --tokens-file $work/b"
measure "DP 2 (EP 2) gather, 2 sequences" 2 "--tp 1 --dp 2 --ep 2 --exchange gather" "--tokens-file $work/a --tokens-file $work/b"
