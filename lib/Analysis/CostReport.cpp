//===- CostReport.cpp - Kernel costs, rooflines and the memory plan
//--------===//
//
// Counting rules (multiply-add = 2 FLOPs; norms, RoPE, softmax and
// activations, all O(T * D), are not counted):
//   linear          2 T N K
//   attention       4 H d per visible (query, key) pair
//   moe             router 2 T E D; routed 6 k T D F; shared 6 T D F'
//   moe_route       2 T E D
//   expert_gate_up  4 R D F, expert_down 2 R F D (R = k T dispatched rows)
// HBM bytes of a launch: every input and output once. Activations and KV
// entries are counted at `activationBytes` / `kvBytes` (bf16 on the GPU);
// weights at their storage type. Only the gathered rows of an embedding table
// and the experts a step can reach (min(E, k T)) are counted. An attention
// launch also reads the cached keys/values its queries can see and writes the
// new ones. Roofline time = max(FLOPs / peak, bytes / bandwidth).
// Per-pair tensors of a decomposed MoE ([R, F], indices, gates) are counted
// as k rows per token, k the largest top_k of the module (1 for Llama 4).
//
//===----------------------------------------------------------------------===//

#include "kiln/Analysis/CostReport.h"
#include "dialects/kiln/KilnOps.h"
#include "kiln/Analysis/MemoryPlan.h"
#include "kiln/Analysis/ParallelPlan.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/FormatVariadic.h"

#include <algorithm>

using namespace mlir;
using namespace mlir::kiln;

namespace {

struct Device {
  const char *name;
  double flopsPerSecond; // dense BF16 tensor-core peak
  double bytesPerSecond; // HBM bandwidth
};

// NVIDIA datasheets, SXM parts: H100 989.4 dense BF16 TFLOP/s and 3.35 TB/s
// HBM3; H200 the same compute and 4.8 TB/s HBM3e.
constexpr Device kDevices[] = {{"H100", 989.4e12, 3.35e12},
                               {"H200", 989.4e12, 4.8e12}};

struct Step {
  const char *name;
  int64_t tokens; // new tokens in the step
  int64_t start;  // position of the first new token
};

struct Cost {
  double flops = 0;
  double bytes = 0;
  Cost &operator+=(const Cost &o) {
    flops += o.flops;
    bytes += o.bytes;
    return *this;
  }
};

/// Storage bytes of one element of a weight or index tensor.
int64_t elementBytes(Type type) {
  if (type.isBF16() || type.isF16())
    return 2;
  if (type.isInteger(64) || type.isF64())
    return 8;
  return 4;
}

/// The [E, in, out] weights of a grouped expert GEMM, or null.
Value expertWeights(Operation *op) {
  if (auto g = dyn_cast<ExpertGateUpOp>(op))
    return g.getGateUp();
  if (auto d = dyn_cast<ExpertDownOp>(op))
    return d.getDown();
  if (auto d = dyn_cast<ExpertDownPairsOp>(op))
    return d.getDown();
  return nullptr;
}

/// Chunk size of a chunked attention, 0 for a causal one.
int64_t chunkOf(AttentionOp a) {
  return a.getMask() == MaskKind::Chunked ? a.getChunkSize().value_or(0) : 0;
}

/// Keys visible to a query at position p.
int64_t visibleKeys(int64_t p, int64_t chunk) {
  return chunk > 0 ? p % chunk + 1 : p + 1;
}

class Reporter {
public:
  Reporter(ModuleOp module, func::FuncOp graph, const ReportOptions &options,
           llvm::raw_ostream &os)
      : module(module), graph(graph), options(options), os(os) {
    module.walk([&](MoeRouteOp r) {
      routedPerToken = std::max<int64_t>(routedPerToken, r.getTopK());
      if (std::optional<uint64_t> groups = r.getExpertGroups())
        expertShare = 1.0 / static_cast<double>(*groups);
    });
    // With data-parallel attention, what a kiln.all_gather starts and its
    // kiln.reduce_scatter ends holds every replica's rows: `replicas` rows
    // per token of one replica (replicas assumed equally loaded).
    if (auto r = module->getAttrOfType<IntegerAttr>(
            KilnDialect::getAttentionReplicasAttrName()))
      replicas = r.getInt();
    // With the all-to-all exchange a rank runs its group's experts on the
    // pairs every replica sends it: D / G of a replica's pairs on average.
    module.walk([&](TokenDispatchOp d) {
      expertShare = static_cast<double>(replicas) /
                    static_cast<double>(d.getExpertGroups());
    });
    for (Operation &op : graph.getBody().front()) {
      if (auto gather = dyn_cast<AllGatherOp>(op)) {
        gathered.insert(gather.getResult());
      } else if (auto call = dyn_cast<func::CallOp>(op);
                 call && rowScale(call) > 1) {
        gathered.insert(call.getResults().begin(), call.getResults().end());
      }
    }
  }

