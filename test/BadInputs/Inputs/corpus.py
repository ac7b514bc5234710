"""The bad-input corpus: malformed configs, safetensors files, shard
indexes, token files, .npy arrays, engines and command lines, each with the
one-line error it must produce.

Every case must end by itself (no hang: 30 s at most), with exit code 1
(kiln-compare's documented 2 for an input it cannot read; no signal, no
abort), and print its expected message (after the tool's name,
with {d} standing for the case's folder). The first line that differs is
reported.

usage: corpus.py BIN_DIR WORK_DIR [--show]   (--show prints what each case
                                              printed, to write new cases)
"""
import json
import os
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edit_engine  # noqa: E402

BIN, WORK = sys.argv[1], sys.argv[2]
SHOW = "--show" in sys.argv


def tool(name):
    return os.path.join(BIN, name)


def run(args, timeout=30):
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
        return p.returncode, p.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired:
        return "timeout", ""


# --- the inputs the cases start from ----------------------------------------
BASE = os.path.join(WORK, "base")
if not os.path.isdir(BASE):
    subprocess.check_call([tool("kiln-mkmodel"), "--preset", "tiny-scout", "-o",
                           BASE], stdout=subprocess.DEVNULL)
ENGINE = os.path.join(WORK, "base.kiln")
if not os.path.exists(ENGINE):
    subprocess.check_call([tool("kilnc"), BASE, "--target", "host", "-o",
                           ENGINE])
CONFIG = json.load(open(os.path.join(BASE, "config.json")))
WEIGHTS = open(os.path.join(BASE, "model.safetensors"), "rb").read()


def fresh(name):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def with_config(d, edit):
    c = json.loads(json.dumps(CONFIG))
    edit(c)
    json.dump(c, open(os.path.join(d, "config.json"), "w"))


def text_config(key, value):
    def edit(c):
        if value is DELETE:
            del c["text_config"][key]
        else:
            c["text_config"][key] = value
    return edit


DELETE = object()


def config_case(name, edit, message, raw=None):
    """kilnc import on a config edited by `edit` (or the raw text `raw`)."""
    def make():
        d = fresh(name)
        if raw is not None:
            open(os.path.join(d, "config.json"), "w").write(raw)
        else:
            with_config(d, edit)
        return [tool("kilnc"), "import", d, "-o", os.path.join(d, "x.mlir")], d
    return (name, make, message)


def safetensors_header(header, data=b"", length=None):
    h = json.dumps(header).encode()
    n = len(h) if length is None else length
    return struct.pack("<Q", n) + h + data


def weights_case(name, blob, message, tool_name="kiln-ref"):
    """kiln-ref (or kiln-run) on a checkpoint whose model.safetensors is
    `blob` (bytes, or a function of the valid file's bytes)."""
    def make():
        d = fresh(name)
        shutil.copy(os.path.join(BASE, "config.json"), d)
        b = blob(WEIGHTS) if callable(blob) else blob
        open(os.path.join(d, "model.safetensors"), "wb").write(b)
        if tool_name == "kiln-ref":
            return [tool("kiln-ref"), d, "--tokens", "1"], d
        return [tool("kiln-run"), ENGINE, "--checkpoint", d, "--tokens", "1"], d
    return (name, make, message)


def index_case(name, index_text, message, shards=()):
    def make():
        d = fresh(name)
        shutil.copy(os.path.join(BASE, "config.json"), d)
        open(os.path.join(d, "model.safetensors.index.json"), "w").write(
            index_text)
        for s in shards:
            shutil.copy(os.path.join(BASE, "model.safetensors"),
                        os.path.join(d, s))
        return [tool("kiln-ref"), d, "--tokens", "1"], d
    return (name, make, message)


def tokens_case(name, text, message, tool_name="kiln-run"):
    def make():
        d = fresh(name)
        path = os.path.join(d, "tokens")
        open(path, "wb").write(text if isinstance(text, bytes) else text.encode())
        if tool_name == "kiln-ref":
            return [tool("kiln-ref"), BASE, "--tokens-file", path], d
        return [tool("kiln-run"), ENGINE, "--checkpoint", BASE, "--tokens-file",
                path], d
    return (name, make, message)


