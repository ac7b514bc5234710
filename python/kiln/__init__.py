"""Kiln from Python: run compiled engines through libkiln.so's C API.

    import kiln, numpy as np
    model = kiln.Model("model.kiln", "checkpoint/")
    session = model.session()
    logits = session.logits(np.array([1, 2, 3]))   # [3, vocab] float32
    token = session.next_token([4])                # greedy; continues

The library is found through $KILN_LIBRARY, next to this package, or on the
system's library path. Calls release the GIL (ctypes does), so sessions of
one model run concurrently from Python threads.
"""

import ctypes
import ctypes.util
import enum
import os

import numpy as np

__all__ = ["Model", "Session", "Sampler", "KilnError", "StatusCode",
           "version"]


class StatusCode(enum.IntEnum):
    """kiln_status_code."""
    OK = 0
    INVALID_ARGUMENT = 1
    NOT_FOUND = 2
    INVALID_ENGINE = 3
    INVALID_CHECKPOINT = 4
    UNAVAILABLE = 5
    OUT_OF_MEMORY = 6
    DEVICE_ERROR = 7
    INTERNAL = 8


class KilnError(RuntimeError):
    """A failed call: `code` is a StatusCode, str() the library's message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = StatusCode(code)


_DEVICES = {"auto": 0, "host": 1, "cuda": 2}
_OUTPUT_TOKEN, _OUTPUT_LAST_LOGITS, _OUTPUT_ALL_LOGITS = 0, 1, 2


class _ModelParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("engine_path", ctypes.c_char_p),
                ("checkpoint_dir", ctypes.c_char_p),
                ("device", ctypes.c_int),
                ("cuda_driver", ctypes.c_char_p),
                ("cuda_graphs", ctypes.c_int),
                ("sync_each_launch", ctypes.c_int),
                ("poison_device_memory", ctypes.c_int),
                ("check_sampler", ctypes.c_int),
                ("profile", ctypes.c_int),
                ("graph_stats", ctypes.c_int),
                ("dump_dir", ctypes.c_char_p)]


class _SessionParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("kv_tokens", ctypes.c_int64)]


class _SamplerParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("temperature", ctypes.c_double),
                ("top_k", ctypes.c_int64),
                ("top_p", ctypes.c_double),
                ("seed", ctypes.c_uint64)]


class _Output(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("mode", ctypes.c_int),
                ("sampler", ctypes.c_void_p),
                ("logits", ctypes.POINTER(ctypes.c_float)),
                ("logits_capacity", ctypes.c_size_t),
                ("token", ctypes.c_int64),
                ("logits_written", ctypes.c_size_t)]


def _load():
    candidates = [os.environ.get("KILN_LIBRARY"),
                  os.path.join(os.path.dirname(__file__), "libkiln.so"),
                  ctypes.util.find_library("kiln"), "libkiln.so"]
    errors = []
    for path in filter(None, candidates):
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(str(e))
    raise ImportError("kiln: cannot load libkiln.so (set KILN_LIBRARY): " +
                      "; ".join(errors))


_lib = _load()
_p = ctypes.c_void_p
_status_fns = {
    "kiln_model_load": [ctypes.POINTER(_ModelParams), ctypes.POINTER(_p)],
    "kiln_session_create": [_p, ctypes.POINTER(_SessionParams),
                            ctypes.POINTER(_p)],
    "kiln_session_run": [_p, ctypes.POINTER(ctypes.c_int64),
                         ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                         ctypes.POINTER(_Output)],
    "kiln_sampler_create": [ctypes.POINTER(_SamplerParams),
                            ctypes.POINTER(_p)],
    "kiln_session_idle": [_p],
}
for _name, _args in _status_fns.items():
    getattr(_lib, _name).argtypes = _args
    getattr(_lib, _name).restype = _p
for _name, _restype, _args in [
        ("kiln_version", ctypes.c_char_p, []),
        ("kiln_status_get_code", ctypes.c_int, [_p]),
        ("kiln_status_message", ctypes.c_char_p, [_p]),
        ("kiln_status_free", None, [_p]),
        ("kiln_model_params_init", None, [ctypes.POINTER(_ModelParams)]),
        ("kiln_session_params_init", None, [ctypes.POINTER(_SessionParams)]),
        ("kiln_sampler_params_init", None, [ctypes.POINTER(_SamplerParams)]),
        ("kiln_output_init", None, [ctypes.POINTER(_Output)]),
        ("kiln_model_free", None, [_p]),
        ("kiln_session_free", None, [_p]),
        ("kiln_sampler_free", None, [_p]),
        ("kiln_model_vocab_size", ctypes.c_int64, [_p]),
        ("kiln_model_rank", ctypes.c_int64, [_p]),
        ("kiln_model_ranks", ctypes.c_int64, [_p]),
        ("kiln_model_replicas", ctypes.c_int64, [_p]),
        ("kiln_model_replica", ctypes.c_int64, [_p]),
        ("kiln_model_replica_rank", ctypes.c_int64, [_p]),
        ("kiln_model_max_positions", ctypes.c_int64, [_p]),
        ("kiln_model_target", ctypes.c_char_p, [_p]),
        ("kiln_model_eos_tokens", ctypes.c_size_t,
         [_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_int64))]),
        ("kiln_session_reset", None, [_p]),
        ("kiln_session_position", ctypes.c_int64, [_p])]:
    getattr(_lib, _name).restype = _restype
    getattr(_lib, _name).argtypes = _args


def _check(status):
    if status:
        code = _lib.kiln_status_get_code(status)
        message = _lib.kiln_status_message(status).decode()
        _lib.kiln_status_free(status)
        raise KilnError(code, message)


def version():
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return _lib.kiln_version().decode()


class Sampler:
    """Temperature / top-k / top-p sampling with a seeded generator
    (temperature 0: greedy)."""

    def __init__(self, temperature=0.0, top_k=0, top_p=1.0, seed=0):
        params = _SamplerParams()
        _lib.kiln_sampler_params_init(ctypes.byref(params))
        params.temperature, params.top_k = temperature, top_k
        params.top_p, params.seed = top_p, seed
        self._handle = _p()
        _check(_lib.kiln_sampler_create(ctypes.byref(params),
                                        ctypes.byref(self._handle)))

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.kiln_sampler_free(self._handle)


class Model:
    """An engine with a checkpoint's weights, loaded once. Keyword options
    are the fields of kiln_model_params (cuda_graphs=False, dump_dir=...,
    ...)."""

    def __init__(self, engine, checkpoint, device="auto", **options):
        if device not in _DEVICES:
            raise ValueError("device must be one of " + ", ".join(_DEVICES))
        params = _ModelParams()
        _lib.kiln_model_params_init(ctypes.byref(params))
        params.engine_path = os.fsencode(engine)
        params.checkpoint_dir = os.fsencode(checkpoint)
        params.device = _DEVICES[device]
        for key, value in options.items():
            if key not in dict(_ModelParams._fields_) or key == "struct_size":
                raise TypeError("unknown model option " + repr(key))
            if isinstance(value, bool):
                value = int(value)
            elif isinstance(value, str):
                value = os.fsencode(value)
            setattr(params, key, value)
        self._handle = _p()
        _check(_lib.kiln_model_load(ctypes.byref(params),
                                    ctypes.byref(self._handle)))

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.kiln_model_free(self._handle)

    @property
    def vocab_size(self):
        return _lib.kiln_model_vocab_size(self._handle)

    @property
    def rank(self):
        """This process's rank in a tensor-parallel engine (0 for one rank)."""
        return _lib.kiln_model_rank(self._handle)

    @property
    def ranks(self):
        """The ranks a tensor-parallel engine runs on (mpirun -np); 1 else."""
        return _lib.kiln_model_ranks(self._handle)

    @property
    def replicas(self):
        """Data-parallel attention replicas (kilnc --dp), each running its
        own sequence on ranks / replicas ranks; 1 without them."""
        return _lib.kiln_model_replicas(self._handle)

    @property
    def replica(self):
        """This rank's replica (0 without replicas)."""
        return _lib.kiln_model_replica(self._handle)

    @property
    def replica_rank(self):
        """This rank's place among its replica's ranks: 0 for the one that
        usually prints for it (the rank, without replicas)."""
        return _lib.kiln_model_replica_rank(self._handle)

    @property
    def max_positions(self):
        """The model's max_position_embeddings (0 when the engine does not
        say): prompts plus generation past it should be refused."""
        return _lib.kiln_model_max_positions(self._handle)

    @property
    def target(self):
        return _lib.kiln_model_target(self._handle).decode()

    @property
    def eos_tokens(self):
        ids = ctypes.POINTER(ctypes.c_int64)()
        n = _lib.kiln_model_eos_tokens(self._handle, ctypes.byref(ids))
        return [ids[i] for i in range(n)]

    def session(self, kv_tokens=0):
        """A new sequence on this model."""
        return Session(self, kv_tokens)