  /// Rows per token of a replica that `call` works on.
  int64_t rowScale(func::CallOp call) const {
    return llvm::any_of(call.getOperands(),
                        [&](Value v) { return gathered.contains(v); })
               ? replicas
               : 1;
  }

  /// Bytes of one tensor crossing HBM in a step of `tokens` tokens.
  double tensorBytes(Type type, int64_t tokens) const {
    auto t = cast<RankedTensorType>(type);
    if (t.getRank() > 0 && ShapedType::isDynamic(t.getDimSize(0))) {
      int64_t perToken = 1;
      for (int64_t d : t.getShape().drop_front())
        perToken *= d;
      int64_t bytes = isa<IntegerType>(t.getElementType())
                          ? elementBytes(t.getElementType())
                          : options.activationBytes;
      return static_cast<double>(tokens) * perToken * bytes;
    }
    return static_cast<double>(t.getNumElements()) *
           elementBytes(t.getElementType());
  }

  /// KV traffic of one attention launch: the cached keys/values visible to
  /// the step, read once, and the step's own, written once.
  double kvBytes(AttentionOp a, const Step &step) const {
    int64_t chunk = chunkOf(a);
    int64_t cached = chunk > 0 ? step.start % chunk : step.start;
    auto k = cast<RankedTensorType>(a.getKey().getType());
    return 2.0 * k.getDimSize(1) * options.kvBytes * (cached + step.tokens);
  }

  /// The fraction of each weight argument a step can reach: the gathered
  /// rows of an embedding table, the experts a step can route to. Weights
  /// not listed are read whole.
  llvm::DenseMap<Value, double> argFractions(func::FuncOp kernel,
                                             int64_t tokens) const {
    llvm::DenseMap<Value, double> fractions;
    auto reach = [&](Value weights, double experts, double rows) {
      if (isa<BlockArgument>(weights))
        fractions[weights] = std::min(experts, rows) / experts;
    };
    for (Operation &op : kernel.getBody().front()) {
      if (auto e = dyn_cast<EmbeddingOp>(op)) {
        auto table = cast<RankedTensorType>(e.getTable().getType());
        reach(e.getTable(), table.getDimSize(0), tokens);
      } else if (Value weights = expertWeights(&op)) {
        reach(weights, cast<RankedTensorType>(weights.getType()).getDimSize(0),
              static_cast<double>(routedPerToken) * tokens * expertShare);
      } else if (auto m = dyn_cast<MoeOp>(op)) {
        double e =
            cast<RankedTensorType>(m.getRouter().getType()).getDimSize(0);
        double share = m.getExpertGroups() ? 1.0 / *m.getExpertGroups() : 1.0;
        for (Value w : {m.getGateUp(), m.getDown()})
          reach(w, e * share,
                static_cast<double>(m.getTopK()) * tokens * share);
      }
    }
    return fractions;
  }

  /// Cost of one launch of `kernel` in `step`.
  Cost kernelCost(func::FuncOp kernel, const Step &step) const {
    Cost cost;
    int64_t T = step.tokens;
    Block &body = kernel.getBody().front();
    for (Operation &op : body) {
      if (auto linear = dyn_cast<LinearOp>(op)) {
        auto w = cast<RankedTensorType>(linear.getWeight().getType());
        cost.flops += 2.0 * T * w.getDimSize(0) * w.getDimSize(1);
      } else if (auto attention = dyn_cast<AttentionOp>(op)) {
        int64_t chunk = chunkOf(attention);
        auto q = cast<RankedTensorType>(attention.getQuery().getType());
        double pairs = 0;
        for (int64_t p = step.start; p < step.start + T; ++p)
          pairs += visibleKeys(p, chunk);
        cost.flops += 4.0 * q.getDimSize(1) * pairs; // 4 H d per pair
        cost.bytes += kvBytes(attention, step);
      } else if (auto moe = dyn_cast<MoeOp>(op)) {
        auto router = cast<RankedTensorType>(moe.getRouter().getType());
        auto down = cast<RankedTensorType>(moe.getDown().getType());
        int64_t e = router.getDimSize(0), d = router.getDimSize(1);
        int64_t f = down.getDimSize(1), k = moe.getTopK();
        double share =
            moe.getExpertGroups() ? 1.0 / *moe.getExpertGroups() : 1.0;
        cost.flops += 2.0 * T * e * d + 6.0 * k * T * d * f * share;
        if (Value sg = moe.getSharedGate())
          cost.flops +=
              6.0 * T * d * cast<RankedTensorType>(sg.getType()).getDimSize(0);
      } else if (auto route = dyn_cast<MoeRouteOp>(op)) {
        auto router = cast<RankedTensorType>(route.getRouter().getType());
        cost.flops += 2.0 * T * router.getDimSize(0) * router.getDimSize(1);
      } else if (Value weights = expertWeights(&op)) {
        auto w = cast<RankedTensorType>(weights.getType());
        // Per dispatched row: 2 * (weights of one expert) FLOPs.
        cost.flops += 2.0 * routedPerToken * T * expertShare * w.getDimSize(1) *
                      w.getDimSize(2);
      }
    }
    llvm::DenseMap<Value, double> fractions = argFractions(kernel, T);
    for (BlockArgument arg : body.getArguments())
      cost.bytes +=
          fractions.lookup_or(arg, 1.0) * tensorBytes(arg.getType(), T);
    for (Type result : kernel.getResultTypes())
      cost.bytes += tensorBytes(result, T);
    return cost;
  }

