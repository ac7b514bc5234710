#!/usr/bin/env python3
"""An independent NumPy implementation of the Llama 4 text decoder.

Written from the Hugging Face modeling code's structure, not from Kiln's:
RoPE as a complex multiplication, llama3 scaling with the HF np.where blend,
explicit mask matrices, and every expert run on every token with the router
gate zeroing the inputs of unselected experts. It computes in float64 and
shares no code with kiln-ref, so agreement between the two is evidence that
both implement the model and not the same mistake.

  llama4_numpy.py CKPT --tokens-file F [--out OUT.npy] [--compare KILN.npy]
                  [--tol 1e-5]
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[base + a:base + b]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif info["dtype"] == "F16":
            arr = np.frombuffer(raw, dtype="<f2")
        elif info["dtype"] == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        else:
            raise SystemExit(f"{path}: unsupported dtype {info['dtype']}")
        out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def load_weights(ckpt):
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for f in files:
        weights.update(load_safetensors(os.path.join(ckpt, f)))
    return weights


def rope_inv_freq(cfg):
    dim = cfg["head_dim"]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    rs = cfg.get("rope_scaling")
    if not rs or rs.get("rope_type", rs.get("type")) in (None, "default"):
        return inv_freq
    factor = rs["factor"]
    low, high = rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    with np.errstate(divide="ignore", invalid="ignore"):
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled)


def rms(x, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def silu(x):
    return x / (1.0 + np.exp(-x))


def apply_rope(x, pos, inv_freq):
    # x: [T, heads, d]; pairs (2m, 2m+1) are complex numbers.
    freqs = np.outer(pos.astype(np.float64), inv_freq)  # [T, d/2]
    rot = np.exp(1j * freqs)[:, None, :]
    xc = x[..., 0::2] + 1j * x[..., 1::2]
    yc = xc * rot
    out = np.empty_like(x)
    out[..., 0::2] = yc.real
    out[..., 1::2] = yc.imag
    return out


def attention(q, k, v, pos, chunk, scale, block=1024):
    # q: [T, H, d], k, v: [T, Hkv, d]
    T, H, d = q.shape
    group = H // k.shape[1]
    k = np.repeat(k, group, axis=1)  # HF repeat_kv: each KV head 'group' times
    v = np.repeat(v, group, axis=1)
    out = np.empty_like(q)
    for start in range(0, T, block):
        qp = pos[start:start + block]
        allowed = pos[None, :] <= qp[:, None]
        if chunk:
            allowed &= (pos[None, :] // chunk) == (qp[:, None] // chunk)
        bias = np.where(allowed, 0.0, -np.inf)
        for h in range(H):
            s = q[start:start + block, h, :] @ k[:, h, :].T * scale + bias
            s = s - s.max(axis=1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=1, keepdims=True)
            out[start:start + block, h, :] = p @ v[:, h, :]
    return out


def forward(cfg, w, tokens, prefix, lm_head):
    L = cfg["num_hidden_layers"]
    H, Hkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg.get("rms_norm_eps", 1e-5)
    interval = 4
    no_rope = cfg.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(L)]
    step = cfg.get("interleave_moe_layer_step", 1)
    moe_layers = cfg.get("moe_layers")
    if moe_layers is None:
        moe_layers = list(range(step - 1, L, step))
    chunk = cfg.get("attention_chunk_size")
    tuning = cfg.get("attn_temperature_tuning", True)
    floor_scale = cfg.get("floor_scale", 8192)
    attn_scale = cfg.get("attn_scale", 0.1)
    top_k = cfg.get("num_experts_per_tok", 1)
    inv_freq = rope_inv_freq(cfg)

    T = len(tokens)
    pos = np.arange(T)
    x = w[prefix + "embed_tokens.weight"][tokens]
    for i in range(L):
        p = f"{prefix}layers.{i}."
        use_rope = bool(no_rope[i])
        h = rms(x, eps) * w[p + "input_layernorm.weight"]
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, d)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, Hkv, d)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, Hkv, d)
        if use_rope:
            q = apply_rope(q, pos, inv_freq)
            k = apply_rope(k, pos, inv_freq)
            if cfg.get("use_qk_norm", True):
                q, k = rms(q, eps), rms(k, eps)
        if tuning and not use_rope:
            tau = np.log(np.floor((pos + 1.0) / floor_scale) + 1.0) * attn_scale + 1.0
            q = q * tau[:, None, None]
        o = attention(q, k, v, pos, chunk if use_rope else 0, d ** -0.5)
        x = x + o.reshape(T, H * d) @ w[p + "self_attn.o_proj.weight"].T
        u = rms(x, eps) * w[p + "post_attention_layernorm.weight"]
        f = p + "feed_forward."
        if i in moe_layers:
            logits = u @ w[f + "router.weight"].T  # [T, E]
            E = logits.shape[1]
            top = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
            scores = np.zeros_like(logits)
            np.put_along_axis(scores, top, 1.0 / (1.0 + np.exp(-np.take_along_axis(logits, top, 1))), 1)
            gu, dn = w[f + "experts.gate_up_proj"], w[f + "experts.down_proj"]
            F = dn.shape[1]
            y = np.zeros_like(u)
            for e in range(E):  # every expert on every token, as HF does
                z = u * scores[:, e:e + 1]
                gate_up = z @ gu[e]
                y += (silu(gate_up[:, :F]) * gate_up[:, F:]) @ dn[e]
            sg = u @ w[f + "shared_expert.gate_proj.weight"].T
            su = u @ w[f + "shared_expert.up_proj.weight"].T
            y += (silu(sg) * su) @ w[f + "shared_expert.down_proj.weight"].T
        else:
            g = u @ w[f + "gate_proj.weight"].T
            up = u @ w[f + "up_proj.weight"].T
            y = (silu(g) * up) @ w[f + "down_proj.weight"].T
        x = x + y
    y = rms(x, eps) * w[prefix + "norm.weight"]
    return y @ w[lm_head].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--tokens-file", required=True)
    ap.add_argument("--out")
    ap.add_argument("--compare")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()

    root = json.load(open(os.path.join(args.ckpt, "config.json")))
    multimodal = "text_config" in root
    cfg = root["text_config"] if multimodal else root
    cfg.setdefault("head_dim", 128)
    prefix = "language_model.model." if multimodal else "model."
    if cfg.get("tie_word_embeddings", False):
        lm_head = prefix + "embed_tokens.weight"
    else:
        lm_head = "language_model.lm_head.weight" if multimodal else "lm_head.weight"
    text = open(args.tokens_file).read().replace(",", " ")
    tokens = np.array([int(t) for t in text.split()], dtype=np.int64)

    logits = forward(cfg, load_weights(args.ckpt), tokens, prefix, lm_head)
    if args.out:
        np.save(args.out, logits.astype(np.float32))
    if args.compare:
        other = np.load(args.compare).astype(np.float64)
        if other.shape != logits.shape:
            print(f"FAIL: shape {other.shape} vs numpy {logits.shape}")
            return 1
        err = np.max(np.abs(other - logits)) / np.max(np.abs(logits))
        same_argmax = np.mean(np.argmax(other, 1) == np.argmax(logits, 1))
        print(f"max |kiln - numpy| / max |numpy| = {err:.3e} (tolerance {args.tol:g}); "
              f"argmax agreement {same_argmax * 100:.1f}% over {len(tokens)} positions")
        if not err <= args.tol:
            print("FAIL")
            return 1
        print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
