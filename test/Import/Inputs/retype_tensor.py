#!/usr/bin/env python3
"""Rewrites one tensor's dtype in a safetensors header, in place, keeping the
header length: used to produce checkpoints with a wrong dtype."""
import json
import struct
import sys

path, name, dtype = sys.argv[1:4]
with open(path, "r+b") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    header[name]["dtype"] = dtype
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > n:
        sys.exit("header grew")
    f.seek(8)
    f.write(text + b" " * (n - len(text)))