  std::string shapeSummary(func::FuncOp kernel, int64_t tokens) const {
    std::string s;
    llvm::raw_string_ostream os(s);
    for (Operation &op : kernel.getBody().front()) {
      if (auto linear = dyn_cast<LinearOp>(op)) {
        auto w = cast<RankedTensorType>(linear.getWeight().getType());
        os << "M=" << tokens << " N=" << w.getDimSize(0)
           << " K=" << w.getDimSize(1);
      } else if (isa<PackedSwiGluOp>(op)) {
        os << " +swiglu";
      } else if (auto e = dyn_cast<QkvEpilogueOp>(op)) {
        os << (e.getInvFreq() ? " +rope" : "")
           << (e.getQkNormEpsilon() ? " +qknorm" : "")
           << (e.getFloorScale() ? " +temperature" : "");
      } else if (auto a = dyn_cast<AttentionOp>(op)) {
        auto q = cast<RankedTensorType>(a.getQuery().getType());
        os << "H=" << a.getNumHeads() << " Hkv=" << a.getNumKvHeads()
           << " d=" << q.getDimSize(1) / a.getNumHeads() << " "
           << (a.getMask() == MaskKind::Chunked
                   ? "chunked " + std::to_string(*a.getChunkSize())
                   : std::string("causal"));
      } else if (auto r = dyn_cast<MoeRouteOp>(op)) {
        auto router = cast<RankedTensorType>(r.getRouter().getType());
        os << "E=" << router.getDimSize(0) << " D=" << router.getDimSize(1)
           << " top" << r.getTopK() << " +sigmoid +dispatch";
      } else if (Value weights = expertWeights(&op)) {
        auto w = cast<RankedTensorType>(weights.getType());
        os << "E=" << w.getDimSize(0) << " rows=" << tokens * routedPerToken
           << " N=" << w.getDimSize(2) << " K=" << w.getDimSize(1)
           << (isa<ExpertGateUpOp>(op) ? " +gate +swiglu" : " +combine");
      } else if (auto m = dyn_cast<MoeOp>(op)) {
        auto down = cast<RankedTensorType>(m.getDown().getType());
        os << "E=" << down.getDimSize(0) << " top" << m.getTopK()
           << " D=" << down.getDimSize(2) << " F=" << down.getDimSize(1)
           << (m.getSharedGate() ? " +shared" : "");
      } else if (!isa<func::ReturnOp>(op)) {
        os << (s.empty() ? "" : " ") << op.getName().stripDialect();
      }
    }
    return s;
  }

  void reportStep(const Step &step) {
    struct Row {
      func::FuncOp kernel;
      int64_t launches = 0, scale = 1;
      Cost perLaunch;
    };
    // Keyed by kernel and row scale: one kernel may run on a replica's rows
    // and on every replica's.
    llvm::MapVector<std::pair<Operation *, int64_t>, Row> rows;
    llvm::DenseSet<Value> weightsSeen;
    double idealWeights = 0, idealKv = 0;
    graph.walk([&](func::CallOp call) {
      auto kernel = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
          call, call.getCalleeAttr());
      int64_t scale = rowScale(call);
      Step scaled{step.name, step.tokens * scale, step.start};
      Row &row = rows[{kernel, scale}];
      if (row.launches++ == 0) {
        row.kernel = kernel;
        row.scale = scale;
        row.perLaunch = kernelCost(kernel, scaled);
      }
      // Ideal traffic: every weight once (what a step can reach of it) and
      // the KV cache once. Counted from the same per-launch rules.
      Block &body = kernel.getBody().front();
      llvm::DenseMap<Value, double> fractions =
          argFractions(kernel, scaled.tokens);
      for (auto [operand, arg] :
           llvm::zip(call.getOperands(), body.getArguments())) {
        auto t = cast<RankedTensorType>(operand.getType());
        if (!t.hasStaticShape() || !weightsSeen.insert(operand).second)
          continue;
        idealWeights +=
            tensorBytes(t, step.tokens) * fractions.lookup_or(arg, 1.0);
      }
      kernel.walk([&](AttentionOp a) { idealKv += kvBytes(a, step); });
    });

