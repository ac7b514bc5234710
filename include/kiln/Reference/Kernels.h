//===- Kernels.h - Reference math of the kiln ops ---------------*- C++ -*-===//
//
// The plain-loop definitions of every kiln op, in float or double. This is the
// oracle every other path is compared with: it is written to be obviously
// correct, never to be fast. All matrices are dense and row-major; the first
// dimension is the token dimension.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_REFERENCE_KERNELS_H
#define KILN_REFERENCE_KERNELS_H

#include <cstdint>
#include <vector>

namespace kiln::ref {

/// out[t] = table[tokens[t]] for a [vocab, width] table.
template <typename T>
void embedding(const T *table, int64_t width, const int64_t *tokens,
               int64_t numTokens, T *out);

/// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, per row of `cols`.
/// A null `weight` means no weight (QK norm).
template <typename T>
void rmsNorm(const T *x, int64_t rows, int64_t cols, const T *weight,
             double eps, T *out);

/// out = x W^T with W in [out, in] layout.
template <typename T>
void linear(const T *x, int64_t rows, int64_t in, const T *weight, int64_t out,
            T *result);

/// In place: rotate pairs (2m, 2m+1) of every head by positions[t] *
/// invFreq[m]. Angles and their sine/cosine are computed in double.
template <typename T>
void rope(T *x, int64_t rows, int64_t numHeads, int64_t headDim,
          const int64_t *positions, const std::vector<double> &invFreq);

/// silu(gate) * up, element-wise.
template <typename T>
void swiglu(const T *gate, const T *up, int64_t count, T *out);

/// The Llama 4 attention temperature 1 + attnScale * ln(1 + floor((p + 1) /
/// floorScale)).
double attentionTemperature(int64_t position, double attnScale,
                            int64_t floorScale);

struct AttentionParams {
  int64_t numHeads = 0;
  int64_t numKvHeads = 0;
  int64_t headDim = 0;
  double scale = 1.0;
  /// 0 for a plain causal mask, else the chunk size of a chunked mask.
  int64_t chunkSize = 0;
  /// Temperature tuning when floorScale > 0.
  double attnScale = 0.0;
  int64_t floorScale = 0;
};

/// True when key position `k` is visible from query position `q`.
bool attentionVisible(int64_t q, int64_t k, int64_t chunkSize);

/// Queries [numQueries, H*d] at `queryPositions` attend to keys/values
/// [numKeys, Hkv*d] at `keyPositions` (the cached tokens plus the new ones).
template <typename T>
void attention(const T *query, const int64_t *queryPositions,
               int64_t numQueries, const T *key, const T *value,
               const int64_t *keyPositions, int64_t numKeys,
               const AttentionParams &params, T *out);

struct MoeParams {
  int64_t hidden = 0;
  int64_t numExperts = 0;
  int64_t ffn = 0;
  int64_t topK = 1;
  /// 0 when there is no shared expert.
  int64_t sharedFfn = 0;
  /// Expert parallelism: gate_up and down hold experts
  /// [firstExpert, firstExpert + localExperts) of the router's numExperts
  /// (localExperts 0: all of them); the others add nothing.
  int64_t firstExpert = 0, localExperts = 0;
};

/// The Llama 4 MoE block: sigmoid top-k routing applied to the expert input,
/// gate_up [E, D, 2F] (gate first), down [E, F, D], plus the shared expert
/// (weights in [out, in] layout) when `sharedGate` is non-null.
template <typename T>
void moe(const T *x, int64_t rows, const T *router, const T *gateUp,
         const T *down, const T *sharedGate, const T *sharedUp,
         const T *sharedDown, const MoeParams &params, T *out);

/// Routing of a decomposed MoE block: top-k of the router logits per token
/// (ties to the lower expert), pairs sorted by expert (token order within an
/// expert). Fills `tokenIndices` and `gates` (rows * topK entries, sigmoid of
/// the logit) and `offsets` (localExperts + 1 entries, for experts
/// [firstExpert, firstExpert + localExperts); the pairs of other experts
/// follow as token 0 with gate 0).
template <typename T>
void moeRoute(const T *x, int64_t rows, int64_t hidden, const T *router,
              int64_t numExperts, int64_t topK, int64_t firstExpert,
              int64_t localExperts, std::vector<int64_t> &tokenIndices,
              std::vector<int64_t> &offsets, std::vector<T> &gates);

/// Grouped gate/up GEMM: for dispatched pair i of expert e,
/// out[i] = silu(z G_e) * (z U_e) with z = gates[i] * x[tokenIndices[i]].
template <typename T>
void expertGateUp(const T *x, int64_t hidden, const int64_t *tokenIndices,
                  const int64_t *offsets, int64_t numExperts, const T *gates,
                  const T *gateUp, int64_t ffn, T *out);

/// Grouped down GEMM and combine: out = addend, then for pair i of expert e,
/// out[tokenIndices[i]] += h[i] Dn_e.
template <typename T>
void expertDown(const T *h, int64_t ffn, const int64_t *tokenIndices,
                const int64_t *offsets, int64_t numExperts, const T *down,
                const T *addend, int64_t rows, int64_t hidden, T *out);

} // namespace kiln::ref

#endif // KILN_REFERENCE_KERNELS_H
