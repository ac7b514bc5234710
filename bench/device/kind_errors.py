#!/usr/bin/env python3
"""Largest per-launch error of each kernel kind between two dump folders.

usage: kind_errors.py CANDIDATE_DIR REFERENCE_DIR [STATS_FILE]

The folders are KILN_DUMP_DIR dumps of two engines of one model (e.g. the
sm_90a engine on the emulator and the host engine). A kind is a kernel name
without its instance number (gemm_0 -> gemm). Prints one line per kind: the
number of launch results compared and the largest relative L2 error. With
STATS_FILE (stderr of a KILN_EMU_STATS=kernels run) it adds the emulated
time of the kind's GPU functions.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_dumps import relative_error  # noqa: E402


def kind(name):
    return re.sub(r"_[0-9]+(?=_|$)", "", name)


def main():
    cand, ref = sys.argv[1:3]
    worst, count = {}, {}
    for name in sorted(set(os.listdir(cand)) & set(os.listdir(ref))):
        if not name.endswith(".npy"):
            continue
        # 001_0002_gemm_0_1.npy: step, launch, kernel, result index.
        kernel = "_".join(name[:-4].split("_")[2:-1])
        rel = relative_error(os.path.join(cand, name), os.path.join(ref, name))
        k = kind(kernel)
        worst[k] = max(worst.get(k, 0.0), rel)
        count[k] = count.get(k, 0) + 1
    seconds = {}
    if len(sys.argv) > 3:
        for line in open(sys.argv[3]):
            m = re.match(r"kiln-emu: kernel (\S+) .* ([0-9.]+) s +[0-9.]+ M/s",
                         line)
            if m:
                # gemm_0_prefill -> gemm (the kind of the plan's kernel).
                fn = m.group(1)
                base = re.sub(r"_(decode|prefill|init|tiles|append|split|"
                              r"combine|flash|select|sort)$", "", fn)
                k = kind(base)
                seconds[k] = seconds.get(k, 0.0) + float(m.group(2))
    for k in sorted(worst):
        extra = " %8.3f s" % seconds[k] if k in seconds else ""
        print("%-14s %4d results  max rel-l2 %.3e%s" % (k, count[k], worst[k],
                                                         extra))


if __name__ == "__main__":
    main()