    os << "\n"
       << step.name << ": " << step.tokens << " token"
       << (step.tokens == 1 ? "" : "s") << " at positions " << step.start
       << ".." << step.start + step.tokens - 1 << "\n";
    os << llvm::format("%-16s %-12s %8s  %-44s %12s %12s %12s %12s\n", "kernel",
                       "kind", "launches", "shape (one launch)", "GFLOP",
                       "HBM GB", "H100 us", "H200 us");
    Cost total;
    double time[2] = {0, 0};
    for (auto &[op, row] : rows) {
      std::string kind =
          stringifyKernelKind(row.kernel
                                  ->getAttrOfType<KernelKindAttr>(
                                      KilnDialect::getKernelAttrName())
                                  .getValue())
              .str();
      const Cost &one = row.perLaunch;
      Cost all{one.flops * row.launches, one.bytes * row.launches};
      double t[2];
      for (int i = 0; i < 2; ++i) {
        // The roofline of each launch, summed: launches do not overlap.
        t[i] = row.launches * std::max(one.flops / kDevices[i].flopsPerSecond,
                                       one.bytes / kDevices[i].bytesPerSecond);
        time[i] += t[i];
      }
      std::string shape = shapeSummary(row.kernel, step.tokens * row.scale);
      if (shape.size() > 44)
        shape = shape.substr(0, 41) + "...";
      os << llvm::format(
          "%-16s %-12s %8lld  %-44s %12.3f %12.4f %12.1f %12.1f\n",
          row.kernel.getSymName().str().c_str(), kind.c_str(),
          static_cast<long long>(row.launches), shape.c_str(), all.flops / 1e9,
          all.bytes / 1e9, t[0] * 1e6, t[1] * 1e6);
      total += all;
    }
    // Collectives of a tensor-parallel graph: NVLink time, not HBM.
    int64_t reduces = 0;
    double reduceBytes = 0, reduceSeconds = 0;
    graph.walk([&](AllReduceOp r) {
      double bytes = tensorBytes(r.getType(), step.tokens);
      ++reduces;
      reduceBytes += bytes;
      reduceSeconds += allReduceSeconds(r.getRanks(), bytes);
    });
    // Fused all-reduces (kiln.gather_partials read by the norm): gathered
    // at this step's size up to the gather's max_rows, all-reduced above.
    int64_t gathers = 0;
    double gatherBytes = 0, fusedSeconds = 0;
    // The fused all-reduces' time the other way, for the note.
    double chosenSeconds = 0, otherSeconds = 0;
    std::optional<int64_t> gatherLimit;
    graph.walk([&](GatherPartialsOp g) {
      double bytes = tensorBytes(g.getInput().getType(), step.tokens);
      int64_t ranks = static_cast<int64_t>(g.getRanks());
      if (g.getMaxRows())
        gatherLimit = static_cast<int64_t>(*g.getMaxRows());
      double gather = partialGatherSeconds(ranks, bytes);
      double reduce = allReduceSeconds(ranks, bytes);
      if (!g.getMaxRows() ||
          step.tokens <= static_cast<int64_t>(*g.getMaxRows())) {
        ++gathers;
        gatherBytes += bytes * (ranks - 1);
        fusedSeconds += gather;
        chosenSeconds += gather;
        otherSeconds += reduce;
      } else {
        ++reduces;
        reduceBytes += bytes;
        reduceSeconds += reduce;
        chosenSeconds += reduce;
        otherSeconds += gather;
      }
    });
    if (reduces) {
      os << llvm::format(
          "%-16s %-12s %8lld  %-44s %12s %12.4f %12.1f %12.1f\n", "all_reduce",
          "collective", static_cast<long long>(reduces),
          "NVLink, not HBM (GB moved per rank)", "", reduceBytes / 1e9,
          reduceSeconds * 1e6, reduceSeconds * 1e6);
      time[0] += reduceSeconds;
      time[1] += reduceSeconds;
    }
    // Why: the gather is one step and spares the summed buffer, but moves
    // R - 1 partials to every rank (partialGatherMaxRows).
    std::optional<std::string> fusedNote;
    if (gathers)
      fusedNote =
          llvm::formatv(
              "fused all-reduce: {0} gathered into the norm at {1} "
              "rows per rank, {2:F1} us against {3:F1} us "
              "all-reduced ({4})\n",
              gathers, step.tokens, chosenSeconds * 1e6, otherSeconds * 1e6,
              gatherLimit ? llvm::formatv("the gather pays up to {0} rows",
                                          *gatherLimit)
                                .str()
                          : "2 ranks: the gather never moves more")
              .str();
    else if (gatherLimit)
      fusedNote = llvm::formatv("fused all-reduce: all-reduced at {0} rows "
                                "per rank, {1:F1} us against {2:F1} us "
                                "gathered (the gather pays up to {3} rows)\n",
                                step.tokens, chosenSeconds * 1e6,
                                otherSeconds * 1e6, *gatherLimit)
                      .str();
    if (gathers) {
      os << llvm::format(
          "%-16s %-12s %8lld  %-44s %12s %12.4f %12.1f %12.1f\n",
          "gather_partials", "collective", static_cast<long long>(gathers),
          "NVLink; summed by the norm (GB per rank)", "", gatherBytes / 1e9,
          fusedSeconds * 1e6, fusedSeconds * 1e6);
      time[0] += fusedSeconds;
      time[1] += fusedSeconds;
    }

