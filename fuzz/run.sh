#!/usr/bin/env bash
# Runs every reader's libFuzzer target for SECONDS each (default 60) from a
# seed corpus of valid files made here (a tiny model's config, checkpoint,
# shard index, engine, plan, .npy and tokens), then prints one line per
# target: executions, coverage (libFuzzer's cov: edges) and the result.
# A crash, leak, sanitizer report or timeout fails the run; its input is
# left in OUT/crashes-<target>/.
#
#   fuzz/run.sh [SECONDS] [BUILD_DIR] [OUT_DIR]
#
# KILN_FUZZ_TARGETS="plan npy" runs only those targets; KILN_FUZZ_RUNS=N
# stops each after N executions instead (SECONDS still bounds it).
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${2:-$root/build}
out=${3:-$(mktemp -d "${TMPDIR:-/tmp}/kiln-fuzz-XXXXXX")}
bin=$build/bin
if [ ! -x "$bin/kiln-fuzz-json" ]; then
  echo "fuzz/run.sh: no fuzz targets in $bin (they need clang with libFuzzer: libclang-rt-22-dev)"
  exit 0
fi
mkdir -p "$out"
seeds=$out/seeds
rm -rf "$seeds" && mkdir -p "$seeds"
"$bin/kiln-mkmodel" --preset tiny-scout --shards 2 -o "$seeds/model" > /dev/null
"$bin/kilnc" "$seeds/model" --target host -o "$seeds/model.kiln"
# A one-layer model with 2 experts: small seeds run many times faster than
# the 8-layer ones and reach the same code.
"$bin/kiln-mkmodel" --preset tiny-scout --layers 1 --experts 2 --top-k 1 \
  -o "$seeds/small" > /dev/null
"$bin/kilnc" "$seeds/small" --target host -o "$seeds/small.kiln"
# Two data-parallel attention replicas: the all-to-all exchange (auto's
# choice: received values, token dispatch and combine) and the gather one
# (gathered values, all-gather and reduce-scatter).
"$bin/kilnc" "$seeds/small" --dp 2 --ep 2 --target host \
  -o "$seeds/small-dp2.kiln"
"$bin/kilnc" "$seeds/small" --dp 2 --ep 2 --exchange gather --target host \
  -o "$seeds/small-dp2-gather.kiln"
# And sm_90a's all-to-all (BF16 rows, exchanges with GPU functions).
"$bin/kilnc" "$seeds/small" --dp 2 --ep 2 --target sm_90a \
  -o "$seeds/small-dp2-gpu.kiln" 2> /dev/null
python3 - "$seeds" "$root" <<'PY'
import json, os, struct, sys
seeds = sys.argv[1]
# The bad-input corpus's engine editor (fixes section sizes and checksum).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(sys.argv[2], "test", "BadInputs", "Inputs"))
import edit_engine
model = os.path.join(seeds, "model")
def put(target, name, data):
    d = os.path.join(seeds, target)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), "wb").write(data)
config = open(os.path.join(model, "config.json"), "rb").read()
put("config", "tiny-scout.json", config)
for f in sorted(os.listdir(model)):
    if f.endswith(".safetensors"):
        data = open(os.path.join(model, f), "rb").read()
        # The header and a little data: the fuzzer works on the header.
        n = struct.unpack("<Q", data[:8])[0]
        put("safetensors", f, data[:8 + n + 64])
index = open(os.path.join(model, "model.safetensors.index.json"), "rb").read()
put("json", "index.json", index)
put("json", "config.json", config)
small = os.path.join(seeds, "small", "model.safetensors")
data = open(small, "rb").read()
put("safetensors", "small.safetensors", data[:8 + struct.unpack("<Q", data[:8])[0] + 64])
for name in ("model", "small", "small-dp2", "small-dp2-gather", "small-dp2-gpu"):
    engine = open(os.path.join(seeds, name + ".kiln"), "rb").read()
    # Sections after the 88-byte header: kind (u32), 4 bytes, size (u64).
    pos, count = 88, struct.unpack_from("<I", engine, 12)[0]
    kernels = None
    for _ in range(count):
        kind, size = struct.unpack_from("<I", engine, pos)[0], struct.unpack_from("<Q", engine, pos + 8)[0]
        data = engine[pos + 16:pos + 16 + size]
        if kind == 1:
            put("plan", name + ".json", data)
            put("json", name + "-plan.json", data)
        if kind == 2:
            kernels = data
        pos += 16 + size
    if name.endswith("-gpu"):
        continue  # its PTX is large: the plan is what it adds
    # The reader never looks inside the kernels' shared object; its first
    # 256 bytes keep the section while the seed shrinks from 100-145 KB to
    # 5-33 KB, which the fuzzer runs several times faster (every input is
    # copied and checksummed whole).
    if kernels is not None:
        engine = edit_engine.edit(engine, kernels, kernels[:256])
    put("engine", name + ".kiln", engine)
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
put("npy", "2x3.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + struct.pack("<6f", *range(6)))
put("tokens", "list", b"1,2,3,200,17")
put("tokens", "lines", b"1\n2\n3\n")
PY
status=0
runs=()
if [ -n "${KILN_FUZZ_RUNS:-}" ]; then
  runs=(-runs="$KILN_FUZZ_RUNS")
fi
for target in ${KILN_FUZZ_TARGETS:-config safetensors json plan engine npy tokens}; do
  corpus=$out/corpus-$target
  crashes=$out/crashes-$target
  mkdir -p "$corpus" "$crashes"
  log=$out/$target.log
  start=$(date +%s)
  # Inputs up to 64 KiB, or the largest seed: libFuzzer cuts longer seeds
  # to -max_len, and a cut engine no longer parses past its section table.
  max_len=65536
  for seed in "$seeds/$target"/*; do
    size=$(stat -c %s "$seed")
    [ "$size" -gt "$max_len" ] && max_len=$size
  done
  if "$bin/kiln-fuzz-$target" -max_total_time="$seconds" "${runs[@]}" -timeout=10 \
       -rss_limit_mb=4096 -max_len="$max_len" -print_final_stats=1 \
       -artifact_prefix="$crashes/" "$corpus" "$seeds/$target" > "$log" 2>&1; then
    result=ok
  else
    result="FAILED (see $log, input in $crashes)"
    status=1
  fi
  took=$(( $(date +%s) - start ))
  executed=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  printf 'fuzz %-12s %10s executions in %ss, coverage %s edges: %s\n' \
    "$target" "${executed:-?}" "$took" "${cov:-?}" "$result"
done
exit $status
