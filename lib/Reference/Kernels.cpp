//===- Kernels.cpp - Reference math of the kiln ops
//------------------------===//
//
// Straight transcriptions of docs/dialect.md. Accumulations run in the
// evaluation type T; transcendental functions of positions (RoPE angles,
// attention temperature) are computed in double, then rounded to T.
//
//===----------------------------------------------------------------------===//

#include "kiln/Reference/Kernels.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numeric>

namespace kiln::ref {

template <typename T>
void embedding(const T *table, int64_t width, const int64_t *tokens,
               int64_t numTokens, T *out) {
  for (int64_t t = 0; t < numTokens; ++t)
    std::copy(table + tokens[t] * width, table + (tokens[t] + 1) * width,
              out + t * width);
}

template <typename T>
void rmsNorm(const T *x, int64_t rows, int64_t cols, const T *weight,
             double eps, T *out) {
  for (int64_t r = 0; r < rows; ++r) {
    const T *row = x + r * cols;
    T sumSq = 0;
    for (int64_t c = 0; c < cols; ++c)
      sumSq += row[c] * row[c];
    T inv = T(1) / std::sqrt(sumSq / T(cols) + T(eps));
    for (int64_t c = 0; c < cols; ++c)
      out[r * cols + c] = row[c] * inv * (weight ? weight[c] : T(1));
  }
}

template <typename T>
void linear(const T *x, int64_t rows, int64_t in, const T *weight, int64_t out,
            T *result) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      T acc = 0;
      for (int64_t i = 0; i < in; ++i)
        acc += x[r * in + i] * weight[o * in + i];
      result[r * out + o] = acc;
    }
}

template <typename T>
void rope(T *x, int64_t rows, int64_t numHeads, int64_t headDim,
          const int64_t *positions, const std::vector<double> &invFreq) {
  int64_t pairs = headDim / 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t m = 0; m < pairs; ++m) {
      double angle = static_cast<double>(positions[r]) * invFreq[m];
      T c = static_cast<T>(std::cos(angle));
      T s = static_cast<T>(std::sin(angle));
      for (int64_t h = 0; h < numHeads; ++h) {
        T *pair = x + r * numHeads * headDim + h * headDim + 2 * m;
        T x0 = pair[0], x1 = pair[1];
        pair[0] = x0 * c - x1 * s;
        pair[1] = x0 * s + x1 * c;
      }
    }
}

template <typename T>
void swiglu(const T *gate, const T *up, int64_t count, T *out) {
  for (int64_t i = 0; i < count; ++i)
    out[i] = gate[i] / (T(1) + std::exp(-gate[i])) * up[i];
}

double attentionTemperature(int64_t position, double attnScale,
                            int64_t floorScale) {
  // floor((p + 1) / floorScale) on integers: exact for any position.
  int64_t steps = (position + 1) / floorScale;
  return 1.0 + attnScale * std::log(1.0 + static_cast<double>(steps));
}

bool attentionVisible(int64_t q, int64_t k, int64_t chunkSize) {
  if (k > q)
    return false;
  // Chunks are fixed blocks aligned at position 0 (not a sliding window).
  return chunkSize == 0 || k / chunkSize == q / chunkSize;
}

template <typename T>
void attention(const T *query, const int64_t *queryPositions,
               int64_t numQueries, const T *key, const T *value,
               const int64_t *keyPositions, int64_t numKeys,
               const AttentionParams &p, T *out) {
  int64_t d = p.headDim;
  int64_t group = p.numHeads / p.numKvHeads;
  int64_t qStride = p.numHeads * d, kvStride = p.numKvHeads * d;
  std::vector<T> scores(numKeys), q(d);
  std::vector<int64_t> visible;
  visible.reserve(numKeys);
  for (int64_t t = 0; t < numQueries; ++t) {
    int64_t qPos = queryPositions[t];
    visible.clear();
    for (int64_t s = 0; s < numKeys; ++s)
      if (attentionVisible(qPos, keyPositions[s], p.chunkSize))
        visible.push_back(s);
    T temperature = p.floorScale > 0 ? static_cast<T>(attentionTemperature(
                                           qPos, p.attnScale, p.floorScale))
                                     : T(1);
    for (int64_t h = 0; h < p.numHeads; ++h) {
      int64_t kvHead = h / group;
      T *o = out + t * qStride + h * d;
      std::fill(o, o + d, T(0));
      if (visible.empty())
        continue; // no visible key: the row is zero (never for self-attention)
      for (int64_t i = 0; i < d; ++i)
        q[i] = query[t * qStride + h * d + i] * temperature;
      T maxScore = -INFINITY;
      for (size_t j = 0; j < visible.size(); ++j) {
        const T *k = key + visible[j] * kvStride + kvHead * d;
        T dot = 0;
        for (int64_t i = 0; i < d; ++i)
          dot += q[i] * k[i];
        scores[j] = dot * T(p.scale);
        maxScore = std::max(maxScore, scores[j]);
      }
      T sum = 0;
      for (size_t j = 0; j < visible.size(); ++j) {
        scores[j] = std::exp(scores[j] - maxScore);
        sum += scores[j];
      }
      for (size_t j = 0; j < visible.size(); ++j) {
        const T *v = value + visible[j] * kvStride + kvHead * d;
        T weight = scores[j] / sum;
        for (int64_t i = 0; i < d; ++i)
          o[i] += weight * v[i];
      }
    }
  }
}

