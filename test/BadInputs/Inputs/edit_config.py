"""Copies checkpoint folder SRC's config.json to DST/config.json with fields
set: each PATH VALUE pair (PATH dotted, e.g. text_config.head_dim; VALUE a
JSON literal, e.g. 128 or null).

usage: edit_config.py SRC DST PATH VALUE [PATH VALUE ...]
"""
import json
import os
import sys

src, dst = sys.argv[1:3]
config = json.load(open(os.path.join(src, "config.json")))
pairs = sys.argv[3:]
for path, value in zip(pairs[0::2], pairs[1::2]):
    node = config
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = json.loads(value)
os.makedirs(dst, exist_ok=True)
json.dump(config, open(os.path.join(dst, "config.json"), "w"), indent=2)
