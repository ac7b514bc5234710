/*===- sessions.c - Concurrent sessions on one model, through the C API --===*
 *
 *   kiln-capi-sessions ENGINE CHECKPOINT PREFILL OUT_A.npy TOKENS_A
 *                      OUT_B.npy TOKENS_B [--interleaved]
 *
 * Loads the model once and runs two sequences on it, each in its own
 * session and thread (with --interleaved, both sessions live in one thread
 * and take turns, step by step: for drivers that are not thread-safe, like
 * the emulator's): the first
 * PREFILL tokens in one step, then one token at a time, every row's logits
 * kept. Each sequence runs twice, with a reset in between, and both passes
 * must agree bit for bit. The logits go to OUT_*.npy ([tokens, vocab] f32)
 * for kiln-compare against kiln-ref. Tokens are comma-separated.
 *
 *===----------------------------------------------------------------------===*/

#include <kiln/kiln.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  kiln_model *model;
  size_t prefill;
  const char *out;
  int64_t tokens[4096];
  size_t count;
  char error[512];
} Job;

static int check(Job *job, kiln_status *status, const char *what) {
  if (!status)
    return 1;
  snprintf(job->error, sizeof job->error, "%s: %s: %s", what,
           kiln_status_code_name(kiln_status_get_code(status)),
           kiln_status_message(status));
  kiln_status_free(status);
  return 0;
}

static int writeNpy(const char *path, const float *data, size_t rows,
                    size_t cols) {
  char header[128];
  int n = snprintf(header, sizeof header,
                   "{'descr': '<f4', 'fortran_order': False, 'shape': "
                   "(%zu, %zu), }",
                   rows, cols);
  int total = 10 + n + 1;
  int pad = (64 - total % 64) % 64;
  FILE *f = fopen(path, "wb");
  if (!f)
    return 0;
  unsigned short length = (unsigned short)(n + pad + 1);
  fwrite("\x93NUMPY\x01\x00", 1, 8, f);
  fputc(length & 0xff, f);
  fputc(length >> 8, f);
  fwrite(header, 1, (size_t)n, f);
  for (int i = 0; i < pad; ++i)
    fputc(' ', f);
  fputc('\n', f);
  size_t written = fwrite(data, sizeof(float), rows * cols, f);
  return fclose(f) == 0 && written == rows * cols;
}

/* Runs the job's sequence once into `logits` (count x vocab). */
static int runOnce(Job *job, kiln_session *session, float *logits,
                   size_t vocab) {
  kiln_session_reset(session);
  size_t done = 0;
  while (done < job->count) {
    size_t n = done == 0 ? job->prefill : 1;
    if (n > job->count - done)
      n = job->count - done;
    kiln_output output;
    kiln_output_init(&output);
    output.mode = KILN_OUTPUT_ALL_LOGITS;
    output.logits = logits + done * vocab;
    output.logits_capacity = (job->count - done) * vocab;
    if (!check(job,
               kiln_session_run(session, job->tokens + done, NULL, n, &output),
               "kiln_session_run"))
      return 0;
    if (output.logits_written != n * vocab) {
      snprintf(job->error, sizeof job->error, "%zu logits written, %zu asked",
               output.logits_written, n * vocab);
      return 0;
    }
    done += n;
  }
  if (kiln_session_position(session) != (int64_t)job->count) {
    snprintf(job->error, sizeof job->error, "position %lld after %zu tokens",
             (long long)kiln_session_position(session), job->count);
    return 0;
  }
  return 1;
}

static void *run(void *arg) {
  Job *job = arg;
  size_t vocab = (size_t)kiln_model_vocab_size(job->model);
  float *first = malloc(job->count * vocab * sizeof(float));
  float *second = malloc(job->count * vocab * sizeof(float));
  kiln_session_params params;
  kiln_session_params_init(&params);
  params.kv_tokens = (int64_t)job->count;
  kiln_session *session = NULL;
  if (!first || !second) {
    snprintf(job->error, sizeof job->error, "out of memory");
  } else if (check(job, kiln_session_create(job->model, &params, &session),
                   "kiln_session_create") &&
             runOnce(job, session, first, vocab) &&
             runOnce(job, session, second, vocab)) {
    if (memcmp(first, second, job->count * vocab * sizeof(float)) != 0)
      snprintf(job->error, sizeof job->error,
               "the run after kiln_session_reset differs from the first");
    else if (!writeNpy(job->out, first, job->count, vocab))
      snprintf(job->error, sizeof job->error, "cannot write %s", job->out);
  }
  kiln_session_free(session);
  free(first);
  free(second);
  return NULL;
}

