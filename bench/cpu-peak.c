/* What this CPU can do at most, for bench/cpu-vs-llamacpp.sh to hold Kiln's
 * host kernels against: single-precision FMA GFLOP/s (independent vector
 * FMA chains, so latency never limits) and memory bandwidth (STREAM-like
 * copy and triad over arrays far larger than the caches), each with 1..N
 * threads, and a read-only sum (what a decode step does to its weights).
 * Built at benchmark time with -march=native: the widest vectors the
 * machine has.
 *
 *   cpu-peak THREADS...   prints "threads fma_gflops copy_gbs triad_gbs
 * read_gbs"
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float vec __attribute__((vector_size(LANES * 4)));

/* Independent chains: at least FMA latency x pipes, as many as the
 * registers allow (fewer leave a 2 x 512-bit FMA core idle half the time). */
#if LANES == 16
#define CHAINS 24 /* of 32 registers */
#else
#define CHAINS 12 /* of 16 registers */
#endif
#define FMA_STEPS 20000000L

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *fmaWorker(void *arg) {
  vec acc[CHAINS];
  vec a, b;
  for (int l = 0; l < LANES; ++l) {
    a[l] = 0.999999f;
    b[l] = 1e-7f;
  }
  for (int c = 0; c < CHAINS; ++c)
    acc[c] = a * (float)(c + 1);
  for (long i = 0; i < FMA_STEPS; ++i) {
    for (int c = 0; c < CHAINS; ++c)
      acc[c] = acc[c] * a + b;
    /* Keep the chains in registers, not folded away. */
    __asm__ volatile("" : "+x"(acc[0]), "+x"(acc[CHAINS - 1]));
  }
  float sum = 0;
  for (int c = 0; c < CHAINS; ++c)
    for (int l = 0; l < LANES; ++l)
      sum += acc[c][l];
  *(float *)arg = sum;
  return NULL;
}

struct StreamJob {
  float *a, *b, *c;
  size_t begin, end;
  int kind; /* 0 copy, 1 triad, 2 read */
  float sum;
};

static void *streamWorker(void *arg) {
  struct StreamJob *j = arg;
  if (j->kind == 2) {
    vec acc[4] = {0};
    const vec *p = (const vec *)(j->b + j->begin);
    size_t n = (j->end - j->begin) / LANES / 4 * 4;
    for (size_t i = 0; i < n; i += 4)
      for (int u = 0; u < 4; ++u)
        acc[u] += p[i + u];
    for (int u = 0; u < 4; ++u)
      for (int l = 0; l < LANES; ++l)
        j->sum += acc[u][l];
  } else if (j->kind == 1)
    for (size_t i = j->begin; i < j->end; ++i)
      j->a[i] = j->b[i] + 3.0f * j->c[i];
  else
    for (size_t i = j->begin; i < j->end; ++i)
      j->a[i] = j->b[i];
  return NULL;
}

static double fmaPeak(int threads) {
  pthread_t ids[256];
  float sink[256];
  double start = now();
  for (int t = 0; t < threads; ++t)
    pthread_create(&ids[t], NULL, fmaWorker, &sink[t]);
  for (int t = 0; t < threads; ++t)
    pthread_join(ids[t], NULL);
  double seconds = now() - start;
  if (sink[0] == 12345.0f)
    puts("");
  return 2.0 * LANES * CHAINS * FMA_STEPS * threads / seconds / 1e9;
}

/* Best of five passes, counting the bytes read and written (no
 * write-allocate traffic), as STREAM does. */
static double bandwidth(int threads, float *a, float *b, float *c, size_t n,
                        int kind) {
  double best = 0;
  for (int pass = 0; pass < 5; ++pass) {
    pthread_t ids[256];
    struct StreamJob jobs[256];
    double start = now();
    for (int t = 0; t < threads; ++t) {
      /* Aligned split points, so the read kernel's vectors are too. */
      size_t step = n / threads / 64 * 64;
      jobs[t] = (struct StreamJob){
          a, b, c, step * t, t == threads - 1 ? n : step * (t + 1), kind, 0};
      pthread_create(&ids[t], NULL, streamWorker, &jobs[t]);
    }
    for (int t = 0; t < threads; ++t)
      pthread_join(ids[t], NULL);
    double seconds = now() - start;
    double bytes = (kind == 1   ? 3.0
                    : kind == 0 ? 2.0
                                : 1.0) *
                   sizeof(float) * n;
    if (bytes / seconds / 1e9 > best)
      best = bytes / seconds / 1e9;
  }
  return best;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: cpu-peak THREADS...\n");
    return 2;
  }
  size_t n = (size_t)64 << 20; /* 256 MiB an array */
  float *a = aligned_alloc(64, n * sizeof(float)),
        *b = aligned_alloc(64, n * sizeof(float)),
        *c = aligned_alloc(64, n * sizeof(float));
  if (!a || !b || !c) {
    fprintf(stderr, "cpu-peak: cannot allocate 768 MiB\n");
    return 1;
  }
  for (size_t i = 0; i < n; ++i) {
    a[i] = 0;
    b[i] = (float)(i & 1023);
    c[i] = 1.0f;
  }
  for (int i = 1; i < argc; ++i) {
    int threads = atoi(argv[i]);
    if (threads < 1 || threads > 256) {
      fprintf(stderr, "cpu-peak: threads must be 1 to 256, not '%s'\n",
              argv[i]);
      return 2;
    }
    printf("%d %.1f %.2f %.2f %.2f\n", threads, fmaPeak(threads),
           bandwidth(threads, a, b, c, n, 0) /* copy */,
           bandwidth(threads, a, b, c, n, 1) /* triad */,
           bandwidth(threads, a, b, c, n, 2) /* read */);
  }
  free(a);
  free(b);
  free(c);
  return 0;
}
