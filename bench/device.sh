#!/usr/bin/env bash
# The device check, for an H100/H200 machine (CUDA 13, CMake, a C++
# compiler, PyTorch, transformers; no MLIR, no network). Fits in 8 minutes.
#
#   bench/prepare-device.sh            # here, with the compiler: engines
#   KILN_BENCH_OUT=out bench/device.sh # there, with bench-inputs/ carried
#
# 1. builds the MLIR-free runtime (kiln-run, kiln-compare);
# 2. correctness, on memory poisoned at allocation (KILN_CUDA_POISON): the
#    sm_90a engine's logits against the host engine's on tiny-scout,
#    tiny-maverick, a chunk-16 tiny-scout whose 40-token prefill crosses
#    chunks, and the emulator suite's wgmma-path models (72-token prompt)
#    (relative L2 <= 1e-2), and 32 greedy tokens identical; per-launch
#    dumps of both engines (always for the wgmma models, relative L2 <= 2e-2
#    per launch; on a failure for the others) name the first kernel that
#    disagrees (logs/<model>.dumps.txt); the tokens
#    picked on the GPU (greedy and sampled) against the host rule on the
#    same logits;
# 3. speed on a 4-layer real-size Scout-shaped random model, with
#    KILN_PROFILE per-kernel times: prefill 4096, 64-token steps (the GEMM
#    shapes of batch-64 decode), batch-1 decode, a 16k prefill; against
#    torch.matmul (cuBLAS), SDPA, the copy bandwidth, and transformers'
#    Llama 4 eager and compiled, each under a time limit;
#    A one-rank NCCL communicator (KILN_NCCL_SELFTEST) checks the real NCCL
#    path;
# 4. prints the table (also in $KILN_BENCH_OUT/table.md).
# Without a GPU it builds, runs the host engines and says what it skipped.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
in=${KILN_BENCH_INPUTS:-$root/bench-inputs}
out=${KILN_BENCH_OUT:-$root/bench-out}
logs=$out/logs
build=${KILN_BENCH_BUILD:-/tmp/kiln-device-build}
py=${PYTHON:-python3}
mkdir -p "$logs"
: > "$logs/correctness.jsonl"
log() { echo "device.sh: $*" | tee -a "$logs/device.log"; }
[ -f "$in/scout4.sm90.kiln" ] ||
  { log "no $in/scout4.sm90.kiln: run bench/prepare-device.sh first"; exit 1; }

log "building the runtime in $build"
cmake -S "$root" -B "$build" -DKILN_RUNTIME_ONLY=ON -DCMAKE_BUILD_TYPE=Release \
  > "$logs/build.txt" 2>&1 &&
  cmake --build "$build" -j "$(nproc)" >> "$logs/build.txt" 2>&1 ||
  { log "runtime build failed (logs/build.txt)"; tail -20 "$logs/build.txt"; exit 1; }
run=$build/bin/kiln-run
compare=$build/bin/kiln-compare

gpu=0
if nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
     > "$logs/gpu.txt" 2>/dev/null; then
  gpu=1
  log "GPU: $(cat "$logs/gpu.txt")"
else
  echo "no GPU" > "$logs/gpu.txt"
  log "no GPU: running the host engines only"
fi