template <typename T>
void moe(const T *x, int64_t rows, const T *router, const T *gateUp,
         const T *down, const T *sharedGate, const T *sharedUp,
         const T *sharedDown, const MoeParams &p, T *out) {
  int64_t dModel = p.hidden, f = p.ffn, e = p.numExperts;
  int64_t local = p.localExperts ? p.localExperts : e;
  std::vector<T> logits(e), z(dModel), g(f), u(f), h(f);
  std::vector<int64_t> order(e);
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * dModel;
    T *yr = out + r * dModel;
    std::fill(yr, yr + dModel, T(0));
    linear(xr, 1, dModel, router, e, logits.data());
    // Top-k on the raw logits; ties go to the lower expert index.
    std::iota(order.begin(), order.end(), 0);
    // NaN logits rank last so that the order stays a strict weak ordering.
    auto rank = [&](int64_t i) {
      return std::isnan(logits[i]) ? T(-INFINITY) : logits[i];
    };
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return rank(a) > rank(b) || (rank(a) == rank(b) && a < b);
    });
    for (int64_t k = 0; k < p.topK; ++k) {
      int64_t ex = order[k] - p.firstExpert;
      if (ex < 0 || ex >= local)
        continue; // another rank's expert
      // The sigmoid gate scales the expert's input, not its output.
      T gate = T(1) / (T(1) + std::exp(-logits[order[k]]));
      for (int64_t i = 0; i < dModel; ++i)
        z[i] = gate * xr[i];
      // gate_up[ex] is [D, 2F] in [in, out] layout: gate columns first.
      const T *gu = gateUp + ex * dModel * 2 * f;
      for (int64_t j = 0; j < f; ++j) {
        T accG = 0, accU = 0;
        for (int64_t i = 0; i < dModel; ++i) {
          accG += z[i] * gu[i * 2 * f + j];
          accU += z[i] * gu[i * 2 * f + f + j];
        }
        g[j] = accG;
        u[j] = accU;
      }
      swiglu(g.data(), u.data(), f, h.data());
      const T *dn = down + ex * f * dModel; // [F, D], [in, out]
      for (int64_t i = 0; i < dModel; ++i) {
        T acc = 0;
        for (int64_t j = 0; j < f; ++j)
          acc += h[j] * dn[j * dModel + i];
        yr[i] += acc;
      }
    }
    if (sharedGate) {
      int64_t sf = p.sharedFfn;
      std::vector<T> sg(sf), su(sf), sh(sf), sy(dModel);
      linear(xr, 1, dModel, sharedGate, sf, sg.data());
      linear(xr, 1, dModel, sharedUp, sf, su.data());
      swiglu(sg.data(), su.data(), sf, sh.data());
      linear(sh.data(), 1, sf, sharedDown, dModel, sy.data());
      for (int64_t i = 0; i < dModel; ++i)
        yr[i] += sy[i];
    }
  }
}

template <typename T>
void moeRoute(const T *x, int64_t rows, int64_t hidden, const T *router,
              int64_t numExperts, int64_t topK, int64_t firstExpert,
              int64_t localExperts, std::vector<int64_t> &tokenIndices,
              std::vector<int64_t> &offsets, std::vector<T> &gates) {
  struct Pair {
    int64_t expert, token, rank;
    T gate;
  };
  std::vector<Pair> pairs;
  std::vector<T> logits(numExperts);
  std::vector<int64_t> order(numExperts);
  for (int64_t t = 0; t < rows; ++t) {
    linear(x + t * hidden, 1, hidden, router, numExperts, logits.data());
    std::iota(order.begin(), order.end(), 0);
    auto rank = [&](int64_t i) {
      return std::isnan(logits[i]) ? T(-INFINITY) : logits[i];
    };
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return rank(a) > rank(b) || (rank(a) == rank(b) && a < b);
    });
    for (int64_t k = 0; k < topK; ++k)
      pairs.push_back(
          {order[k], t, k, T(1) / (T(1) + std::exp(-logits[order[k]]))});
  }
  // Pairs of other ranks' experts last (as token 0, gate 0); the rank's by
  // expert, then token, then selection rank: a total order.
  auto held = [&](const Pair &p) {
    return p.expert >= firstExpert && p.expert < firstExpert + localExperts;
  };
  for (Pair &p : pairs)
    if (!held(p))
      p = {numExperts, 0, 0, T(0)};
  std::sort(pairs.begin(), pairs.end(), [](const Pair &a, const Pair &b) {
    if (a.expert != b.expert)
      return a.expert < b.expert;
    return a.token != b.token ? a.token < b.token : a.rank < b.rank;
  });
  tokenIndices.resize(pairs.size());
  gates.resize(pairs.size());
  offsets.assign(localExperts + 1, 0);
  for (size_t i = 0; i < pairs.size(); ++i) {
    tokenIndices[i] = pairs[i].token;
    gates[i] = pairs[i].gate;
    if (pairs[i].expert < numExperts)
      ++offsets[pairs[i].expert - firstExpert + 1];
  }
  for (int64_t e = 0; e < localExperts; ++e)
    offsets[e + 1] += offsets[e];
}

