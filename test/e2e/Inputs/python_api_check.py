#!/usr/bin/env python3
"""Drives a compiled model through the Python module (python/kiln) and checks
it against kiln-ref: logits of a prompt, a continuation, two sessions in two
threads, errors with their status codes.

    python_api_check.py ENGINE CHECKPOINT TOKENS_FILE REF.npy "GENERATED"
"""
import sys
import threading

import numpy as np

import kiln

engine, checkpoint, tokens_file, ref_path, generated = sys.argv[1:6]
prompt = [int(t) for t in open(tokens_file).read().replace(",", " ").split()]
ref = np.load(ref_path)
expected = [int(t) for t in generated.split()]


def close(a, b, what):
    err = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
    assert err <= 1e-5, "%s: max relative error %g" % (what, err)


assert kiln.version().count(".") == 2, kiln.version()
model = kiln.Model(engine, checkpoint)
assert model.target == "host-x86_64", model.target
assert model.vocab_size == ref.shape[1]
assert (model.rank, model.ranks) == (0, 1)  # an engine of one rank
assert (model.replica, model.replicas) == (0, 1)
try:
    model.session().idle()
    raise AssertionError("idle() on an engine without replicas")
except kiln.KilnError as e:
    assert "data-parallel attention" in str(e), str(e)
assert model.max_positions > 0, model.max_positions  # from the config

# Five lines: a model, a session, logits, a continuation.
session = model.session()
close(session.logits(np.array(prompt)), ref, "prompt logits")
session.reset()
assert session.generate(prompt, len(expected), stop_at_eos=False) == expected
assert session.position == len(prompt) + len(expected) - 1

# Last-row logits, explicit positions, a sampler at temperature 0.
session.reset()
close(session.logits(prompt[:10], positions=range(10), last_only=True),
      ref[9], "last row")
greedy = kiln.Sampler(temperature=0.0)
assert session.next_token(prompt[10:], sampler=greedy) == int(
    np.argmax(ref[-1]))

# Two sessions on one model, in two threads, each against the reference.
results = {}


def worker(name, split):
    s = model.session(kv_tokens=len(prompt))
    rows = [s.logits(prompt[:split])]
    for t in prompt[split:]:
        rows.append(s.logits([t]))
    results[name] = np.concatenate(rows)


threads = [threading.Thread(target=worker, args=(n, k))
           for n, k in (("a", 7), ("b", 19))]
for t in threads:
    t.start()
for t in threads:
    t.join()
for name in ("a", "b"):
    close(results[name], ref, "thread " + name)

# Errors carry status codes.
try:
    kiln.Model(engine + ".missing", checkpoint)
    raise AssertionError("loaded a missing engine")
except kiln.KilnError as e:
    assert e.code == kiln.StatusCode.NOT_FOUND, e.code
try:
    session.logits([model.vocab_size])
    raise AssertionError("ran a token outside the vocabulary")
except kiln.KilnError as e:
    assert e.code == kiln.StatusCode.INVALID_ARGUMENT, e.code
    assert "outside the vocabulary" in str(e), str(e)
for position in (-1, 2**31):
    try:
        session.logits([1], positions=[position])
        raise AssertionError("ran at position %d" % position)
    except kiln.KilnError as e:
        assert e.code == kiln.StatusCode.INVALID_ARGUMENT, e.code
        assert "is outside [0, 2^31)" in str(e), str(e)
try:
    kiln.Model(engine, checkpoint, frobnicate=1)
    raise AssertionError("accepted an unknown option")
except TypeError:
    pass
print("python module: all checks passed")