def npy(shape, data, descr="<f4", fortran="False", version=1):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, fortran, shape)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return (b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<H", len(header))
            + header.encode() + data)


def npy_case(name, blob, message):  # kiln-compare: errors exit 2
    def make():
        d = fresh(name)
        path = os.path.join(d, "a.npy")
        open(path, "wb").write(blob)
        ok = os.path.join(d, "ok.npy")
        open(ok, "wb").write(npy("(2, 2)", struct.pack("<4f", 1, 2, 3, 4)))
        return [tool("kiln-compare"), path, ok], d
    return (name, make, message)


def engine_case(name, edit, message, keep_checksum=False):
    """kiln-run on the engine with bytes OLD replaced by NEW (checksum
    recomputed unless `keep_checksum`)."""
    old, new = edit

    def make():
        d = fresh(name)
        data = edit_engine.edit(open(ENGINE, "rb").read(), old, new,
                                keep_checksum)
        path = os.path.join(d, "e.kiln")
        open(path, "wb").write(data)
        return [tool("kiln-run"), path, "--checkpoint", BASE, "--tokens", "1"], d
    return (name, make, message)


def cli_case(name, args, message):
    def make():
        d = fresh(name)
        full = [a.replace("{engine}", ENGINE).replace("{ckpt}", BASE)
                 .replace("{d}", d) for a in args]
        full[0] = tool(full[0])
        return full, d
    return (name, make, message)