# --- correctness ----------------------------------------------------------
# Fresh device memory is poisoned (KILN_CUDA_POISON), as in the emulator:
# a kernel that reads pool rows nobody wrote shows it.
export KILN_CUDA_POISON=1
for m in tiny-scout tiny-maverick tiny-scout-chunk16 wgmma-scout wgmma-maverick; do
  prompt=$in/prompt40
  case $m in wgmma-*) prompt=$in/prompt72 ;; esac
  args=(--checkpoint "$in/$m" --tokens-file "$prompt" --max-new-tokens 32
        --ignore-eos)
  "$run" "$in/$m.host.kiln" "${args[@]}" --device host \
    --dump-logits "$logs/$m.host.npy" > "$logs/$m.host.txt" 2>&1 ||
    { log "$m: host engine failed"; echo "{\"model\":\"$m\",\"result\":\"host failed\"}" >> "$logs/correctness.jsonl"; continue; }
  if [ $gpu = 0 ]; then
    echo "{\"model\":\"$m\",\"result\":\"host only (no GPU)\"}" >> "$logs/correctness.jsonl"
    continue
  fi
  if ! KILN_CUDA_SYNC=1 timeout 120 "$run" "$in/$m.sm90.kiln" "${args[@]}" \
       --device cuda --dump-logits "$logs/$m.gpu.npy" > "$logs/$m.gpu.txt" 2>&1; then
    log "$m: GPU run failed: $(tail -1 "$logs/$m.gpu.txt")"
    echo "{\"model\":\"$m\",\"result\":\"GPU run failed\"}" >> "$logs/correctness.jsonl"
    continue
  fi
  cmp=$("$compare" "$logs/$m.gpu.npy" "$logs/$m.host.npy" --metric rel-l2 --tol 1e-2 2>&1)
  ok=$?
  rel=$(grep -oE 'rel-l2 = [0-9.e+-]+' <<<"$cmp" | awk '{print $3}')
  same=no
  [ "$(grep '^generated:' "$logs/$m.gpu.txt")" = "$(grep '^generated:' "$logs/$m.host.txt")" ] && same=yes
  result=pass; { [ $ok = 0 ] && [ $same = yes ]; } || result=FAIL
  log "$m: rel-l2 ${rel:-?}, greedy identical: $same ($result)"
  # The wgmma models are compared launch by launch always (the emulator
  # suite's check, relative L2 <= 2e-2 per launch); the others on a failure.
  case $m in wgmma-*) dumps=1 ;; *) dumps=0 ;; esac
  if [ $result = FAIL ] || [ $dumps = 1 ]; then
    # Find the first launch where the GPU engine leaves the host engine.
    rm -rf "$logs/$m.dump-host" "$logs/$m.dump-gpu"
    mkdir -p "$logs/$m.dump-host" "$logs/$m.dump-gpu"
    dargs=(--checkpoint "$in/$m" --tokens-file "$prompt" --max-new-tokens 3 --ignore-eos)
    KILN_DUMP_DIR="$logs/$m.dump-host" "$run" "$in/$m.host.kiln" "${dargs[@]}" --device host > /dev/null 2>&1
    KILN_DUMP_DIR="$logs/$m.dump-gpu" timeout 120 "$run" "$in/$m.sm90.kiln" "${dargs[@]}" --device cuda > /dev/null 2>&1
    $py "$root/bench/device/compare_dumps.py" "$logs/$m.dump-gpu" "$logs/$m.dump-host" \
      --tol 2e-2 > "$logs/$m.dumps.txt" 2>&1 || result=FAIL
    log "$m: $(tail -1 "$logs/$m.dumps.txt")"
  fi
  echo "{\"model\":\"$m\",\"rel_l2\":\"${rel:-?}\",\"greedy\":\"$same\",\"result\":\"$result\"}" >> "$logs/correctness.jsonl"
done

# The tokens picked on the GPU (kiln_argmax, kiln_sample) against the host
# rule on the same logits, copied back each step (KILN_CHECK_SAMPLER).
if [ $gpu = 1 ]; then
  for spec in "0 0 1.0" "0.8 50 0.9" "1.0 0 1.0" "0.6 0 0.8"; do
    read -r t k p <<<"$spec"
    name="tiny-scout picks (T $t, top-k $k, top-p $p)"
    txt="$logs/picks-$t-$k-$p.txt"
    KILN_CHECK_SAMPLER=1 timeout 60 "$run" "$in/tiny-scout.sm90.kiln" \
      --checkpoint "$in/tiny-scout" --tokens-file "$in/prompt40" \
      --max-new-tokens 32 --ignore-eos --device cuda --temperature "$t" \
      --top-k "$k" --top-p "$p" --seed 5 > "$txt" 2>&1
    summary=$(grep 'sampler check:' "$txt" | tail -1)
    picked=$(sed -nE 's/.* ([0-9]+) tokens picked on the GPU.*/\1/p' <<<"$summary")
    differ=$(sed -nE 's/.*, ([0-9]+) differ.*/\1/p' <<<"$summary")
    result=FAIL
    [ -n "$picked" ] && [ "$picked" -gt 0 ] && [ "$differ" = 0 ] && result=pass
    log "$name: ${summary:-no summary (logs/$(basename "$txt"))} ($result)"
    echo "{\"model\":\"$name\",\"greedy\":\"${differ:-?} of ${picked:-?} differ\",\"result\":\"$result\"}" >> "$logs/correctness.jsonl"
  done
