//===- ParallelPlan.h - Choosing a multi-GPU layout -------------*- C++ -*-===//
//
// `kilnc --plan --gpus G`: for every TP x EP x PP x DP split of G GPUs, the
// memory per GPU (weights, KV cache at the context, activations) and the
// estimated prefill and decode step times, from a roofline per GPU plus a
// latency/bandwidth model of NVLink (inside an 8-GPU node) and InfiniBand
// (across nodes); then the layout it picks and why. The model is read off
// the imported (unsharded) graph: weight bytes by kind, attention and MoE
// shapes. Every figure it assumes is printed with its source.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_ANALYSIS_PARALLELPLAN_H
#define KILN_ANALYSIS_PARALLELPLAN_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"

#include <optional>
#include <vector>

namespace mlir::kiln {

/// What the planner needs to know of a model, in bytes of its stored
/// weights (the checkpoint's types) and counts.
struct ModelShape {
  int64_t layers = 0, hidden = 0, heads = 0, kvHeads = 0, headDim = 0;
  int64_t experts = 0, topK = 0, moeLayers = 0;
  /// Layers with chunked attention and their chunk; the others see the
  /// whole context.
  int64_t chunkedLayers = 0, chunk = 0;
  /// Attention, dense FFN, shared experts, router, norms.
  double denseBytes = 0;
  /// Embedding and LM head (split by vocabulary under TP).
  double vocabBytes = 0;
  /// All routed experts of all MoE layers.
  double expertBytes = 0;
  int64_t vocab = 0;
  /// The widest FFN intermediate (dense, shared or routed expert).
  int64_t intermediate = 0;
  /// Bytes per stored weight element (2 for bf16 checkpoints).
  int64_t weightElementBytes = 2;
};

/// Reads the shape of the public function of an imported module.
FailureOr<ModelShape> modelShapeOf(ModuleOp module);

struct PlanOptions {
  int64_t gpus = 8;
  /// Context each sequence is sized for (KV cache) and the prefill length
  /// timed (at most one 8192-token chunk).
  int64_t context = 8192;
  /// Sequences decoded together by each model replica.
  int64_t batch = 1;
};

struct Layout {
  int64_t tp = 1, ep = 1, pp = 1, dp = 1;
};

struct LayoutEstimate {
  Layout layout;
  double weightBytes = 0, kvBytes = 0, activationBytes = 0;
  double prefillSeconds = 0, decodeSeconds = 0;
  /// Of the decode step: time in collectives and transfers.
  double decodeCommSeconds = 0;
  bool fits = false;
  double totalBytes() const { return weightBytes + kvBytes + activationBytes; }
};

/// Seconds for an all-reduce of `bytes` over `ranks` GPUs of one node, by
/// the planner's NVLink model.
double allReduceSeconds(int64_t ranks, double bytes);

/// Seconds to hand `bytes` from one pipeline stage to the next, by the
/// planner's model: NVLink when the `ranks` of the whole pipeline fit one
/// node, InfiniBand otherwise.
double stageTransferSeconds(int64_t ranks, double bytes);

/// Seconds for an all-gather over `ranks` GPUs whose gathered result is
/// `bytes` (or a reduce-scatter whose input is), by the planner's model:
/// half an all-reduce's traffic, on NVLink when the job's `span` GPUs fit
/// one node and InfiniBand otherwise.
double gatherSeconds(int64_t ranks, double bytes, int64_t span);

/// The most rows per rank for which gathering `ranks` partial sums of
/// `rowBytes` a row and summing them in the reader (kiln.gather_partials)
/// is no slower than an all-reduce followed by a reader of the sum, by the
/// planner's NVLink and HBM model; none when the gather is never slower
/// (two ranks: both move one partial per rank).
std::optional<int64_t> partialGatherMaxRows(int64_t ranks, double rowBytes);

/// Seconds for a kiln.gather_partials of `bytes` a rank at `ranks` ranks
/// plus the reads of the extra partials by its reader.
double partialGatherSeconds(int64_t ranks, double bytes);

/// Bytes a rank moves per MoE block for `tokens` tokens per replica of
/// `rowBytes` rows, with `replicas` attention replicas over `ranks` ranks
/// (a pipeline stage's) and the experts in `groups` groups, top-`topK`
/// routing: the all-gather + reduce-scatter exchange (a rank receives the
/// other replicas' rows, then the reduce-scatter's and the replica's
/// shares) and the all-to-all (a rank's piece of its replica's rows, k
/// pairs a row, to the R / G ranks of the expert's group and back).
struct ReplicaExchangeBytes {
  double gatherScatter = 0, allToAll = 0;
};
ReplicaExchangeBytes replicaExchangeBytes(int64_t replicas, int64_t ranks,
                                          int64_t groups, int64_t topK,
                                          double rowBytes, int64_t tokens);

/// Seconds for a MoE block's all-to-all exchange moving `bytes` per rank
/// (dispatch and combine together) over `ranks` GPUs: each way a count
/// exchange and a data exchange, one latency each, and half the bytes over
/// NVLink (InfiniBand beyond a node).
double allToAllSeconds(int64_t ranks, double bytes);

/// Every layout of exactly `options.gpus` GPUs, estimated.
std::vector<LayoutEstimate> estimateLayouts(const ModelShape &model,
                                            const PlanOptions &options);

/// The estimate of one layout.
LayoutEstimate estimateLayout(const ModelShape &model,
                              const PlanOptions &options, Layout layout);

/// Prints the assumptions, the best candidates, the choice and why; when
/// nothing fits, the fewest GPUs that would. Fails when `options` are out
/// of range.
LogicalResult writeParallelPlan(const ModelShape &model,
                                const PlanOptions &options,
                                llvm::raw_ostream &os);

} // namespace mlir::kiln

#endif // KILN_ANALYSIS_PARALLELPLAN_H
