#!/usr/bin/env python3
"""Hugging Face transformers' Llama 4 on the same 4-layer Scout-shaped model.

usage: hf_e2e.py CONFIG_DIR PROMPT_TOKENS NEW_TOKENS OUT.json [--compile]

Random bf16 weights (transformers' init) on the GPU; times a prefill of
PROMPT_TOKENS and NEW_TOKENS greedy decode steps with the KV cache, eager or
under torch.compile. Prints a JSON line; failures are reported, not raised,
so device.sh can go on.
"""
import json
import sys
import time


def main():
    config_dir, prompt, new, out = sys.argv[1:5]
    prompt, new = int(prompt), int(new)
    compiled = "--compile" in sys.argv
    result = {"mode": "torch.compile" if compiled else "eager"}
    try:
        import torch
        from transformers import AutoConfig, Llama4ForCausalLM
        config = AutoConfig.from_pretrained(config_dir).get_text_config()
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = Llama4ForCausalLM(config).to(torch.bfloat16).eval()
        if compiled:
            model.forward = torch.compile(model.forward)
        ids = torch.randint(0, config.vocab_size, (1, prompt), device="cuda")
        with torch.no_grad():
            for attempt in range(2):  # the first run compiles / warms up
                torch.cuda.synchronize()
                start = time.perf_counter()
                outputs = model(ids, use_cache=True)
                torch.cuda.synchronize()
                prefill = time.perf_counter() - start
                cache = outputs.past_key_values
                token = outputs.logits[:, -1:].argmax(-1)
                start = time.perf_counter()
                for i in range(new):
                    outputs = model(token, past_key_values=cache,
                                    use_cache=True)
                    cache = outputs.past_key_values
                    token = outputs.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
                decode = time.perf_counter() - start
        result.update(prefill_tokens_per_s=prompt / prefill,
                      decode_tokens_per_s=new / decode)
    except Exception as e:  # noqa: BLE001 - reported in the table
        result["error"] = f"{type(e).__name__}: {e}"[:300]
    with open(out, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