template <typename T>
void expertGateUp(const T *x, int64_t hidden, const int64_t *tokenIndices,
                  const int64_t *offsets, int64_t numExperts, const T *gates,
                  const T *gateUp, int64_t ffn, T *out) {
  std::vector<T> z(hidden), g(ffn), u(ffn);
  for (int64_t e = 0; e < numExperts; ++e) {
    const T *w = gateUp + e * hidden * 2 * ffn; // [D, 2F], gate columns first
    for (int64_t i = offsets[e]; i < offsets[e + 1]; ++i) {
      for (int64_t c = 0; c < hidden; ++c)
        z[c] = gates[i] * x[tokenIndices[i] * hidden + c];
      std::fill(g.begin(), g.end(), T(0));
      std::fill(u.begin(), u.end(), T(0));
      for (int64_t c = 0; c < hidden; ++c)
        for (int64_t j = 0; j < ffn; ++j) {
          g[j] += z[c] * w[c * 2 * ffn + j];
          u[j] += z[c] * w[c * 2 * ffn + ffn + j];
        }
      swiglu(g.data(), u.data(), ffn, out + i * ffn);
    }
  }
}

template <typename T>
void expertDown(const T *h, int64_t ffn, const int64_t *tokenIndices,
                const int64_t *offsets, int64_t numExperts, const T *down,
                const T *addend, int64_t rows, int64_t hidden, T *out) {
  std::copy(addend, addend + rows * hidden, out);
  for (int64_t e = 0; e < numExperts; ++e) {
    const T *w = down + e * ffn * hidden; // [F, D], [in, out]
    for (int64_t i = offsets[e]; i < offsets[e + 1]; ++i) {
      T *y = out + tokenIndices[i] * hidden;
      for (int64_t c = 0; c < hidden; ++c) {
        T acc = 0;
        for (int64_t j = 0; j < ffn; ++j)
          acc += h[i * ffn + j] * w[j * hidden + c];
        y[c] += acc;
      }
    }
  }
}

#define KILN_INSTANTIATE(T)                                                    \
  template void embedding<T>(const T *, int64_t, const int64_t *, int64_t,     \
                             T *);                                             \
  template void rmsNorm<T>(const T *, int64_t, int64_t, const T *, double,     \
                           T *);                                               \
  template void linear<T>(const T *, int64_t, int64_t, const T *, int64_t,     \
                          T *);                                                \
  template void rope<T>(T *, int64_t, int64_t, int64_t, const int64_t *,       \
                        const std::vector<double> &);                          \
  template void swiglu<T>(const T *, const T *, int64_t, T *);                 \
  template void attention<T>(const T *, const int64_t *, int64_t, const T *,   \
                             const T *, const int64_t *, int64_t,              \
                             const AttentionParams &, T *);                    \
  template void moe<T>(const T *, int64_t, const T *, const T *, const T *,    \
                       const T *, const T *, const T *, const MoeParams &,     \
                       T *);                                                   \
  template void moeRoute<T>(const T *, int64_t, int64_t, const T *, int64_t,   \
                            int64_t, int64_t, int64_t, std::vector<int64_t> &, \
                            std::vector<int64_t> &, std::vector<T> &);         \
  template void expertGateUp<T>(const T *, int64_t, const int64_t *,           \
                                const int64_t *, int64_t, const T *,           \
                                const T *, int64_t, T *);                      \
  template void expertDown<T>(const T *, int64_t, const int64_t *,             \
                              const int64_t *, int64_t, const T *, const T *,  \
                              int64_t, int64_t, T *);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)
#undef KILN_INSTANTIATE

} // namespace kiln::ref
