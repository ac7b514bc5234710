"""Writes a version 1.0 float32 .npy file whose header claims SHAPE (a
Python tuple literal) over DATA_FLOATS floats of zeros.

usage: make_npy.py OUT SHAPE DATA_FLOATS
"""
import struct
import sys

out, shape, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape
header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
with open(out, "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)))
    f.write(header.encode())
    f.write(struct.pack("<%df" % count, *([0.0] * count)))