    // The token exchange of data-parallel attention: a rank receives the
    // other replicas' rows; the scatter reduces every replica's rows over
    // all ranks, then a replica's ranks share its rows.
    int64_t exchanges = 0;
    double exchangeBytes = 0, exchangeSeconds = 0;
    // The exchange is within a pipeline stage: its tensor-parallel ranks.
    int64_t world = stageRanks(), replicaRanks = world / replicas;
    graph.walk([&](AllGatherOp g) {
      double all = tensorBytes(g.getType(), step.tokens * replicas);
      ++exchanges;
      exchangeBytes += all * (replicas - 1) / replicas;
      exchangeSeconds += gatherSeconds(replicas, all, world);
    });
    graph.walk([&](ReduceScatterOp r) {
      double all = tensorBytes(r.getInput().getType(), step.tokens * replicas);
      double mine = tensorBytes(r.getType(), step.tokens);
      ++exchanges;
      exchangeBytes +=
          all * (world - 1) / world + mine * (replicaRanks - 1) / replicaRanks;
      exchangeSeconds += gatherSeconds(world, all, world) +
                         gatherSeconds(replicaRanks, mine, world);
    });
    if (exchanges) {
      os << llvm::format("%-16s %-12s %8lld  %-44s %12s %12.4f %12.1f %12.1f\n",
                         "gather/scatter", "collective",
                         static_cast<long long>(exchanges),
                         world > 8 ? "InfiniBand (GB moved per rank)"
                                   : "NVLink (GB moved per rank)",
                         "", exchangeBytes / 1e9, exchangeSeconds * 1e6,
                         exchangeSeconds * 1e6);
      time[0] += exchangeSeconds;
      time[1] += exchangeSeconds;
    }
    // The all-to-all exchange: per MoE block, a count exchange and the
    // pairs out, then the outputs back (allToAllSeconds).
    int64_t allToAlls = 0;
    double allToAllBytes = 0, allToAllTime = 0;
    graph.walk([&](TokenDispatchOp d) {
      int64_t hidden =
          cast<RankedTensorType>(d.getInput().getType()).getDimSize(1);
      double bytes =
          replicaExchangeBytes(
              replicas, world, static_cast<int64_t>(d.getExpertGroups()),
              routedPerToken,
              static_cast<double>(hidden) * options.activationBytes,
              step.tokens)
              .allToAll;
      ++allToAlls;
      allToAllBytes += bytes;
      allToAllTime += allToAllSeconds(world, bytes);
    });
    if (allToAlls) {
      os << llvm::format(
          "%-16s %-12s %8lld  %-44s %12s %12.4f %12.1f %12.1f\n", "all-to-all",
          "collective", static_cast<long long>(allToAlls),
          world > 8 ? "InfiniBand (GB moved per rank)"
                    : "NVLink (GB moved per rank)",
          "", allToAllBytes / 1e9, allToAllTime * 1e6, allToAllTime * 1e6);
      time[0] += allToAllTime;
      time[1] += allToAllTime;
    }
    // Pipeline hand-overs: the stages run one after another for one
    // request, so every stage's launches above count, plus these.
    int64_t sends = 0;
    double sendBytes = 0, sendSeconds = 0;
    graph.walk([&](StageSendOp send) {
      double bytes = tensorBytes(send.getType(), step.tokens);
      ++sends;
      sendBytes += bytes;
      sendSeconds += stageTransferSeconds(worldSize(), bytes);
    });
    if (sends) {
      os << llvm::format(
          "%-16s %-12s %8lld  %-44s %12s %12.4f %12.1f %12.1f\n", "stage_send",
          "collective", static_cast<long long>(sends),
          worldSize() > 8 ? "InfiniBand (GB per hand-over rank)"
                          : "NVLink (GB per hand-over rank)",
          "", sendBytes / 1e9, sendSeconds * 1e6, sendSeconds * 1e6);
      time[0] += sendSeconds;
      time[1] += sendSeconds;
    }
    os << llvm::format("%-16s %-12s %8s  %-44s %12.3f %12.4f %12.1f %12.1f\n",
                       "total", "", "", "", total.flops / 1e9,
                       total.bytes / 1e9, time[0] * 1e6, time[1] * 1e6);
    double perToken = 1.0 / step.tokens;
    os << llvm::format(
        "per token: %.3f GFLOP, %.4f GB; roofline %.2f us (H100), "
        "%.2f us (H200); %.0f tokens/s (H100), %.0f tokens/s (H200)\n",
        total.flops / 1e9 * perToken, total.bytes / 1e9 * perToken,
        time[0] * 1e6 * perToken, time[1] * 1e6 * perToken,
        step.tokens / time[0], step.tokens / time[1]);
    if (fusedNote)
      os << *fusedNote;
    double ideal = idealWeights + idealKv;
    os << llvm::format("planned HBM bytes / ideal (weights and KV once): "
                       "%.4f GB / %.4f GB = %.3f\n",
                       total.bytes / 1e9, ideal / 1e9, total.bytes / ideal);
  }