fi

# NCCL: a one-rank communicator on the GPU (KILN_NCCL_SELFTEST) takes the
# real libnccl through the calls multi-rank engines make (unique id, init,
# an all-reduce on the stream, destroy); one GPU cannot host two ranks.
if [ $gpu = 1 ]; then
  nccl=${KILN_LIBNCCL:-}
  if [ -z "$nccl" ]; then
    for c in /usr/local/cuda/lib64/libnccl.so.2 /usr/local/cuda/lib/libnccl.so.2 \
             /usr/lib/x86_64-linux-gnu/libnccl.so.2 \
             $(ls /usr/local/cuda*/targets/*/lib/libnccl.so.2 2>/dev/null); do
      [ -e "$c" ] && { nccl=$c; break; }
    done
  fi
  txt="$logs/nccl-selftest.txt"
  KILN_NCCL_SELFTEST=1 KILN_LIBNCCL=${nccl:-libnccl.so.2} timeout 120 "$run" \
    "$in/tiny-scout.sm90.kiln" --checkpoint "$in/tiny-scout" --tokens 1,2,3 \
    --device cuda > "$txt" 2>&1
  line=$(grep 'NCCL self-test' "$txt" | tail -1)
  result=FAIL
  grep -q 'returned their input' <<<"$line" && result=pass
  log "NCCL one-rank: ${line:-$(tail -1 "$txt")} ($result)"
  echo "{\"model\":\"NCCL one-rank all-reduce, all-gather, reduce-scatter\",\"result\":\"$result\"}" >> "$logs/correctness.jsonl"
fi

# --- speed ----------------------------------------------------------------
if [ $gpu = 1 ]; then
  ckpt=${KILN_BENCH_CHECKPOINT:-/tmp/kiln-scout4}
  [ -f "$ckpt/model.safetensors.index.json" ] ||
    timeout 240 $py "$root/bench/device/random_checkpoint.py" "$in/scout4.sm90.kiln" \
      "$in/scout4" "$ckpt" 2>&1 | tee -a "$logs/device.log"
  engine=$in/scout4.sm90.kiln
  speed() { # name timeout kiln-run-args...
    local name=$1 limit=$2; shift 2
    KILN_PROFILE=1 timeout "$limit" "$run" "$engine" --checkpoint "$ckpt" \
      --ignore-eos --device cuda "$@" > "$logs/run-$name.txt" 2> "$logs/profile-$name.txt" ||
      log "$name: failed or over ${limit}s: $(tail -1 "$logs/profile-$name.txt")"
    log "$name: $(grep -E '^(prefill|decode):' "$logs/run-$name.txt" | tr '\n' ' ')"
  }
  speed 4k 120 --tokens-file "$in/prompt4k" --max-new-tokens 33
  speed step64 60 --tokens-file "$in/prompt128" --step 64 --max-new-tokens 1
  timeout 150 $py "$root/bench/device/baselines.py" "$engine" "$logs/baselines.json" \
    2>&1 | tee -a "$logs/device.log"
  speed 16k 150 --tokens-file "$in/prompt16k" --max-new-tokens 1
  timeout 150 $py "$root/bench/device/hf_e2e.py" "$in/scout4" 4096 32 \
    "$logs/hf-eager.json" 2>&1 | tail -1 | tee -a "$logs/device.log"
  timeout 200 $py "$root/bench/device/hf_e2e.py" "$in/scout4" 4096 32 \
    "$logs/hf-compile.json" --compile 2>&1 | tail -1 | tee -a "$logs/device.log"
fi

$py "$root/bench/device/report.py" "$out" "$in"
