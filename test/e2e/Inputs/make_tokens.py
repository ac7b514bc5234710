#!/usr/bin/env python3
"""Writes N deterministic pseudo-random token ids below VOCAB, comma- and
space-separated (the --tokens-file format)."""
import sys

n, vocab = int(sys.argv[1]), int(sys.argv[2])
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
x = seed
ids = []
for _ in range(n):
    x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
    ids.append(str((x >> 33) % vocab))
print(", ".join(ids))
