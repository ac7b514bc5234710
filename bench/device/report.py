#!/usr/bin/env python3
"""Builds the device table from bench/device.sh's logs.

usage: report.py OUT_DIR INPUTS_DIR

Reads OUT_DIR/logs: correctness.jsonl, profile-*.txt (KILN_PROFILE lines of
kiln-run), run-*.txt (kiln-run's tokens/s), baselines.json, hf-*.json; and
the engine plan of INPUTS_DIR/scout4.sm90.kiln for shapes and bytes.
Writes OUT_DIR/table.md and prints it.
"""
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from random_checkpoint import read_plan  # noqa: E402


def profile(path):
    """{(kernel prefix, tokens): mean µs} summed over a kernel's variants."""
    times = {}
    if not os.path.exists(path):
        return times
    for line in open(path):
        m = re.match(r"kiln-profile: (\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)",
                     line)
        if not m:
            continue
        fn, tokens, calls, total = m[1], int(m[2]), int(m[3]), float(m[4])
        kernel = re.sub(r"_(decode|prefill|select|sort|init|tiles|flash|split|combine|append)$", "", fn)
        key = (kernel, tokens)
        # Several call sites share a kernel: report the mean per call site.
        times.setdefault(key, [0.0, 0])
        times[key][0] += 1000.0 * total
        times[key][1] = max(times[key][1], calls)
    return {k: v[0] / v[1] for k, v in times.items()}


def rate(path, what):
    if not os.path.exists(path):
        return None
    m = re.search(what + r": .*\(([\d.]+) tokens/s\)", open(path).read())
    return float(m[1]) if m else None


def main():
    out, inputs = sys.argv[1:3]
    logs = os.path.join(out, "logs")
    lines = ["# Kiln on " + open(os.path.join(logs, "gpu.txt")).read().strip()
             if os.path.exists(os.path.join(logs, "gpu.txt")) else "# Kiln",
             ""]
    lines += ["## Correctness (GPU vs host engine)", "",
              "| model | rel L2 (<= 1e-2) | greedy 32 identical (picks: GPU vs host rule) | result |",
              "| --- | --- | --- | --- |"]
    path = os.path.join(logs, "correctness.jsonl")
    for line in open(path) if os.path.exists(path) else []:
        r = json.loads(line)
        lines.append(f"| {r['model']} | {r.get('rel_l2', '-')} | "
                     f"{r.get('greedy', '-')} | {r['result']} |")

    plan = read_plan(os.path.join(inputs, "scout4.sm90.kiln"))
    base = {}
    bpath = os.path.join(logs, "baselines.json")
    if os.path.exists(bpath):
        base = json.load(open(bpath))
    prof = {}
    for f in glob.glob(os.path.join(logs, "profile-*.txt")):
        prof.update(profile(f))
    lines += ["", "## GEMMs of a Scout layer (µs; cuBLAS = torch.matmul)", "",
              "| kernel | N x K | tokens | Kiln | cuBLAS | Kiln/cuBLAS |",
              "| --- | --- | --- | --- | --- | --- |"]
    for g in base.get("gemm", []):
        k = prof.get((g["kernel"], g["tokens"]))
        ratio = f"{k / g['us']:.2f}" if k else "-"
        lines.append(f"| {g['kernel']} | {g['n']} x {g['k']} | {g['tokens']} | "
                     f"{k and round(k, 1)} | {g['us']:.1f} | {ratio} |")
    lines += ["", "## Attention prefill (µs; SDPA flash backend)", "",
              "| tokens | mask | Kiln | SDPA | Kiln/SDPA |",
              "| --- | --- | --- | --- | --- |"]
    masks = {}
    for launch in plan["launches"]:
        if launch["kernel"].startswith("attention_") and launch["attention"]:
            slot = plan["kv_slots"][launch["attention"][0]["slot"]]
            masks[launch["kernel"]] = "chunked" if slot["chunk"] else "causal"
    for a in base.get("attention", []):
        kiln = [v for (kern, t), v in prof.items()
                if t == a["tokens"] and masks.get(kern) == a["mask"]]
        k = kiln[0] if kiln else None
        ratio = f"{k / a['us']:.2f}" if k else "-"
        lines.append(f"| {a['tokens']} | {a['mask']} | {k and round(k, 1)} | "
                     f"{a['us']:.1f} | {ratio} |")

    # Bytes one decode step must read: every weight a launch reads, the
    # routed experts at top_k / E of their size.
    values = plan["values"]
    read = set()
    for launch in plan["launches"]:
        read.update(launch["args"])
    total = 0
    for i in read:
        v = values[i]
        if v["kind"] not in ("weight", "concat"):
            continue
        n = 2
        for d in v["shape"]:
            n *= d
        if v["kind"] == "weight" and ".experts." in v["name"]:
            n //= v["shape"][0]
        total += n
    lines += ["", "## 4-layer Scout-shaped model, end to end", ""]
    step = rate(os.path.join(logs, "run-4k.txt"), "decode")
    copy = base.get("copy_gbps")
    if step:
        ms = 1000.0 / step
        bound = total / (copy * 1e9) * 1000.0 if copy else None
        lines.append(f"- decode step (batch 1, 4k context): {ms:.3f} ms; it "
                     f"reads {total / 2**30:.2f} GiB of weights"
                     + (f", {bound:.3f} ms at the measured copy bandwidth "
                        f"({copy:.0f} GB/s): {bound / ms:.0%} of the bound"
                        if bound else ""))
    pre = rate(os.path.join(logs, "run-4k.txt"), "prefill")
    if pre:
        lines.append(f"- Kiln: prefill 4096 tokens at {pre:.0f} tokens/s, "
                     f"decode {step and round(step, 1)} tokens/s")
    for f in sorted(glob.glob(os.path.join(logs, "hf-*.json"))):
        r = json.load(open(f))
        if "error" in r:
            lines.append(f"- transformers ({r['mode']}): not measured: "
                         f"{r['error']}")
        else:
            lines.append(f"- transformers ({r['mode']}): prefill "
                         f"{r['prefill_tokens_per_s']:.0f} tokens/s, decode "
                         f"{r['decode_tokens_per_s']:.1f} tokens/s")
    text = "\n".join(lines) + "\n"
    open(os.path.join(out, "table.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