  void reportMemoryPlan() {
    SmallVector<func::CallOp> calls;
    graph.walk([&](func::CallOp call) { calls.push_back(call); });
    ActivationPlan activations = planActivations(graph, [&](Value v) {
      return static_cast<int64_t>(
          tensorBytes(v.getType(), gathered.contains(v) ? replicas : 1));
    });
    int64_t peak = activations.peakPerToken;
    int64_t naive = activations.totalPerToken;
    const auto &buffers = activations.buffers;
    os << "\nmemory plan (activations at " << options.activationBytes
       << " B/element):\n";
    os << llvm::format("  %zu activation buffers; peak %lld B per token by "
                       "liveness (%lld B without reuse); %.3f GB for a "
                       "%lld-token prefill\n",
                       buffers.size(), static_cast<long long>(peak),
                       static_cast<long long>(naive),
                       peak * static_cast<double>(options.prefillTokens) / 1e9,
                       static_cast<long long>(options.prefillTokens));

    // KV cache pools: chunked layers keep at most one chunk, full layers the
    // whole context.
    struct Pool {
      int64_t layers = 0;
      double bytes = 0;
    };
    std::map<int64_t, Pool> pools; // chunk size (0 = full) -> pool
    // A pipeline rank holds its stage's KV pools and weights: the report
    // gives the stage that needs the most.
    FailureOr<StageAssignment> stages = assignStages(graph);
    int64_t heaviest = 0;
    if (succeeded(stages) && stages->stages > 1) {
      std::vector<double> perStage(stages->stages, 0.0);
      for (BlockArgument arg : graph.getArguments())
        if (graph.getArgAttr(arg.getArgNumber(),
                             KilnDialect::getWeightAttrName()) &&
            stages->of(arg) >= 0)
          perStage[stages->of(arg)] += tensorBytes(arg.getType(), 1);
      heaviest =
          std::max_element(perStage.begin(), perStage.end()) - perStage.begin();
    }
    auto onReportedStage = [&](Operation *op) {
      return failed(stages) || stages->stages == 1 ||
             stages->of(op) == heaviest;
    };
    for (func::CallOp call : calls) {
      if (!onReportedStage(call))
        continue;
      auto kernel = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
          call, call.getCalleeAttr());
      kernel.walk([&](AttentionOp a) {
        int64_t chunk = chunkOf(a);
        int64_t entries = chunk > 0 ? std::min(options.maxContext, chunk)
                                    : options.maxContext;
        auto k = cast<RankedTensorType>(a.getKey().getType());
        Pool &pool = pools[chunk];
        ++pool.layers;
        pool.bytes += 2.0 * entries * k.getDimSize(1) * options.kvBytes;
      });
    }
    double kvTotal = 0;
    for (auto &[chunk, pool] : pools) {
      os << llvm::format(
          "  KV pool, %s layers: %lld layers x %lld entries: "
          "%.3f GB\n",
          chunk ? ("chunked(" + std::to_string(chunk) + ")").c_str()
                : "full-attention",
          static_cast<long long>(pool.layers),
          static_cast<long long>(chunk ? std::min(options.maxContext, chunk)
                                       : options.maxContext),
          pool.bytes / 1e9);
      kvTotal += pool.bytes;
    }
    os << llvm::format(
        "  KV cache for a %lld-token context: %.3f GB; peak "
        "(KV + prefill activations): %.3f GB\n",
        static_cast<long long>(options.maxContext), kvTotal / 1e9,
        (kvTotal + peak * static_cast<double>(options.prefillTokens)) / 1e9);
    // The weights as stored (a rank's slices in a tensor-parallel graph,
    // its stage's in a pipeline).
    double weights = 0;
    for (BlockArgument arg : graph.getArguments())
      if (graph.getArgAttr(arg.getArgNumber(),
                           KilnDialect::getWeightAttrName()) &&
          (failed(stages) || stages->stages == 1 ||
           stages->of(arg) == heaviest))
        weights += tensorBytes(arg.getType(), 1);
    bool ranks = worldSize() > 1;
    if (succeeded(stages) && stages->stages > 1)
      os << "  (one rank of pipeline stage " << heaviest
         << ", the stage with the most weights)\n";
    double all =
        weights + kvTotal + peak * static_cast<double>(options.prefillTokens);
    os << llvm::format("  weights: %.3f GB%s; weights + KV + prefill "
                       "activations: %.3f GB%s\n",
                       weights / 1e9, ranks ? " per rank" : "", all / 1e9,
                       ranks ? " per rank" : "");
  }

  /// Expert-parallel graphs: how the routed tokens reach their experts'
  /// ranks, against the two exchanges that would do it otherwise, at both
  /// step sizes.
  void reportTokenExchange() {
    int64_t groups = 0, ranks = 0, topK = 1, hidden = 0, blocks = 0;
    graph.walk([&](func::CallOp call) {
      auto kernel = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
          call, call.getCalleeAttr());
      kernel.walk([&](MoeRouteOp r) {
        if (!r.getExpertGroups())
          return;
        groups = static_cast<int64_t>(*r.getExpertGroups());
        ranks = static_cast<int64_t>(*r.getRanks());
        topK = r.getTopK();
        hidden = cast<RankedTensorType>(r.getInput().getType()).getDimSize(1);
        ++blocks;
      });
    });
    if (replicas > 1) {
      reportReplicaExchange(groups ? groups : 1, topK);
      return;
    }
    if (!groups)
      return;
    double g = static_cast<double>(groups);
    os << "\nexpert parallelism: " << groups << " groups of " << ranks / groups
       << " ranks; chosen token exchange: none. Attention is tensor-parallel, "
          "so every rank has every token; a group runs its experts on the "
          "tokens routed to them and its partial output joins the MoE "
          "block's all-reduce, which the split shared expert needs anyway "
          "(0 extra bytes, 0 extra collectives). The alternatives, per rank "
          "and MoE block ("
       << blocks << " blocks), at activations of " << options.activationBytes
       << " B:\n";
    for (int64_t tokens : {options.prefillTokens, int64_t(1)}) {
      double row = static_cast<double>(hidden) * options.activationBytes;
      double t = static_cast<double>(tokens);
      // Dispatch and combine: the k copies of the tokens a rank does not
      // own go out and come back.
      double allToAll = 2.0 * t * topK * row * (g - 1) / g;
      // All-gather of the token slices, reduce-scatter of the outputs.
      double gatherScatter = 2.0 * t * row * (g - 1) / g;
      os << llvm::format("  %lld tokens: all-to-all dispatch + combine %.4f "
                         "MB, all-gather + reduce-scatter %.4f MB, "
                         "all-reduce rider 0 MB extra\n",
                         static_cast<long long>(tokens), allToAll / 1e6,
                         gatherScatter / 1e6);
    }
  }

  /// Data-parallel attention: the exchange the graph has against the
  /// other, per rank and MoE block.
  void reportReplicaExchange(int64_t groups, int64_t topK) {
    int64_t world = stageRanks(), replicaRanks = world / replicas, blocks = 0,
            hidden = 0;
    bool allToAll = false;
    graph.walk([&](AllGatherOp g) {
      ++blocks;
      hidden = cast<RankedTensorType>(g.getType()).getDimSize(1);
    });
    graph.walk([&](TokenDispatchOp d) {
      ++blocks;
      allToAll = true;
      groups = static_cast<int64_t>(d.getExpertGroups());
      hidden = cast<RankedTensorType>(d.getInput().getType()).getDimSize(1);
    });
    graph.walk([&](func::CallOp call) {
      auto kernel = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
          call, call.getCalleeAttr());
      kernel.walk([&](MoeRouteOp r) { topK = r.getTopK(); });
    });
    os << "\ndata-parallel attention: " << replicas << " replicas of "
       << replicaRanks << " ranks, each with its own sequence; experts in "
       << groups << " groups of " << world / groups << " ranks. ";
    if (allToAll)
      os << "Chosen token exchange: all-to-all: each rank routes its "
            "replica's rows and sends its piece of them (split over the "
         << replicaRanks << " ranks) to the ranks holding its top-" << topK
         << " experts (" << world / groups
         << " per expert) and back; the replica's all-reduce, which the "
            "split shared expert needs anyway, assembles the pieces.";
    else
      os << "Chosen token exchange: all-gather + reduce-scatter: every rank "
            "routes every replica's rows, so the exchange needs no "
            "routing-dependent sizes, and the sum of the ranks' partial "
            "outputs rides on the way back.";
    os << " Per rank and MoE block (" << blocks
       << " blocks), at activations of " << options.activationBytes
       << " B, tokens per replica:\n";
    for (int64_t tokens : {options.prefillTokens, int64_t(1)}) {
      double row = static_cast<double>(hidden) * options.activationBytes;
      ReplicaExchangeBytes bytes =
          replicaExchangeBytes(replicas, world, groups, topK, row, tokens);
      bool fewer = allToAll ? bytes.gatherScatter < bytes.allToAll
                            : bytes.allToAll < bytes.gatherScatter;
      os << llvm::format("  %lld tokens: all-gather + reduce-scatter %.4f MB, "
                         "all-to-all dispatch + combine %.4f MB%s\n",
                         static_cast<long long>(tokens),
                         bytes.gatherScatter / 1e6, bytes.allToAll / 1e6,
                         fewer ? " (the other exchange moves fewer bytes)"
                               : "");
    }
  }

  LogicalResult run() {
    int64_t kernels = 0;
    for (auto f : module.getOps<func::FuncOp>())
      kernels += f->hasAttr(KilnDialect::getKernelAttrName());
    int64_t launches = 0;
    graph.walk([&](func::CallOp) { ++launches; });
    os << "Kiln cost report for @" << graph.getSymName() << ": " << kernels
       << " kernels, " << launches << " launches per step\n";
    os << "rates (datasheet, dense BF16, SXM): ";
    for (const Device &d : kDevices)
      os << llvm::format("%s %.1f TFLOP/s %.2f TB/s; ", d.name,
                         d.flopsPerSecond / 1e12, d.bytesPerSecond / 1e12);
    os << "activations and KV at " << options.activationBytes << " B\n";
    if (auto ranks = module->getAttrOfType<IntegerAttr>(
            KilnDialect::getTensorParallelAttrName()))
      os << "tensor-parallel over " << ranks.getInt()
         << " ranks: every figure is one rank's; all-reduces at "
            "kilnc --plan's NVLink model\n";
    if (replicas > 1)
      os << replicas << " data-parallel attention replicas: token counts "
         << "are per replica, each replica running its own sequence; a MoE "
            "block runs on every replica's rows\n";
    if (auto stages = module->getAttrOfType<IntegerAttr>(
            KilnDialect::getPipelineStagesAttrName()))
      os << "pipeline of " << stages.getInt() << " stages on " << worldSize()
         << " ranks: step times add every stage's launches (one request "
            "goes through them in turn) and the hand-overs; memory is one "
            "rank's\n";
    reportStep({"prefill", options.prefillTokens, 0});
    reportStep({"decode step", 1, options.decodeContext});
    reportTokenExchange();
    reportMemoryPlan();
    return success();
  }

