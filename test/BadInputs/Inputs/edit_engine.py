"""Edits an engine file as a hostile user would: replaces OLD by NEW in the
file (header or plan), then either leaves the checksum (--keep-checksum) or
recomputes it so that only the runtime's own checks stand in the way.

usage: edit_engine.py IN OUT OLD NEW [--keep-checksum]
"""
import struct
import sys


def edit(data, old, new, keep_checksum=False):
    """`data` (bytes) with the first `old` replaced by `new`; section sizes
    follow a plan edit; the checksum (FNV-1a 64 of bytes 0..79 and 88..)
    is recomputed unless `keep_checksum`."""
    data = bytearray(data)
    at = data.find(old)
    assert at >= 0, "nothing to edit: %r" % old
    assert at >= 88 or len(new) == len(old), "header edits keep the length"
    data[at:at + len(old)] = new
    if len(new) != len(old):
        count = struct.unpack_from("<I", data, 12)[0]
        pos = 88
        for _ in range(count):
            size = struct.unpack_from("<Q", data, pos + 8)[0]
            # Sections before the edit have not moved: the one it starts in
            # is the one whose stored (old) extent holds `at`.
            if pos + 16 <= at < pos + 16 + size:
                size += len(new) - len(old)
                struct.pack_into("<Q", data, pos + 8, size)
            pos += 16 + size
    if not keep_checksum:
        h = 0xcbf29ce484222325
        for b in bytes(data[:80]) + bytes(data[88:]):
            h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
        struct.pack_into("<Q", data, 80, h)
    return bytes(data)


if __name__ == "__main__":
    src, dst = sys.argv[1:3]
    # \0 and other escapes in OLD and NEW stand for their bytes.
    old, new = (a.encode().decode("unicode_escape").encode("latin-1")
                for a in sys.argv[3:5])
    out = edit(open(src, "rb").read(), old, new,
               "--keep-checksum" in sys.argv)
    open(dst, "wb").write(out)