class Session:
    """One sequence: its KV caches continue from run to run until reset()."""

    def __init__(self, model, kv_tokens=0):
        params = _SessionParams()
        _lib.kiln_session_params_init(ctypes.byref(params))
        params.kv_tokens = kv_tokens
        self._model = model  # the C session keeps it alive too
        self._handle = _p()
        _check(_lib.kiln_session_create(model._handle, ctypes.byref(params),
                                        ctypes.byref(self._handle)))

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.kiln_session_free(self._handle)

    @property
    def position(self):
        """One past the largest position run so far."""
        return _lib.kiln_session_position(self._handle)

    def reset(self):
        _lib.kiln_session_reset(self._handle)

    def idle(self):
        """With attention replicas: take part in the other replicas' step
        without tokens of this one (see kiln_session_idle)."""
        _check(_lib.kiln_session_idle(self._handle))

    def _run(self, tokens, positions, output):
        tokens = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
        at = None
        if positions is not None:
            positions = np.ascontiguousarray(positions,
                                             dtype=np.int64).reshape(-1)
            if positions.shape != tokens.shape:
                raise ValueError("one position per token")
            at = positions.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
        _check(_lib.kiln_session_run(
            self._handle, tokens.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
            at, tokens.size, ctypes.byref(output)))
        return tokens.size

    def logits(self, tokens, positions=None, last_only=False):
        """Runs `tokens` (at `positions`; default: continuing the sequence)
        and returns float32 logits: [len(tokens), vocab], or with last_only
        the last token's [vocab] (the LM head then runs on that row only)."""
        count = np.asarray(tokens).size
        vocab = self._model.vocab_size
        out = np.empty((1 if last_only else count, vocab), dtype=np.float32)
        output = _Output()
        _lib.kiln_output_init(ctypes.byref(output))
        output.mode = _OUTPUT_LAST_LOGITS if last_only else _OUTPUT_ALL_LOGITS
        output.logits = out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        output.logits_capacity = out.size
        self._run(tokens, positions, output)
        return out[0] if last_only else out

    def next_token(self, tokens, positions=None, sampler=None):
        """Runs `tokens` and returns the next token, drawn by `sampler`
        (greedy without one) where the engine runs."""
        output = _Output()
        _lib.kiln_output_init(ctypes.byref(output))
        output.mode = _OUTPUT_TOKEN
        output.sampler = sampler._handle if sampler is not None else None
        self._run(tokens, positions, output)
        return int(output.token)

    def generate(self, prompt, count, sampler=None, stop_at_eos=True):
        """The next `count` tokens after `prompt`, as a list.

        With attention replicas every rank must take the same number of
        steps: give every replica a prompt whose steps match, pass
        stop_at_eos=False, or step with next_token() and idle()."""
        eos = set(self._model.eos_tokens) if stop_at_eos else set()
        tokens, step = [], prompt
        for _ in range(count):
            token = self.next_token(step, sampler=sampler)
            tokens.append(token)
            if token in eos:
                break
            step = [token]
        return tokens
