#!/usr/bin/env python3
"""Checks kiln-ref's greedy continuation against fresh prefills: after
generating g_1..g_n from a prompt P, a prefill of P + g_1..g_k must predict
g_{k+1} for every k. Exercises decode through the KV state against prefill."""
import re
import subprocess
import sys

kiln_ref, ckpt, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def run(tokens, extra):
    out = subprocess.run([kiln_ref, ckpt, "--tokens", tokens, "--ignore-eos"] + extra,
                         capture_output=True, text=True, check=True).stdout
    return out


out = run(prompt, ["--max-new-tokens", str(n)])
generated = [int(t) for t in re.search(r"generated:([ 0-9]*)", out).group(1).split()]
assert len(generated) == n, out
tokens = prompt
for k in range(n):
    nxt = int(re.search(r"next token: (\d+)", run(tokens, [])).group(1))
    if nxt != generated[k]:
        print(f"FAIL: step {k}: decode gave {generated[k]}, prefill gives {nxt}")
        sys.exit(1)
    tokens += f",{generated[k]}"
print(f"PASS: {n} greedy tokens match prefill: {generated}")
