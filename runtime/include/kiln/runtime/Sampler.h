//===- Sampler.h - Choosing the next token ----------------------*- C++ -*-===//
//
// Greedy decoding, or sampling with temperature, top-k and top-p (nucleus)
// from a seeded generator, so that a sampled generation can be repeated.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_SAMPLER_H
#define KILN_RUNTIME_SAMPLER_H

#include <cstdint>
#include <random>

namespace kiln {

struct SamplingParams {
  /// 0 means greedy (argmax, ties to the lower id).
  double temperature = 0.0;
  /// Keep the k most likely tokens; 0 keeps all.
  int64_t topK = 0;
  /// Keep the smallest set of most likely tokens whose mass reaches top_p.
  double topP = 1.0;
  uint64_t seed = 0;
};

class Sampler {
public:
  explicit Sampler(const SamplingParams &params)
      : params(params), rng(params.seed) {}
  /// Picks a token from one row of `vocab` logits.
  int64_t pick(const float *logits, int64_t vocab);

private:
  SamplingParams params;
  std::mt19937_64 rng;
};

} // namespace kiln

#endif // KILN_RUNTIME_SAMPLER_H
