/*===- kiln.h - The Kiln runtime C API ---------------------------*- C -*-===*
 *
 * Run compiled Kiln engines from any language. A kiln_model is an engine
 * plus a checkpoint's weights, loaded once; kiln_sessions are sequences run
 * on it, each with its own KV caches. Sessions on one model may run
 * concurrently, each from one thread at a time.
 *
 *   kiln_model_params mp;  kiln_model_params_init(&mp);
 *   mp.engine_path = "model.kiln";  mp.checkpoint_dir = "checkpoint/";
 *   kiln_model *model;     kiln_model_load(&mp, &model);
 *   kiln_session *s;       kiln_session_create(model, NULL, &s);
 *   kiln_output out;       kiln_output_init(&out);  (KILN_OUTPUT_TOKEN)
 *   kiln_session_run(s, tokens, NULL, n, &out);  -> out.token
 *
 * Conventions:
 * - Handles are opaque; every object a function hands out is freed with the
 *   matching *_free function (NULL is accepted and ignored). A session keeps
 *   its model alive: the model may be freed first.
 * - Functions that can fail return a kiln_status*: NULL on success, else an
 *   owned status with a code to branch on and a message (free it with
 *   kiln_status_free). Nothing aborts; bad arguments are reported.
 * - Parameter structs are initialised with their *_init function, which
 *   records the struct size so that later versions can add fields.
 * - Output parameters come last.
 *
 *===----------------------------------------------------------------------===*/

#ifndef KILN_KILN_H
#define KILN_KILN_H

#include "kiln/kiln_version.h"

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define KILN_API __declspec(dllexport)
#elif defined(__GNUC__)
#define KILN_API __attribute__((visibility("default")))
#else
#define KILN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/*===-- Version ---------------------------------------------------------===*/

/* The library's version, "MAJOR.MINOR.PATCH"; compare with
 * KILN_VERSION_STRING to catch a header/library mismatch. */
KILN_API const char *kiln_version(void);

/*===-- Status ----------------------------------------------------------===*/

typedef enum kiln_status_code {
  KILN_STATUS_OK = 0,
  KILN_STATUS_INVALID_ARGUMENT = 1,   /* a bad argument or parameter */
  KILN_STATUS_NOT_FOUND = 2,          /* a file that does not exist */
  KILN_STATUS_INVALID_ENGINE = 3,     /* not an engine, corrupt, or its
                                         target is not one this runtime runs */
  KILN_STATUS_INVALID_CHECKPOINT = 4, /* weights missing or of other shapes */
  KILN_STATUS_UNAVAILABLE = 5,        /* no driver, no GPU, the wrong GPU */
  KILN_STATUS_OUT_OF_MEMORY = 6,      /* host or device memory */
  KILN_STATUS_DEVICE_ERROR = 7,       /* a failed driver call or kernel */
  KILN_STATUS_INTERNAL = 8,
  /* Not codes: they give the type every int value, so a value from a newer
   * library or a caller's mistake is defined behaviour (and reported). */
  KILN_STATUS_CODE_MIN_ = -2147483647 - 1,
  KILN_STATUS_CODE_MAX_ = 2147483647
} kiln_status_code;

typedef struct kiln_status kiln_status;

/* KILN_STATUS_OK for NULL (success). */
KILN_API kiln_status_code kiln_status_get_code(const kiln_status *status);
/* The message of a failed call ("" for NULL); valid until the status is
 * freed. */
KILN_API const char *kiln_status_message(const kiln_status *status);
/* "KILN_STATUS_OUT_OF_MEMORY", ... */
KILN_API const char *kiln_status_code_name(kiln_status_code code);
KILN_API void kiln_status_free(kiln_status *status);

/*===-- Models ----------------------------------------------------------===*/

typedef struct kiln_model kiln_model;

typedef enum kiln_device {
  KILN_DEVICE_AUTO = 0, /* where the engine's target runs */
  KILN_DEVICE_HOST = 1, /* refuse engines that are not host engines */
  KILN_DEVICE_CUDA = 2, /* refuse engines that are not sm_90a engines */
  KILN_DEVICE_MIN_ = -2147483647 - 1, /* not devices: every int is a value */
  KILN_DEVICE_MAX_ = 2147483647
} kiln_device;

