#!/usr/bin/env bash
# Reference evaluator: time kiln-ref on the tiny presets at 64 and 9000 tokens
# (one core, float32 and float64) and, when NumPy is present, its agreement
# with the independent NumPy implementation. Prints a Markdown table.
#   bench/reference.sh [build-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
bin=$build/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=/usr/bin/python3
have_numpy=0
$py -c "import numpy" 2>/dev/null && have_numpy=1

echo "| model | tokens | precision | kiln-ref prefill (s) | max rel. error vs NumPy f64 |"
echo "| --- | --- | --- | --- | --- |"
for preset in tiny-scout tiny-maverick; do
  "$bin/kiln-mkmodel" --preset $preset -o "$work/$preset"
  for n in 64 9000; do
    $py "$root/test/e2e/Inputs/make_tokens.py" $n 256 3 > "$work/tokens-$n"
    [ $have_numpy = 1 ] && $py "$root/test/e2e/llama4_numpy.py" "$work/$preset" \
        --tokens-file "$work/tokens-$n" --out "$work/np-$preset-$n.npy" >/dev/null
    for prec in f32 f64; do
      flag=""; [ $prec = f64 ] && flag=--f64
      start=$(date +%s%N)
      "$bin/kiln-ref" "$work/$preset" --tokens-file "$work/tokens-$n" $flag \
          --dump-logits "$work/k.npy" >/dev/null 2>&1
      secs=$(( ($(date +%s%N) - start) / 1000000 ))
      secs=$(printf "%d.%02d" $((secs / 1000)) $(((secs % 1000) / 10)))
      err="n/a (no NumPy)"
      if [ $have_numpy = 1 ]; then
        err=$($py -c "import numpy as np; a=np.load('$work/k.npy').astype(float); b=np.load('$work/np-$preset-$n.npy').astype(float); print('%.2e' % (abs(a-b).max()/abs(b).max()))")
      fi
      printf "| %s | %d | %s | %s | %s |\n" $preset $n $prec $secs "$err"
    done
  done
done
