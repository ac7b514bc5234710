#!/usr/bin/env bash
# Kiln's host engines against llama.cpp on one random checkpoint (issue 14's
# 243M-parameter Scout-shaped model: hidden 1024, 8 layers, 16 experts of
# 512, head_dim 128, 8/2 heads, vocab 4096, bf16 weights): prefill of 64 and
# 512 tokens and decode after a 64-token prompt, at 1 and 2 threads, as
# tokens/s and ratios. Also: the machine's measured FMA peak and memory
# bandwidth (bench/cpu-peak.c, in the same run), Kiln's prefill GFLOP/s
# against that peak (FLOPs from kilnc's cost report) and its decode bytes/s
# against the bandwidth (a decode step reads its active weights once).
#
#   bench/cpu-vs-llamacpp.sh [build-dir]
#   LLAMA_CPP_SRC=/path/to/llama.cpp bench/cpu-vs-llamacpp.sh
#
# llama.cpp is not a Debian package: with LLAMA_CPP_SRC (a source tree, and
# the Python modules its convert_hf_to_gguf.py needs) it is built, given the
# same checkpoint in f32 and timed with llama-bench; otherwise the figures
# issue 14 measured on this machine kind stand in, and the table says so.
# Best of KILN_BENCH_REPEATS (3) runs each. Run on an idle machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build}/bin
repeats=${KILN_BENCH_REPEATS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc=$(command -v clang-22 || command -v clang || command -v cc)
calc() { /usr/bin/python3 -c "print('$1' % ($2))"; }

"$bin/kiln-mkmodel" --preset tiny-scout --hidden-size 1024 --layers 8 \
  --experts 16 --intermediate-size 512 --intermediate-size-mlp 1024 \
  --head-dim 128 --heads 8 --kv-heads 2 --vocab 4096 -o "$work/model" >/dev/null
start=$(date +%s.%N)
"$bin/kilnc" "$work/model" --target host -o "$work/model.kiln"
compile=$(calc %.1f "$(date +%s.%N) - $start")
level=$(grep -ao '"host_cpu":"[^"]*"' "$work/model.kiln" | head -1 | cut -d'"' -f4)
for n in 64 512; do
  /usr/bin/python3 "$root/test/e2e/Inputs/make_tokens.py" $n 4096 5 > "$work/t$n"
done

# FLOPs of a 512-token prefill and bytes of a decode step after 64 tokens.
report=$("$bin/kilnc" "$work/model" --report --report-prefill-tokens 512 \
  --report-decode-context 64)
prefill_gflop=$(awk '/^prefill:/{p=1} p && /^total/{print $2; exit}' <<<"$report")
decode_gb=$(awk '/^decode step:/{p=1} p && /^total/{print $3; exit}' <<<"$report")

"$cc" -O2 -march=native -pthread "$root/bench/cpu-peak.c" -o "$work/cpu-peak"
peaks=$("$work/cpu-peak" 1 2)

# Best tokens/s of `repeats` runs: kiln THREADS PROMPT-FILE NEW-TOKENS FIELD
kiln() {
  local best=0 out value
  for _ in $(seq "$repeats"); do
    out=$("$bin/kiln-run" "$work/model.kiln" --checkpoint "$work/model" \
          --tokens-file "$2" --max-new-tokens "$3" --ignore-eos --threads "$1" 2>/dev/null)
    value=$(sed -n "s/^$4: .*(\(.*\) tokens\/s)/\1/p" <<<"$out")
    best=$(calc %.1f "max($value, $best)")
  done
  calc %.0f "$best"
}

declare -A kilnTs llamaTs
for t in 1 2; do
  kilnTs[p64,$t]=$(kiln $t "$work/t64" 1 prefill)
  kilnTs[p512,$t]=$(kiln $t "$work/t512" 1 prefill)
  kilnTs[d64,$t]=$(kiln $t "$work/t64" 65 decode)
done

source="issue 14's figures (unmodified llama.cpp, f32 weights, measured on this machine kind; not in this run)"
llamaTs=([p64,1]=558 [p512,1]=745 [d64,1]=71 [p64,2]=1026 [p512,2]=1398 [d64,2]=165)
if [ -n "${LLAMA_CPP_SRC:-}" ] && [ -f "$LLAMA_CPP_SRC/CMakeLists.txt" ]; then
  echo "building llama.cpp from $LLAMA_CPP_SRC ..." >&2
  cmake -S "$LLAMA_CPP_SRC" -B "$work/llama" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
  cmake --build "$work/llama" --target llama-bench -j "$(nproc)" >/dev/null
  /usr/bin/python3 "$LLAMA_CPP_SRC/convert_hf_to_gguf.py" "$work/model" \
    --outtype f32 --outfile "$work/model.gguf" >/dev/null
  bench="$work/llama/bin/llama-bench"
  # CSV: the last field is the mean tokens/s; prefill at depth 0, decode of
  # 64 tokens after 64 (-d: the context already in the KV cache).
  for t in 1 2; do
    llamaTs[p64,$t]=$("$bench" -m "$work/model.gguf" -t $t -p 64 -n 0 -r "$repeats" -o csv | tail -1 | awk -F, '{gsub(/"/,""); print int($(NF-1))}')
    llamaTs[p512,$t]=$("$bench" -m "$work/model.gguf" -t $t -p 512 -n 0 -r "$repeats" -o csv | tail -1 | awk -F, '{gsub(/"/,""); print int($(NF-1))}')
    llamaTs[d64,$t]=$("$bench" -m "$work/model.gguf" -t $t -p 0 -n 64 -d 64 -r "$repeats" -o csv | tail -1 | awk -F, '{gsub(/"/,""); print int($(NF-1))}')
  done
  source="llama.cpp built from $LLAMA_CPP_SRC in this run (f32 weights, llama-bench)"
fi

echo "Kiln host engine: --cpu native = $level, compiled in $compile s"
echo "llama.cpp: $source"
echo
echo "| tokens/s | threads | Kiln | llama.cpp | Kiln / llama.cpp |"
echo "| --- | --- | --- | --- | --- |"
for t in 1 2; do
  for m in p64 p512 d64; do
    name=$([ $m = p64 ] && echo "prefill 64" || ([ $m = p512 ] && echo "prefill 512" || echo "decode after 64"))
    ratio=$(calc %.2f "${kilnTs[$m,$t]} / ${llamaTs[$m,$t]}")
    echo "| $name | $t | ${kilnTs[$m,$t]} | ${llamaTs[$m,$t]} | ${ratio}x |"
  done
done
echo
echo "| threads | FMA peak GFLOP/s | Kiln prefill 512 GFLOP/s | of peak | read GB/s | copy GB/s | Kiln decode GB/s | of read |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
while read -r t fma copy triad read; do
  gflops=$(calc %.1f "$prefill_gflop * ${kilnTs[p512,$t]} / 512")
  gbs=$(calc %.2f "$decode_gb * ${kilnTs[d64,$t]}")
  echo "| $t | $fma | $gflops | $(calc %.0f "100 * $gflops / $fma")% | $read | $copy | $gbs | $(calc %.0f "100 * $gbs / $read")% |"
done <<<"$peaks"
echo
echo "(prefill 512: $prefill_gflop GFLOP a pass; decode step after 64 tokens: $decode_gb GB of weights and KV, from kilnc --report)"
