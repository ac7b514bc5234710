#!/usr/bin/env python3
"""Checks that a test suite executed every kernel kind a set of engines uses.

usage: kernel_kinds.py EXECUTED_LOG ENGINE.ptx...

EXECUTED_LOG lists launched kernel names (KILN_EMU_KERNEL_LOG). A kind is a
kernel name without its instance number: gemm_3_prefill -> gemm_prefill,
attention_1_flash -> attention_flash, memory_2 -> memory. Prints the kinds
and the executed instances; exits 1 naming any kind of the engines that was
never executed.
"""
import re
import sys


def kind(name):
    return re.sub(r"_[0-9]+(?=_|$)", "", name)


def main():
    executed = set(open(sys.argv[1]).read().split())
    wanted = set()
    for path in sys.argv[2:]:
        for m in re.finditer(r"^\.visible \.entry ([A-Za-z0-9_]+)\(",
                             open(path).read(), re.M):
            wanted.add(kind(m.group(1)))
    ran = {kind(n) for n in executed}
    for k in sorted(wanted):
        instances = sorted(n for n in executed if kind(n) == k)
        print("%-24s %s" % (k, " ".join(instances) if instances else "NEVER"))
    missing = sorted(wanted - ran)
    if missing:
        print("kernel kinds never executed: " + " ".join(missing))
        sys.exit(1)
    print("every kernel kind executed (%d kinds)" % len(wanted))


if __name__ == "__main__":
    main()
