//===- Sampler.h - Choosing the next token ----------------------*- C++ -*-===//
//
// Greedy decoding, or sampling with temperature, top-k and top-p (nucleus)
// from a seeded generator, so that a sampled generation can be repeated.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_SAMPLER_H
#define KILN_RUNTIME_SAMPLER_H

#include <cstdint>
#include <limits>
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
  int64_t pick(const float *logits, int64_t vocab) {
    if (params.temperature <= 0.0)
      return pickWith(params, logits, vocab, 0.0);
    return pickWith(params, logits, vocab, nextUniform());
  }

  /// The rule itself, for temperature > 0: the token is the first of the
  /// kept prefix (in rank order) whose running weight exceeds `u` (in
  /// [0, 1)) times the prefix's mass. With temperature 0, the argmax.
  static int64_t pickWith(const SamplingParams &params, const float *logits,
                          int64_t vocab, double u);
  /// The draw pick() would use next (one per sampled token).
  double nextUniform() {
    return std::generate_canonical<double, std::numeric_limits<double>::digits>(
        rng);
  }
  const SamplingParams &parameters() const { return params; }

private:
  SamplingParams params;
  std::mt19937_64 rng;
};

} // namespace kiln

#endif // KILN_RUNTIME_SAMPLER_H
