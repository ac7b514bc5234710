#!/usr/bin/env python3
"""Writes a random bf16 checkpoint for the weights an engine binds.

usage: random_checkpoint.py ENGINE.kiln CONFIG_DIR OUT_DIR [--device cuda]

The tensor names, shapes and dtypes come from the engine's plan (section 1
of the KILNENGN container, docs/engine-format.md), so the checkpoint fits the
engine by construction. Values are N(0, 0.02) (norm weights 1), drawn with
torch on the GPU when there is one: a real-size 4-layer Scout is ~20 GB and
must be written in seconds. Shards of at most 4 GB with an index, like the
Hugging Face layout.
"""
import json
import os
import shutil
import struct
import sys



def read_plan(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"KILNENGN":
        sys.exit(f"{path}: not a Kiln engine")
    (count,) = struct.unpack_from("<I", data, 12)
    offset = 88
    for _ in range(count):
        kind, _, size = struct.unpack_from("<IIQ", data, offset)
        offset += 16
        if kind == 1:
            return json.loads(data[offset:offset + size])
        offset += size
    sys.exit(f"{path}: no plan section")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    import numpy as np
    try:
        import torch
    except ImportError:  # the dev machine: NumPy only (slower, same format)
        torch = None
    engine, config_dir, out = sys.argv[1:4]
    device = "cuda" if torch and torch.cuda.is_available() else "cpu"
    plan = read_plan(engine)
    weights = [v for v in plan["values"] if v["kind"] == "weight"]
    os.makedirs(out, exist_ok=True)
    shutil.copy(os.path.join(config_dir, "config.json"),
                os.path.join(out, "config.json"))
    shards, current, size = [], [], 0
    for w in weights:
        n = 2
        for d in w["shape"]:
            n *= d
        if current and size + n > 4 << 30:
            shards.append(current)
            current, size = [], 0
        current.append(w)
        size += n
    if current:
        shards.append(current)
    index = {"metadata": {}, "weight_map": {}}
    gen = torch.Generator(device=device).manual_seed(0) if torch else None
    rng = np.random.default_rng(0)

    def random_bytes(w):
        norm = w["name"].endswith("norm.weight") or "layernorm" in w["name"]
        if torch is None:
            x = (np.ones(w["shape"], np.float32) if norm else
                 rng.standard_normal(w["shape"], np.float32) * 0.02)
            return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        if norm:
            t = torch.ones(w["shape"], dtype=torch.bfloat16)
        else:
            t = torch.randn(w["shape"], generator=gen, device=device,
                            dtype=torch.float32) * 0.02
            t = t.to(torch.bfloat16)
        return t.view(torch.int16).cpu().numpy().tobytes()
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for w in shard:
            assert w["dtype"] == "BF16", w
            n = 2
            for d in w["shape"]:
                n *= d
            header[w["name"]] = {"dtype": "BF16", "shape": w["shape"],
                                 "data_offsets": [offset, offset + n]}
            offset += n
            index["weight_map"][w["name"]] = name
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(os.path.join(out, name), "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for w in shard:
                f.write(random_bytes(w))
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    total = sum(2 * int(np.prod(w["shape"])) for w in weights)
    print(f"random_checkpoint: {len(weights)} tensors, {total / 2**30:.1f} GiB "
          f"in {len(shards)} shard(s) at {out}")


if __name__ == "__main__":
    main()
