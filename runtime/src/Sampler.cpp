//===- Sampler.cpp - Choosing the next token
//-------------------------------===//

#include "kiln/runtime/Sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

using namespace kiln;

int64_t Sampler::pick(const float *logits, int64_t vocab) {
  if (params.temperature <= 0.0)
    return std::max_element(logits, logits + vocab) - logits;
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  int64_t keep = params.topK > 0 ? std::min(params.topK, vocab) : vocab;
  std::vector<double> weights(keep);
  double top = logits[order[0]] / params.temperature, total = 0;
  for (int64_t i = 0; i < keep; ++i)
    total += weights[i] = std::exp(logits[order[i]] / params.temperature - top);
  // Nucleus: the smallest prefix whose probability mass reaches top_p.
  double mass = 0;
  int64_t n = 0;
  while (n < keep) {
    mass += weights[n++] / total;
    if (mass >= params.topP)
      break;
  }
  double kept = std::accumulate(weights.begin(), weights.begin() + n, 0.0);
  double r = std::uniform_real_distribution<double>(0.0, kept)(rng);
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc += weights[i];
    if (r < acc)
      return order[i];
  }
  return order[n - 1];
}