/* Settings that an environment variable also sets: -1 (what init sets)
 * takes the variable's value, 0 turns off, 1 turns on; a NULL string takes
 * the variable. */
typedef struct kiln_model_params {
  size_t struct_size;         /* set by kiln_model_params_init */
  const char *engine_path;    /* a .kiln file */
  const char *checkpoint_dir; /* the Hugging Face folder with the weights */
  kiln_device device;         /* KILN_DEVICE_AUTO unless set */
  const char *cuda_driver;    /* KILN_LIBCUDA: default libcuda.so.1 */
  int cuda_graphs;            /* KILN_CUDA_GRAPH: replay decode steps (on) */
  int sync_each_launch;       /* KILN_CUDA_SYNC: name a faulting kernel */
  int poison_device_memory;   /* KILN_CUDA_POISON: fresh memory reads NaN */
  int check_sampler;          /* KILN_CHECK_SAMPLER: re-pick on the host */
  int profile;                /* KILN_PROFILE: per-kernel GPU times */
  int graph_stats;            /* KILN_CUDA_GRAPH_STATS */
  const char *dump_dir;       /* KILN_DUMP_DIR: every launch's results */
  int threads; /* KILN_THREADS: host kernel threads; 0: all cores */
} kiln_model_params;

KILN_API void kiln_model_params_init(kiln_model_params *params);

/* Loads the engine on its device and binds the checkpoint's weights to it
 * (uploading them to the GPU for sm_90a engines). */
KILN_API kiln_status *kiln_model_load(const kiln_model_params *params,
                                      kiln_model **out_model);
KILN_API void kiln_model_free(kiln_model *model);

KILN_API int64_t kiln_model_vocab_size(const kiln_model *model);
/* The end-of-sequence token ids (owned by the model). */
KILN_API size_t kiln_model_eos_tokens(const kiln_model *model,
                                      const int64_t **out_tokens);
/* "host-x86_64" or "sm_90a" (owned by the model). */
KILN_API const char *kiln_model_target(const kiln_model *model);
/* A tensor-parallel engine runs as one process per rank (mpirun -np N):
 * this process's rank and N. 0 and 1 for an engine of one rank. Every rank
 * must run the same calls in the same order (each step holds collectives),
 * from one thread per process, and computes the same logits; callers
 * usually print on rank 0 only. */
KILN_API int64_t kiln_model_rank(const kiln_model *model);
KILN_API int64_t kiln_model_ranks(const kiln_model *model);
/* Data-parallel attention (kilnc --tp T --dp D, or --ep above --tp): the
 * ranks form D replicas of T consecutive ranks, each running a sequence of
 * its own, and exchange rows around every MoE block; every rank of a
 * replica runs the same calls and computes the same logits. The number of
 * replicas (1 without them) and this rank's replica (0 without them). */
KILN_API int64_t kiln_model_replicas(const kiln_model *model);
KILN_API int64_t kiln_model_replica(const kiln_model *model);
/* This rank's place among its replica's ranks (in every pipeline stage), in
 * rank order: 0 for one rank of each replica, the one that usually prints
 * for it. Without replicas, kiln_model_rank. */
KILN_API int64_t kiln_model_replica_rank(const kiln_model *model);
/* After an error in a multi-rank run: ends every rank of the job with
 * `exit_code` (MPI_Abort), so that no rank waits forever in a collective
 * for this one. Returns (doing nothing) in a single-rank process. */
KILN_API void kiln_abort_ranks(int exit_code);
/* The model's max_position_embeddings (0 when the engine does not say):
 * callers refuse prompts plus generation longer than it unless told to. */
KILN_API int64_t kiln_model_max_positions(const kiln_model *model);

/*===-- Sessions --------------------------------------------------------===*/

typedef struct kiln_session kiln_session;

typedef struct kiln_session_params {
  size_t struct_size; /* set by kiln_session_params_init */
  /* Tokens of context to hold KV caches for from the start (0: grow them as
   * the sequence does). Creating the session fails with
   * KILN_STATUS_OUT_OF_MEMORY, naming the size, when the device cannot hold
   * them. Chunked-attention layers reserve at most two chunks. */
  int64_t kv_tokens;
} kiln_session_params;

KILN_API void kiln_session_params_init(kiln_session_params *params);