/* Both jobs in one thread, alternating steps, both sessions alive. */
static void runInterleaved(Job *jobs) {
  size_t vocab = (size_t)kiln_model_vocab_size(jobs[0].model);
  kiln_session *sessions[2] = {NULL, NULL};
  float *logits[2][2] = {{NULL, NULL}, {NULL, NULL}};
  size_t done[2] = {0, 0};
  for (int j = 0; j < 2; ++j) {
    for (int pass = 0; pass < 2; ++pass)
      logits[j][pass] = malloc(jobs[j].count * vocab * sizeof(float));
    if (!logits[j][0] || !logits[j][1])
      snprintf(jobs[j].error, sizeof jobs[j].error, "out of memory");
    else
      check(&jobs[j], kiln_session_create(jobs[j].model, NULL, &sessions[j]),
            "kiln_session_create");
  }
  for (int pass = 0; pass < 2; ++pass) {
    done[0] = done[1] = 0;
    for (int j = 0; j < 2; ++j)
      kiln_session_reset(sessions[j]);
    int more = 1;
    while (more) {
      more = 0;
      for (int j = 0; j < 2; ++j) {
        Job *job = &jobs[j];
        if (job->error[0] || done[j] == job->count)
          continue;
        size_t n = done[j] == 0 ? job->prefill : 1;
        if (n > job->count - done[j])
          n = job->count - done[j];
        kiln_output output;
        kiln_output_init(&output);
        output.mode = KILN_OUTPUT_ALL_LOGITS;
        output.logits = logits[j][pass] + done[j] * vocab;
        output.logits_capacity = (job->count - done[j]) * vocab;
        if (check(job,
                  kiln_session_run(sessions[j], job->tokens + done[j], NULL, n,
                                   &output),
                  "kiln_session_run"))
          done[j] += n;
        more |= done[j] < job->count && !job->error[0];
      }
    }
  }
  for (int j = 0; j < 2; ++j) {
    Job *job = &jobs[j];
    if (!job->error[0] && memcmp(logits[j][0], logits[j][1],
                                 job->count * vocab * sizeof(float)) != 0)
      snprintf(job->error, sizeof job->error,
               "the run after kiln_session_reset differs from the first");
    else if (!job->error[0] &&
             !writeNpy(job->out, logits[j][0], job->count, vocab))
      snprintf(job->error, sizeof job->error, "cannot write %s", job->out);
    kiln_session_free(sessions[j]);
    free(logits[j][0]);
    free(logits[j][1]);
  }
}

static int parseTokens(const char *text, Job *job) {
  job->count = 0;
  while (*text) {
    char *end;
    long long v = strtoll(text, &end, 10);
    if (end == text || job->count == 4096)
      return 0;
    job->tokens[job->count++] = v;
    text = *end == ',' ? end + 1 : end;
  }
  return job->count > 0;
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: kiln-capi-sessions ENGINE CHECKPOINT PREFILL "
                    "OUT_A TOKENS_A OUT_B TOKENS_B [--interleaved]\n");
    return 2;
  }
  int interleaved = argc > 8 && strcmp(argv[8], "--interleaved") == 0;
  static Job jobs[2];
  for (int i = 0; i < 2; ++i) {
    jobs[i].prefill = (size_t)atoi(argv[3]);
    jobs[i].out = argv[4 + 2 * i];
    if (!parseTokens(argv[5 + 2 * i], &jobs[i]) || jobs[i].prefill == 0) {
      fprintf(stderr, "kiln-capi-sessions: bad tokens or prefill\n");
      return 2;
    }
  }
  kiln_model_params params;
  kiln_model_params_init(&params);
  params.engine_path = argv[1];
  params.checkpoint_dir = argv[2];
  kiln_model *model = NULL;
  kiln_status *status = kiln_model_load(&params, &model);
  if (status) {
    fprintf(stderr, "kiln-capi-sessions: %s\n", kiln_status_message(status));
    kiln_status_free(status);
    return 1;
  }
  /* An engine of one rank has no replicas to idle for. */
  if (kiln_model_replicas(model) != 1 || kiln_model_replica(model) != 0) {
    fprintf(stderr, "kiln-capi-sessions: replicas in a one-rank engine\n");
    return 1;
  }
  kiln_session *probe = NULL;
  if ((status = kiln_session_create(model, NULL, &probe))) {
    fprintf(stderr, "kiln-capi-sessions: %s\n", kiln_status_message(status));
    kiln_status_free(status);
    return 1;
  }
  status = kiln_session_idle(probe);
  if (!status || kiln_status_get_code(status) != KILN_STATUS_INVALID_ARGUMENT ||
      !strstr(kiln_status_message(status), "data-parallel attention")) {
    fprintf(stderr, "kiln-capi-sessions: kiln_session_idle on a one-rank "
                    "engine did not refuse\n");
    return 1;
  }
  kiln_status_free(status);
  kiln_session_free(probe);
  pthread_t threads[2];
  for (int i = 0; i < 2; ++i)
    jobs[i].model = model;
  if (interleaved) {
    runInterleaved(jobs);
  } else {
    for (int i = 0; i < 2; ++i)
      pthread_create(&threads[i], NULL, run, &jobs[i]);
    for (int i = 0; i < 2; ++i)
      pthread_join(threads[i], NULL);
  }
  /* Sessions keep the model alive; it is freed after them here anyway. */
  kiln_model_free(model);
  int failures = 0;
  for (int i = 0; i < 2; ++i)
    if (jobs[i].error[0]) {
      fprintf(stderr, "kiln-capi-sessions: sequence %c: %s\n", 'A' + i,
              jobs[i].error);
      ++failures;
    }
  if (failures)
    return 1;
  printf("two sessions on one model (%s): both sequences ran twice, "
         "identically\n",
         interleaved ? "interleaved" : "concurrently");
  return 0;
}
