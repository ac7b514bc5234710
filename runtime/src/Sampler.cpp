//===- Sampler.cpp - Choosing the next token ------------------------------===//
//
// Tokens are ranked by logit (ties to the lower id). top-k keeps the first k;
// top-p then keeps the shortest prefix of that ranking whose share of the
// kept mass reaches top_p, and the token drawn is the first of the prefix
// at which the running weight exceeds a uniform draw over the prefix's mass
// (weights exp(logit / temperature)). The vocabulary (202k for Llama 4) is
// never sorted: both cuts are found by partitioning around pivots, keeping
// the side where the running weight crosses its target, in expected linear
// time.
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/Sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

using namespace kiln;

namespace {

/// Reorders order[0, size) so that order[0, m) are the m best-ranked tokens
/// and order[m - 1] is the m-th, for the smallest m whose running weight
/// (in rank order) satisfies `reached`; m = size when none does.
template <typename RanksBefore, typename Weight, typename Reached>
int64_t rankedCut(std::vector<int64_t> &order, int64_t size,
                  RanksBefore ranksBefore, Weight weight, Reached reached) {
  int64_t lo = 0, hi = size;
  double before = 0; // weight of order[0, lo)
  while (hi - lo > 64) {
    auto at = [&](int64_t i) { return order[i]; };
    int64_t a = at(lo), b = at(lo + (hi - lo) / 2), c = at(hi - 1);
    // Median of three by rank.
    if (ranksBefore(b, a))
      std::swap(a, b);
    if (ranksBefore(c, b))
      std::swap(b, c);
    if (ranksBefore(b, a))
      std::swap(a, b);
    int64_t pivot = b;
    auto mid = std::partition(
        order.begin() + lo, order.begin() + hi,
        [&](int64_t token) { return ranksBefore(token, pivot); });
    int64_t p = mid - order.begin();
    double better = 0;
    for (int64_t i = lo; i < p; ++i)
      better += weight(order[i]);
    if (reached(before + better)) {
      hi = p;
      continue;
    }
    // The pivot leads the rest: put it at p.
    std::iter_swap(mid, std::find(mid, order.begin() + hi, pivot));
    before += better + weight(pivot);
    if (reached(before))
      return p + 1;
    lo = p + 1;
  }
  std::sort(order.begin() + lo, order.begin() + hi, ranksBefore);
  for (int64_t i = lo; i < hi; ++i) {
    before += weight(order[i]);
    if (reached(before))
      return i + 1;
  }
  return size;
}

} // namespace

int64_t Sampler::pickWith(const SamplingParams &params, const float *raw,
                          int64_t vocab, double u) {
  // NaN ranks last and weighs nothing, as on the GPU.
  auto logit = [&](int64_t token) {
    return std::isnan(raw[token]) ? -INFINITY : raw[token];
  };
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logit(i) > logit(best))
      best = i;
  // Greedy; also when nothing has a finite logit to weigh.
  if (params.temperature <= 0.0 || logit(best) == -INFINITY)
    return best;
  auto ranksBefore = [&](int64_t a, int64_t b) {
    float la = logit(a), lb = logit(b);
    return la > lb || (la == lb && a < b);
  };
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = params.topK > 0 ? std::min(params.topK, vocab) : vocab;
  if (keep < vocab)
    std::nth_element(order.begin(), order.begin() + keep, order.end(),
                     ranksBefore);
  double top = logit(best) / params.temperature;
  auto weight = [&](int64_t token) {
    return std::exp(logit(token) / params.temperature - top);
  };
  double total = 0;
  for (int64_t i = 0; i < keep; ++i)
    total += weight(order[i]);

  int64_t n = keep;
  if (params.topP < 1.0)
    n = rankedCut(order, keep, ranksBefore, weight,
                  [&](double mass) { return mass / total >= params.topP; });
  double kept = 0;
  for (int64_t i = 0; i < n; ++i)
    kept += weight(order[i]);
  // As std::uniform_real_distribution(0, kept) draws from the same u.
  double r = u * kept;
  int64_t m = rankedCut(order, n, ranksBefore, weight,
                        [&](double running) { return r < running; });
  return order[m - 1];
}
