/*===- kiln.h - The Kiln runtime C API ---------------------------*- C -*-===*
 *
 * Run compiled Kiln engines from any language. Conventions:
 * - Handles are opaque; every object a function hands out is freed with the
 *   matching *_free function.
 * - Functions that can fail return a kiln_status*: NULL on success, else an
 *   owned status carrying a message (free it with kiln_status_free).
 *   Nothing aborts; bad arguments are reported, not asserted.
 * - Parameter structs are initialised with their *_init function, which
 *   records the struct size so that later versions can add fields.
 * - Output parameters come last.
 *
 *===----------------------------------------------------------------------===*/

#ifndef KILN_KILN_H
#define KILN_KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_status kiln_status;

/* The message of a failed call; valid until the status is freed. */
const char *kiln_status_message(const kiln_status *status);
void kiln_status_free(kiln_status *status);

typedef struct kiln_session kiln_session;

typedef enum kiln_device {
  KILN_DEVICE_AUTO = 0, /* where the engine's target runs */
  KILN_DEVICE_HOST = 1, /* refuse engines that are not host engines */
  KILN_DEVICE_CUDA = 2  /* refuse engines that are not sm_90a engines */
} kiln_device;

typedef struct kiln_session_params {
  size_t struct_size;         /* set by kiln_session_params_init */
  const char *engine_path;    /* a .kiln file */
  const char *checkpoint_dir; /* the Hugging Face folder with the weights */
  kiln_device device;         /* KILN_DEVICE_AUTO unless set */
  /* Tokens of context to hold KV caches for from the start (0: grow them as
   * the sequence does). Creating the session fails, naming the size, when
   * the device cannot hold them; a longer sequence still grows the caches.
   * Chunked-attention layers reserve at most two chunks. */
  int64_t kv_tokens;
} kiln_session_params;

void kiln_session_params_init(kiln_session_params *params);

/* Loads the engine and binds the checkpoint's weights. On success
 * *out_session owns a new session. */
kiln_status *kiln_session_create(const kiln_session_params *params,
                                 kiln_session **out_session);
void kiln_session_free(kiln_session *session);

int64_t kiln_session_vocab_size(const kiln_session *session);

/* The end-of-sequence token ids of the model (owned by the session). */
size_t kiln_session_eos_tokens(const kiln_session *session,
                               const int64_t **out_tokens);

/* Runs `count` tokens at absolute `positions`, continuing the sequence held
 * in the session's KV cache, and writes count * vocab float32 logits (row
 * per token) to `out_logits`, which holds `logits_capacity` floats. */
kiln_status *kiln_session_run(kiln_session *session, const int64_t *tokens,
                              const int64_t *positions, size_t count,
                              float *out_logits, size_t logits_capacity);

/* Runs like kiln_session_run_last and writes the greedy next token (the
 * largest last-row logit, ties to the lower id) to *out_token; for sm_90a
 * engines the choice is made on the GPU and no logits are copied back. */
kiln_status *kiln_session_run_greedy(kiln_session *session,
                                     const int64_t *tokens,
                                     const int64_t *positions, size_t count,
                                     int64_t *out_token);

/* The same, writing only the last token's vocab logits: the LM head runs on
 * that row alone, which is what generation needs after a long prefill. */
kiln_status *kiln_session_run_last(kiln_session *session, const int64_t *tokens,
                                   const int64_t *positions, size_t count,
                                   float *out_logits, size_t logits_capacity);

/* Forgets every token run so far. */
void kiln_session_reset(kiln_session *session);

/* Looks for a usable CUDA driver and GPU (libcuda.so.1, or the file named
 * by KILN_LIBCUDA). On success *out_device_count is the number of GPUs;
 * otherwise the status says in one line what is missing. */
kiln_status *kiln_cuda_probe(int *out_device_count);

typedef struct kiln_sampler kiln_sampler;

typedef struct kiln_sampler_params {
  size_t struct_size; /* set by kiln_sampler_params_init */
  double temperature; /* 0: greedy (the default) */
  int64_t top_k;      /* 0: no limit */
  double top_p;       /* 1: no nucleus cut (the default) */
  uint64_t seed;
} kiln_sampler_params;

void kiln_sampler_params_init(kiln_sampler_params *params);

kiln_status *kiln_sampler_create(const kiln_sampler_params *params,
                                 kiln_sampler **out_sampler);
void kiln_sampler_free(kiln_sampler *sampler);

/* Picks the next token from one row of `vocab` logits. */
kiln_status *kiln_sampler_pick(kiln_sampler *sampler, const float *logits,
                               int64_t vocab, int64_t *out_token);

/* Runs like kiln_session_run_last and draws the next token with `sampler`
 * (its parameters and seeded generator, one draw per call; greedy at
 * temperature 0) into *out_token. For sm_90a engines the draw is made on
 * the GPU and no logits are copied back; it follows kiln_sampler_pick's
 * rule, so a seed gives the same tokens on either backend up to the
 * rounding of the logits. */
kiln_status *kiln_session_run_sample(kiln_session *session,
                                     const int64_t *tokens,
                                     const int64_t *positions, size_t count,
                                     kiln_sampler *sampler, int64_t *out_token);

#ifdef __cplusplus
}
#endif

#endif /* KILN_KILN_H */
