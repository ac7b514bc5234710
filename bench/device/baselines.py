#!/usr/bin/env python3
"""cuBLAS (torch.matmul) and SDPA timings for the shapes of a Kiln engine.

usage: baselines.py ENGINE.kiln OUT.json

GEMMs: every distinct dense weight [N, K] a GEMM kernel of the engine reads
(fused QKV, o_proj, shared-expert gate/up and down, router, lm_head), as
x[T, K] @ W^T for T = 4096 (prefill), 1 and 64 (decode batches), bf16 in and
out, f32 accumulation (cuBLAS's default for bf16). Attention: SDPA (flash
backend) for 4k and 16k tokens, causal and chunked-8192 (one causal SDPA per
chunk), with the engine's head counts. Also the device-to-device copy
bandwidth, the bound a memory-bound decode step is measured against.
Times are medians of CUDA-event-timed repetitions after warm-up.
"""
import json
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, __import__("os").path.dirname(__file__))
from random_checkpoint import read_plan  # noqa: E402


def timed(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0)
    return statistics.median(times)


def gemm_shapes(plan):
    values = plan["values"]
    shapes = {}
    for launch in plan["launches"]:
        if not launch["kernel"].startswith("gemm_"):
            continue
        for arg in launch["args"]:
            v = values[arg]
            if v["kind"] in ("weight", "concat") and len(v["shape"]) == 2:
                shapes[launch["kernel"]] = tuple(v["shape"])
    return shapes


def main():
    engine, out = sys.argv[1:3]
    plan = read_plan(engine)
    dev = "cuda"
    result = {"gpu": torch.cuda.get_device_name(), "gemm": [], "attention": []}
    for kernel, (n, k) in sorted(gemm_shapes(plan).items()):
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        for t in (4096, 1, 64):
            x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
            us = timed(lambda: torch.matmul(x, w.t()))
            result["gemm"].append({"kernel": kernel, "n": n, "k": k,
                                   "tokens": t, "us": us})
    # Attention shapes from the engine's attention kernels.
    heads = kv_heads = None
    for launch in plan["launches"]:
        if launch["kernel"].startswith("attention_"):
            q = plan["values"][launch["args"][0]]["shape"][1]
            kv = plan["values"][launch["args"][1]]["shape"][1]
            heads, kv_heads = q // 128, kv // 128
            break
    if heads:
        for s in (4096, 16384):
            q = torch.randn(1, heads, s, 128, device=dev, dtype=torch.bfloat16)
            kk = torch.randn(1, kv_heads, s, 128, device=dev,
                             dtype=torch.bfloat16)
            vv = torch.randn_like(kk)
            rep = heads // kv_heads
            kr = kk.repeat_interleave(rep, 1)
            vr = vv.repeat_interleave(rep, 1)

            def causal(lo=0, hi=s):
                return F.scaled_dot_product_attention(
                    q[:, :, lo:hi], kr[:, :, lo:hi], vr[:, :, lo:hi],
                    is_causal=True)

            def chunked():
                for lo in range(0, s, 8192):
                    causal(lo, min(s, lo + 8192))

            result["attention"].append({"tokens": s, "mask": "causal",
                                        "us": timed(causal, reps=10)})
            result["attention"].append({"tokens": s, "mask": "chunked",
                                        "us": timed(chunked, reps=10)})
    src = torch.empty(2 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    us = timed(lambda: dst.copy_(src), reps=10)
    result["copy_gbps"] = 2 * src.numel() / (us * 1e-6) / 1e9
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"baselines: {len(result['gemm'])} GEMMs, "
          f"{len(result['attention'])} attention cases, copy "
          f"{result['copy_gbps']:.0f} GB/s")


if __name__ == "__main__":
    main()
