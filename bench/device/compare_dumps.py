#!/usr/bin/env python3
"""Compares the per-launch dumps (KILN_DUMP_DIR) of two runs of one model.

usage: compare_dumps.py CANDIDATE_DIR REFERENCE_DIR [--tol 1e-2]

Both runs must have fed the same tokens to engines of the same model (e.g.
the sm_90a engine and the host engine). For every launch result present in
both folders it prints ||a - b|| / ||b|| and names the first launch over the
tolerance: where a GPU engine starts to disagree with the host engine.
Exits 1 when one does.
"""
import os
import sys

import numpy as np


def relative_error(candidate, reference):
    """||a - b|| / ||b|| of two .npy launch results (inf if shapes differ)."""
    a = np.load(candidate).astype(np.float64)
    b = np.load(reference).astype(np.float64)
    if a.shape != b.shape:
        return float("inf")
    norm = np.linalg.norm(b)
    return np.linalg.norm(a - b) / (norm if norm else 1.0)


def main():
    args = sys.argv[1:]
    tol = 1e-2
    if "--tol" in args:
        i = args.index("--tol")
        tol = float(args[i + 1])
        del args[i:i + 2]
    candidate, reference = args
    names = sorted(set(os.listdir(candidate)) & set(os.listdir(reference)))
    names = [n for n in names if n.endswith(".npy")]
    if not names:
        sys.exit("compare_dumps: no launch dumps in common")
    first = None
    for name in names:
        rel = relative_error(os.path.join(candidate, name),
                             os.path.join(reference, name))
        mark = ""
        if not rel <= tol and first is None:
            first = name
            mark = "  <- first over the tolerance"
        print(f"{name[:-4]:40s} {rel:.3e}{mark}")
    if first:
        print(f"compare_dumps: first disagreement at {first[:-4]} "
              f"(tolerance {tol})")
        sys.exit(1)
    print(f"compare_dumps: {len(names)} launch results agree within {tol}")


if __name__ == "__main__":
    main()