private:
  int64_t stageRanks() const {
    auto a = module->getAttrOfType<IntegerAttr>(
        KilnDialect::getTensorParallelAttrName());
    return a ? a.getInt() : 1;
  }
  int64_t worldSize() const {
    int64_t n = 1;
    for (StringRef name : {KilnDialect::getTensorParallelAttrName(),
                           KilnDialect::getPipelineStagesAttrName()})
      if (auto a = module->getAttrOfType<IntegerAttr>(name))
        n *= a.getInt();
    return n;
  }

  ModuleOp module;
  func::FuncOp graph;
  const ReportOptions &options;
  llvm::raw_ostream &os;
  int64_t routedPerToken = 1;
  int64_t replicas = 1;
  /// Values holding every replica's rows.
  llvm::DenseSet<Value> gathered;
  /// The share of the routed pairs one rank computes, on average (1 / G
  /// with G expert-parallel groups).
  double expertShare = 1.0;
};

} // namespace

LogicalResult mlir::kiln::writeCostReport(ModuleOp module,
                                          const ReportOptions &options,
                                          llvm::raw_ostream &os) {
  func::FuncOp graph = graphFunctionOf(module);
  if (!graph)
    return module.emitError("cost report: no public function to report on");
  bool partitioned = true;
  graph.walk([&](Operation *op) {
    if (op->getDialect() && isa<KilnDialect>(op->getDialect()) &&
        !isa<ConcatOp, AllReduceOp, GatherPartialsOp, AllGatherOp,
             ReduceScatterOp, TokenDispatchOp, TokenCombineOp, StageSendOp,
             StageBroadcastOp>(op))
      partitioned = false;
  });
  if (!partitioned)
    return graph.emitError("cost report: the graph is not partitioned into "
                           "kernels (run kiln-partition-kernels first)");
  return Reporter(module, graph, options, os).run();
}
