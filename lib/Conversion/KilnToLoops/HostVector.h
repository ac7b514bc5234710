//===- HostVector.h - Vector, tiled and parallel host kernels ---*- C++ -*-===//
//
// The fast forms of the host lowering's heavy operations: GEMMs as register
// tiles of vector accumulators, expert GEMMs over each expert's routed
// tokens, attention as a tiled online softmax. Every output element is
// computed by one fixed sequence of operations whatever the tile it falls
// in and however the partitioned loop is split across threads, so results
// do not depend on the row count of a step or on the thread count.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_LIB_CONVERSION_KILNTOLOOPS_HOSTVECTOR_H
#define KILN_LIB_CONVERSION_KILNTOLOOPS_HOSTVECTOR_H

#include "kiln/Conversion/Emitter.h"

#include <optional>

namespace mlir::kiln {

/// What the target CPU offers the generated code.
struct HostVectorShape {
  /// f32 lanes of one vector register (8: AVX2, 16: AVX-512).
  int64_t lanes = 8;
  /// Architectural vector registers (16: AVX2, 32: AVX-512).
  int64_t registers = 16;
  /// Partitioned loops become scf.parallel (threads) instead of scf.for.
  bool parallel = false;
};

/// A loop nest from 0 to `ubs` that is an scf.parallel when `parallel`
/// (each iteration must write only what no other iteration touches), else
/// plain scf.for loops.
void emitPartitionedLoop(Emitter &e, bool parallel, ArrayRef<Value> ubs,
                         function_ref<void(ValueRange)> body);

/// Loops over rows (`ubs[0]`), then the other bounds in order; with
/// `parallel` the rows go to threads. For row-wise operations (norms, RoPE,
/// elementwise epilogues), which write only their own row.
void emitRowLoops(Emitter &e, bool parallel, ArrayRef<Value> ubs,
                  function_ref<void(ValueRange)> body);

/// out[r, c] = sum_i x[r, i] * w[c, i] for r < rows; x is [rows, k] f32,
/// w is [n, k] (f32 or narrower floats), out is [rows, n]. Dot-form tiles of
/// MR rows x 4 weight rows over L2-sized column blocks, the blocks being the
/// unit of threading: each output element is summed in one fixed order
/// whatever the thread count.
void emitVectorLinear(Emitter &e, const HostVectorShape &shape, Value x,
                      Value w, Value out, Value rows, int64_t k, int64_t n);

/// The panel width (columns) in which the routed experts' weights are
/// stored for these vectors, when `n` (f for gate/up, d for down) is a
/// multiple of it; else 0 (plain [E, K, N]). Panel-major [E, N / p, K, p]
/// makes every column block's weights one contiguous run: read in place,
/// [E, K, N] has a 64-byte piece every 2 KiB, a cache line and often a TLB
/// entry each.
int64_t expertPanel(const HostVectorShape &shape, int64_t n);

/// The MoE gate/up GEMM over each expert's routed tokens (contiguous after
/// the router's sort): for pair i of expert x, z = gate[i] * input[token[i]],
/// out[i, j] = swiglu(z . w[x, :, j], z . w[x, :, f + j]); w is
/// [experts, d, 2f], in panels when expertPanel(shape, f) says so.
/// Outer-product tiles; column blocks are the unit of threading.
void emitVectorExpertGateUp(Emitter &e, const HostVectorShape &shape,
                            Value input, Value indices, Value offsets,
                            Value gates, Value w, Value out, int64_t experts,
                            int64_t d, int64_t f);

/// The MoE down GEMM: out = addend, then for each expert in order and each
/// of its pairs i, out[token[i], :] += hidden[i, :] . w[x]; w is
/// [experts, f, d], in panels when expertPanel(shape, d) says so.
/// Outer-product tiles; column blocks are the unit of threading, so no two
/// threads add into one element. Null `indices` and `addend`: a row per pair
/// from zero (expert_down_pairs).
void emitVectorExpertDown(Emitter &e, const HostVectorShape &shape,
                          Value hidden, Value indices, Value offsets, Value w,
                          Value addend, Value out, Value rows, int64_t experts,
                          int64_t f, int64_t d);

/// Causal (optionally chunked) attention of `rows` queries over `keys` keys.
struct AttentionShape {
  int64_t heads, kvHeads, headDim, chunk;
  double scale;
  std::optional<int64_t> floorScale;
  double attnScale;
};
/// Attention as a tiled online softmax: (query token, KV head) units on the
/// threads, each with its group of query heads; keys in blocks whose
/// visible keys are listed first (a block with none is skipped), scored a
/// few keys at a time against the whole group, folded into each head's
/// running max and sum, and their value rows summed into register tiles.
void emitVectorAttention(Emitter &e, const HostVectorShape &shape, Value q,
                         Value k, Value v, Value qPositions, Value kPositions,
                         Value out, Value rows, const AttentionShape &a,
                         function_ref<Value(Value)> temperature,
                         function_ref<Value(Value, Value)> visible);

} // namespace mlir::kiln

#endif // KILN_LIB_CONVERSION_KILNTOLOOPS_HOSTVECTOR_H