/* A new sequence on `model`; `params` may be NULL (the defaults). */
KILN_API kiln_status *kiln_session_create(kiln_model *model,
                                          const kiln_session_params *params,
                                          kiln_session **out_session);
KILN_API void kiln_session_free(kiln_session *session);

/* Forgets every token run so far. */
KILN_API void kiln_session_reset(kiln_session *session);
/* One past the largest position run so far: where a run with NULL
 * positions continues. */
KILN_API int64_t kiln_session_position(const kiln_session *session);

/*===-- Sampling --------------------------------------------------------===*/

typedef struct kiln_sampler kiln_sampler;

typedef struct kiln_sampler_params {
  size_t struct_size; /* set by kiln_sampler_params_init */
  double temperature; /* 0: greedy (the default) */
  int64_t top_k;      /* 0: no limit */
  double top_p;       /* 1: no nucleus cut (the default) */
  uint64_t seed;
} kiln_sampler_params;

KILN_API void kiln_sampler_params_init(kiln_sampler_params *params);
KILN_API kiln_status *kiln_sampler_create(const kiln_sampler_params *params,
                                          kiln_sampler **out_sampler);
KILN_API void kiln_sampler_free(kiln_sampler *sampler);

/* Picks the next token from one row of `vocab` logits (one draw of the
 * sampler's generator). */
KILN_API kiln_status *kiln_sampler_pick(kiln_sampler *sampler,
                                        const float *logits, int64_t vocab,
                                        int64_t *out_token);

/*===-- Running ---------------------------------------------------------===*/

typedef enum kiln_output_mode {
  /* The next token (the default): drawn by `sampler`, greedy when it is
   * NULL (the largest last-row logit, ties to the lower id). For sm_90a
   * engines the pick is made on the GPU and no logits come back. */
  KILN_OUTPUT_TOKEN = 0,
  /* The last token's vocab logits: the LM head runs on that row alone. */
  KILN_OUTPUT_LAST_LOGITS = 1,
  /* count * vocab logits, a row per token. */
  KILN_OUTPUT_ALL_LOGITS = 2,
  /* Not modes: every int is a value of the type (an unknown one is
   * reported, not undefined). */
  KILN_OUTPUT_MODE_MIN_ = -2147483647 - 1,
  KILN_OUTPUT_MODE_MAX_ = 2147483647
} kiln_output_mode;

typedef struct kiln_output {
  size_t struct_size;     /* set by kiln_output_init */
  kiln_output_mode mode;  /* KILN_OUTPUT_TOKEN unless set */
  kiln_sampler *sampler;  /* TOKEN: NULL is greedy */
  float *logits;          /* *_LOGITS: where they go */
  size_t logits_capacity; /* floats `logits` holds */
  /* Written by kiln_session_run: */
  int64_t token;         /* TOKEN: the next token */
  size_t logits_written; /* *_LOGITS: floats written */
} kiln_output;

KILN_API void kiln_output_init(kiln_output *output);

/* Runs `count` tokens at absolute `positions` (NULL: consecutive from
 * kiln_session_position) after the sequence held in the session, and fills
 * `output` by its mode. On failure the session is reset. */
KILN_API kiln_status *kiln_session_run(kiln_session *session,
                                       const int64_t *tokens,
                                       const int64_t *positions, size_t count,
                                       kiln_output *output);

/* On an engine with data-parallel attention replicas, whose ranks all step
 * together: takes part in one step of the other replicas without tokens of
 * this replica's (its ranks still run their experts on the others' rows).
 * A replica with nothing to run calls this instead of kiln_session_run;
 * every rank makes the same number of kiln_session_run and
 * kiln_session_idle calls. KILN_STATUS_INVALID_ARGUMENT on other engines. */
KILN_API kiln_status *kiln_session_idle(kiln_session *session);

/*===-- Devices ---------------------------------------------------------===*/

/* Looks for a usable CUDA driver and GPU (libcuda.so.1, or the file named
 * by KILN_LIBCUDA). On success *out_device_count is the number of GPUs;
 * otherwise the status (KILN_STATUS_UNAVAILABLE) says in one line what is
 * missing. */
KILN_API kiln_status *kiln_cuda_probe(int *out_device_count);

#ifdef __cplusplus
}
#endif

#endif /* KILN_KILN_H */