F = "'text_config."
CASES = [
    # --- configs ------------------------------------------------------------
    config_case("cfg-empty", None,
                "config.json: malformed JSON at line 1, column 0: Unexpected "
                "EOF", raw=""),
    config_case("cfg-array", None, "config.json", raw="[1, 2]"),
    config_case("cfg-truncated", None,
                "config.json: malformed JSON at line 1, column 200: "
                "Unterminated string", raw=json.dumps(CONFIG)[:200]),
    config_case("cfg-hidden-string", text_config("hidden_size", "64"),
                F + "hidden_size': expected an integer, got \"64\""),
    config_case("cfg-hidden-zero", text_config("hidden_size", 0),
                F + "hidden_size': expected an integer >= 1, got 0"),
    config_case("cfg-hidden-neg", text_config("hidden_size", -64),
                F + "hidden_size': expected an integer >= 1, got -64"),
    config_case("cfg-hidden-float", text_config("hidden_size", 64.5),
                F + "hidden_size': expected an integer, got 64.5"),
    config_case("cfg-layers-huge", text_config("num_hidden_layers", 10**12),
                F + "num_hidden_layers': 1000000000000 is past any model Kiln "
                "can build (at most 4096)"),
    config_case("cfg-heads-zero", text_config("num_attention_heads", 0),
                F + "num_attention_heads': expected an integer >= 1, got 0"),
    config_case("cfg-kv-heads-huge", text_config("num_key_value_heads", 10**6),
                F + "num_key_value_heads': 1000000 is past any model Kiln can "
                "build (at most 4096)"),
    config_case("cfg-vocab-huge", text_config("vocab_size", 2**40),
                F + "vocab_size': 1099511627776 is past any model Kiln can "
                "build (at most 16777216)"),
    config_case("cfg-vocab-bool", text_config("vocab_size", True),
                F + "vocab_size': expected an integer, got true"),
    config_case("cfg-inter-huge", text_config("intermediate_size", 2**30),
                F + "intermediate_size': 1073741824 is past any model Kiln can "
                "build (at most 1048576)"),
    config_case("cfg-mlp-zero", text_config("intermediate_size_mlp", 0),
                F + "intermediate_size_mlp': expected an integer >= 1, got 0"),
    config_case("cfg-experts-huge", text_config("num_local_experts", 2**20),
                F + "num_local_experts': 1048576 is past any model Kiln can "
                "build (at most 65536)"),
    config_case("cfg-topk-zero", text_config("num_experts_per_tok", 0),
                F + "num_experts_per_tok': expected an integer >= 1, got 0"),
    config_case("cfg-step-huge", text_config("interleave_moe_layer_step", 10**5),
                F + "interleave_moe_layer_step': 100000 is past any model Kiln "
                "can build (at most 4096)"),
    config_case("cfg-context-huge",
                text_config("max_position_embeddings", 2**40),
                F + "max_position_embeddings': 1099511627776 is past any model "
                "Kiln can build (at most 1073741824)"),
    config_case("cfg-headdim-huge", text_config("head_dim", 2**33),
                F + "head_dim': 8589934592 is past any model Kiln can build "
                "(at most 65536)"),
    config_case("cfg-headdim-one", text_config("head_dim", 1),
                F + "head_dim': expected an integer >= 2, got 1"),
    config_case("cfg-headdim-odd", text_config("head_dim", 15),
                F + "head_dim': must be even for RoPE pairs, got 15"),
    config_case("cfg-chunk-zero", text_config("attention_chunk_size", 0),
                F + "attention_chunk_size': expected an integer >= 1, got 0"),
    config_case("cfg-chunk-huge", text_config("attention_chunk_size", 2**40),
                F + "attention_chunk_size': 1099511627776 is past any model "
                "Kiln can build (at most 1073741824)"),
    config_case("cfg-theta-neg", text_config("rope_theta", -1.0),
                F + "rope_theta': expected a positive number, got -1"),
    config_case("cfg-theta-string", text_config("rope_theta", "big"),
                F + "rope_theta': expected a number, got \"big\""),
    config_case("cfg-eps-zero", text_config("rms_norm_eps", 0),
                F + "rms_norm_eps': expected a positive number, got 0"),
    config_case("cfg-floor-huge", text_config("floor_scale", 2**50),
                F + "floor_scale': 1125899906842624 is past any model Kiln can "
                "build (at most 1099511627776)"),
    config_case("cfg-bos-neg", text_config("bos_token_id", -1),
                F + "bos_token_id': expected an integer >= 0, got -1"),
    config_case("cfg-deep", None,
                "config.json: JSON nested deeper than 128 levels (at byte",
                raw="{\"a\": " + "[" * 1000 + "]" * 1000 + "}"),
    # --- safetensors files --------------------------------------------------
    weights_case("st-empty", b"",
                 "model.safetensors: truncated safetensors file (0 bytes, the "
                 "8-byte header length is missing)"),
    weights_case("st-short", b"\x01\x02\x03",
                 "model.safetensors: truncated safetensors file (3 bytes, the "
                 "8-byte header length is missing)"),
    weights_case("st-len-huge", struct.pack("<Q", 2**62) + b"{}",
                 "model.safetensors: truncated safetensors file: header claims "
                 "4611686018427387904 bytes but only 2 follow"),
    weights_case("st-len-past", struct.pack("<Q", 100) + b"{}",
                 "model.safetensors: truncated safetensors file: header claims "
                 "100 bytes but only 2 follow"),
    weights_case("st-not-json", struct.pack("<Q", 5) + b"{abc}",
                 "model.safetensors: malformed safetensors header"),
    weights_case("st-array", safetensors_header([1, 2]),
                 "model.safetensors: malformed safetensors header: expected a "
                 "JSON object"),
    weights_case("st-entry-string", safetensors_header({"w": "x"}),
                 "model.safetensors: tensor 'w': header entry is not an object"),
    weights_case("st-no-dtype",
                 safetensors_header({"w": {"shape": [1],
                                           "data_offsets": [0, 2]}}, b"\0\0"),
                 "model.safetensors: tensor 'w': missing string field 'dtype'"),
    weights_case("st-bad-dtype",
                 safetensors_header({"w": {"dtype": "Q8", "shape": [1],
                                           "data_offsets": [0, 2]}}, b"\0\0"),
                 "model.safetensors: tensor 'w': unknown dtype 'Q8'"),
    weights_case("st-no-shape",
                 safetensors_header({"w": {"dtype": "BF16",
                                           "data_offsets": [0, 2]}}, b"\0\0"),
                 "model.safetensors: tensor 'w': missing array field 'shape'"),
    weights_case("st-neg-shape",
                 safetensors_header({"w": {"dtype": "BF16", "shape": [-1],
                                           "data_offsets": [0, 2]}}, b"\0\0"),
                 "model.safetensors: tensor 'w': 'shape' must hold "
                 "non-negative integers"),
    weights_case("st-huge-shape",
                 safetensors_header({"w": {"dtype": "BF16",
                                           "shape": [2**40, 2**40],
                                           "data_offsets": [0, 2]}}, b"\0\0"),
                 "model.safetensors: tensor 'w': 'shape' is too large"),
    weights_case("st-no-offsets",
                 safetensors_header({"w": {"dtype": "BF16", "shape": [1]}},
                                    b"\0\0"),
                 "model.safetensors: tensor 'w': 'data_offsets' must be "
                 "[begin, end] with begin <= end"),
    weights_case("st-reversed",
                 safetensors_header({"w": {"dtype": "BF16", "shape": [1],
                                           "data_offsets": [2, 0]}}, b"\0\0"),
                 "model.safetensors: tensor 'w': 'data_offsets' must be "
                 "[begin, end] with begin <= end"),
    weights_case("st-span",
                 safetensors_header({"w": {"dtype": "BF16", "shape": [2],
                                           "data_offsets": [0, 2]}}, b"\0\0"),
                 "model.safetensors: tensor 'w': 'data_offsets' span 2 bytes "
                 "but BF16 [2] needs 4"),
    weights_case("st-past-end",
                 safetensors_header({"w": {"dtype": "BF16", "shape": [2],
                                           "data_offsets": [0, 4]}}, b"\0\0"),
                 "model.safetensors: tensor 'w': truncated file: data ends at "
                 "byte 4 of a 2-byte data section"),
    weights_case("st-overlap",
                 safetensors_header({"a": {"dtype": "BF16", "shape": [2],
                                           "data_offsets": [0, 4]},
                                     "b": {"dtype": "BF16", "shape": [2],
                                           "data_offsets": [2, 6]}},
                                    b"\0" * 6),
                 "model.safetensors: tensors 'a' (bytes 0..4) and 'b' (from "
                 "byte 2) overlap in the data section"),
    weights_case("st-truncated-data", lambda b: b[:len(b) // 2],
                 "model.safetensors: tensor '"),
    weights_case("st-missing-tensor",
                 safetensors_header({"w": {"dtype": "BF16", "shape": [1],
                                           "data_offsets": [0, 2]}}, b"\0\0"),
                 "model.safetensors: missing tensor "
                 "'language_model.model.embed_tokens.weight' the engine binds",
                 tool_name="kiln-run"),
    # --- shard indexes ------------------------------------------------------
    index_case("idx-not-json", "{",
               "model.safetensors.index.json: invalid JSON at byte 1"),
    index_case("idx-no-map", "{}",
               "model.safetensors.index.json: missing object field "
               "'weight_map'"),
    index_case("idx-map-array", "{\"weight_map\": []}",
               "model.safetensors.index.json: missing object field "
               "'weight_map'"),
    index_case("idx-shard-number", "{\"weight_map\": {\"w\": 3}}",
               "model.safetensors.index.json: weight_map['w'] must be a file "
               "name in the checkpoint folder"),
    index_case("idx-shard-path", "{\"weight_map\": {\"w\": \"../x\"}}",
               "model.safetensors.index.json: weight_map['w'] must be a file "
               "name in the checkpoint folder"),
    index_case("idx-shard-empty", "{\"weight_map\": {\"w\": \"\"}}",
               "model.safetensors.index.json: weight_map['w'] must be a file "
               "name in the checkpoint folder"),
    index_case("idx-shard-missing", "{\"weight_map\": {\"w\": \"a.st\"}}",
               "shard listed in {d}/model.safetensors.index.json: {d}/a.st: "
               "cannot open: No such file or directory"),
    index_case("idx-tensor-missing",
               "{\"weight_map\": {\"no.such.tensor\": \"a.st\"}}",
               "{d}/a.st: tensor 'no.such.tensor' listed in "
               "{d}/model.safetensors.index.json is missing from this shard",
               shards=["a.st"]),
    index_case("idx-deep", "{\"weight_map\": " + "[" * 500 + "]" * 500 + "}",
               "model.safetensors.index.json: invalid JSON at byte 143: nested "
               "deeper than 128 levels"),
    index_case("idx-duplicate",
               "{\"weight_map\": {}, \"weight_map\": {\"w\": \"a.st\"}}",
               "model.safetensors.index.json: invalid JSON at byte 19: "
               "duplicate key"),
    # --- token files --------------------------------------------------------
    tokens_case("tok-empty", "", "tokens: no tokens"),
    tokens_case("tok-word", "1,2,abc", "tokens"),
    tokens_case("tok-neg", "1,-2", "tokens"),
    tokens_case("tok-float", "1.5", "tokens"),
    tokens_case("tok-huge", "99999999999999999999999", "tokens"),
    tokens_case("tok-vocab", "1,100000",
                "token id 100000 is outside the vocabulary [0, 256)"),
    tokens_case("tok-binary", b"\x00\xff\x10", "tokens"),
    tokens_case("tok-ref-word", "x", "tokens", tool_name="kiln-ref"),
    # --- .npy arrays --------------------------------------------------------
    npy_case("npy-magic", b"NOTNUMPY" + b"\0" * 64,
             "a.npy: not a version 1.x .npy file"),
    npy_case("npy-version", npy("(2,)", b"\0" * 8, version=3),
             "a.npy: not a version 1.x .npy file"),
    npy_case("npy-short-header", b"\x93NUMPY\x01\x00\xff\xff" + b"{",
             "a.npy: truncated .npy header"),
    npy_case("npy-f8", npy("(2,)", b"\0" * 16, descr="<f8"),
             "a.npy: expected a C-order little-endian float32 array"),
    npy_case("npy-fortran", npy("(2,)", b"\0" * 8, fortran="True"),
             "a.npy: expected a C-order little-endian float32 array"),
    npy_case("npy-no-shape", npy("", b"\0" * 8).replace(b"'shape': , ",
                                                        b"'shape' , "),
             "a.npy: .npy header has no shape"),
    npy_case("npy-letters", npy("(a, b)", b"\0" * 8),
             "a.npy: malformed shape in .npy header"),
    npy_case("npy-wrap", npy("(4294967296, 4294967296)", b"\0" * 16),
             "a.npy: .npy shape holds more elements than the file's"),
    npy_case("npy-short-data", npy("(4,)", b"\0" * 8),
             "a.npy: .npy data is 8 bytes but its shape needs 16"),
    npy_case("npy-long-data", npy("(1,)", b"\0" * 8),
             "a.npy: .npy data is 8 bytes but its shape needs 4"),
    # --- engines ------------------------------------------------------------
    engine_case("eng-magic", (b"KILNENGN", b"KILNENGX"),
                "e.kiln: not a Kiln engine (bad magic)"),
    engine_case("eng-target", (b"host-x86_64", b"sm_90a\0\0\0\0\0"),
                "e.kiln: checksum mismatch (the file is truncated, corrupt or "
                "edited)", keep_checksum=True),
    engine_case("eng-plan-edit", (b'"kernel":"memory_0"', b'"kernel":"memory_1"'),
                "e.kiln: checksum mismatch (the file is truncated, corrupt or "
                "edited)", keep_checksum=True),
    engine_case("eng-plan-json", (b'{"values":', b'{"values"'),
                "e.kiln: malformed plan"),
    engine_case("eng-kind", (b'"kind":"input"', b'"kind":"magic"'),
                "e.kiln: malformed plan: value 0: unknown kind 'magic'"),
    engine_case("eng-dtype", (b'"dtype":"I32"', b'"dtype":"I99"'),
                "e.kiln: malformed plan: value 0"),
    engine_case("eng-input", (b'"input":"tokens"', b'"input":"toknes"'),
                "e.kiln: malformed plan: value 0: unknown input 'toknes'"),
    engine_case("eng-extent", (b'"shape":[256,64]', b'"shape":[256,0]'),
                "e.kiln: malformed plan: value 2: extent 0 in its shape"),
    engine_case("eng-huge", (b'"shape":[256,64]', b'"shape":[4611686018427387904,4]'),
                "e.kiln: malformed plan: value 2: its shape holds more than "
                "2^44 elements"),
    engine_case("eng-arg", (b'"args":[2,0]', b'"args":[2,-1]'),
                "e.kiln: malformed plan: launch 0: argument -1 is outside"),
    engine_case("eng-collective", (b'"kernel":"memory_0"',
                                   b'"collective":"gather"'),
                "e.kiln: malformed plan: launch 0: unknown collective 'gather'"),
    engine_case("eng-stage", (b'"kernel":"memory_0"',
                              b'"kernel":"memory_0","stage":3'),
                "e.kiln: malformed plan: launch 0: stage 3 is outside [-1, 0)"),
    engine_case("eng-tp", (b'{"values":', b'{"tensor_parallel":0,"values":'),
                "e.kiln: malformed plan: tensor_parallel"),
    engine_case("eng-positions", (b'"max_positions":32768',
                                  b'"max_positions":-5'),
                "e.kiln: malformed plan: max_positions -5 is outside"),
    engine_case("eng-duplicate", (b'"arena_bytes_per_token"',
                                  b'"max_positions":1,"arena_bytes_per_token"'),
                "e.kiln: malformed plan: invalid JSON at byte"),
    # --- command lines ------------------------------------------------------
    cli_case("cli-run-kv", ["kiln-run", "{engine}", "--checkpoint", "{ckpt}",
                            "--tokens", "1", "--kv-tokens", "1e300"],
             "--kv-tokens expects an integer in [0, 1099511627776], got "
             "'1e300'"),
    cli_case("cli-run-new", ["kiln-run", "{engine}", "--checkpoint", "{ckpt}",
                             "--tokens", "1", "--max-new-tokens", "1e300"],
             "--max-new-tokens expects an integer in [0, 1099511627776], got "
             "'1e300'"),
    cli_case("cli-run-topk", ["kiln-run", "{engine}", "--checkpoint", "{ckpt}",
                              "--tokens", "1", "--top-k", "1e300"],
             "--top-k expects an integer in [0, 1099511627776], got '1e300'"),
    cli_case("cli-run-seed", ["kiln-run", "{engine}", "--checkpoint", "{ckpt}",
                              "--tokens", "1", "--seed", "1e30"],
             "--seed expects an integer in [0, 9007199254740992], got '1e30'"),
    cli_case("cli-run-temp", ["kiln-run", "{engine}", "--checkpoint", "{ckpt}",
                              "--tokens", "1", "--temperature", "-1"],
             "--temperature got an invalid value '-1'"),
    cli_case("cli-run-topp", ["kiln-run", "{engine}", "--checkpoint", "{ckpt}",
                              "--tokens", "1", "--top-p", "2"],
             "--top-p got an invalid value '2'"),
    cli_case("cli-run-device", ["kiln-run", "{engine}", "--checkpoint", "{ckpt}",
                                "--tokens", "1", "--device", "tpu"],
             "--device must be auto, host or cuda, got 'tpu'"),
    cli_case("cli-run-two-prompts", ["kiln-run", "{engine}", "--checkpoint",
                                     "{ckpt}", "--tokens", "1", "--tokens",
                                     "2"],
             "2 prompts for an engine of 1 attention replica: give one"),
    cli_case("cli-run-no-prompt", ["kiln-run", "{engine}", "--checkpoint",
                                   "{ckpt}"],
             "give --tokens or --tokens-file"),
    cli_case("cli-run-missing", ["kiln-run", "{engine}", "--checkpoint"],
             "missing value for --checkpoint"),
    cli_case("cli-run-unknown", ["kiln-run", "{engine}", "--frobnicate"],
             "unknown option '--frobnicate'"),
    cli_case("cli-run-context", ["kiln-run", "{engine}", "--checkpoint",
                                 "{ckpt}", "--tokens", "1,2",
                                 "--max-new-tokens", "40000"],
             "the prompt (2 tokens) and --max-new-tokens 40000 reach position "
             "40002, past the model's max_position_embeddings 32768 "
             "(--max-context N raises it)"),
    cli_case("cli-run-nockpt", ["kiln-run", "{engine}", "--checkpoint",
                                "{d}/none", "--tokens", "1"],
             "none"),
    cli_case("cli-ref-context", ["kiln-ref", "{ckpt}", "--tokens", "1,2",
                                 "--max-new-tokens", "40000"],
             "the prompt (2 tokens) and --max-new-tokens 40000 reach position "
             "40002, past the model's max_position_embeddings 32768 "
             "(--max-context N raises it)"),
    cli_case("cli-ref-nodir", ["kiln-ref", "{d}/none", "--tokens", "1"],
             "none/config.json: cannot open: No such file or directory"),
    cli_case("cli-kilnc-tp", ["kilnc", "{ckpt}", "--tp", "0", "-o", "{d}/x"],
             "--tp must be at least 1"),
    cli_case("cli-kilnc-ep", ["kilnc", "{ckpt}", "--tp", "2", "--ep", "3",
                              "-o", "{d}/x"],
             "--ep 3 does not divide the 2 ranks (--tp x --dp): "
             "expert-parallel groups are made of whole ranks"),
    cli_case("cli-kilnc-dp", ["kilnc", "{ckpt}", "--dp", "0", "-o", "{d}/x"],
             "--dp must be at least 1"),
    cli_case("cli-kilnc-dp-huge", ["kilnc", "{ckpt}", "--tp",
                                   "4611686018427387904", "--dp", "4", "-o",
                                   "{d}/x"],
             "--tp 4611686018427387904 is above the largest split, 1048576"),
    cli_case("cli-kilnc-pp", ["kilnc", "{ckpt}", "--pp", "0", "-o", "{d}/x"],
             "--pp must be at least 1"),
    cli_case("cli-kilnc-pp-layers", ["kilnc", "{ckpt}", "--pp", "9", "-o",
                                     "{d}/x"],
             "has 8 layers, fewer than the 9 pipeline stages"),
    cli_case("cli-kilnc-heads", ["kilnc", "{ckpt}", "--tp", "3", "-o", "{d}/x"],
             "has 4 query heads, which do not split over 3 ranks"),
    cli_case("cli-kilnc-gpus", ["kilnc", "{ckpt}", "--plan", "--gpus", "0"],
             "--gpus must be in [1, 1000000]"),
    cli_case("cli-compare-tol", ["kiln-compare", "{d}/a.npy", "{d}/b.npy",
                                 "--tol", "abc"],
             "bad --tol 'abc'"),
    cli_case("cli-mkmodel-neg", ["kiln-mkmodel", "--preset", "tiny-scout",
                                 "--layers", "-3", "-o", "{d}/m"],
             "field 'text_config.num_hidden_layers': expected an integer >= 1, "
             "got -3"),
    cli_case("cli-mkmodel-shards", ["kiln-mkmodel", "--preset", "tiny-scout",
                                    "--shards", "0", "-o", "{d}/m"],
             "--shards must be at least 1"),
]


def main():
    failures = 0
    for name, make, expected in CASES:
        args, d = make()
        code, out = run(args)
        want = expected.replace("{d}", d)
        lines = [l for l in out.splitlines() if "error" in l or SHOW]
        wanted_code = 2 if args[0].endswith("kiln-compare") else 1
        ok = (code == wanted_code and want in out and
              not any(s in out for s in ("Segmentation", "Aborted",
                                         "terminate called", "Stack dump")))
        if SHOW:
            print("%-22s exit %s: %s" % (name, code, out.strip()[-300:]))
        if not ok:
            failures += 1
            print("FAIL %s: exit %s, wanted %r, got: %s" %
                  (name, code, want, out.strip()[-400:]))
    print("corpus: %d cases, %d failed" % (len(CASES), failures))
    return 1 if failures else 0


sys.exit(main())
