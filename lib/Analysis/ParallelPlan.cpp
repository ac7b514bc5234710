//===- ParallelPlan.cpp - Choosing a multi-GPU layout ---------------------===//
//
// The estimates are first-order and deliberately simple enough to check by
// hand (docs/results.md does so for the real configs):
//
// - memory per GPU: dense weights / (TP x PP), vocabulary weights
//   replicated (halved by PP: embedding first, LM head last),
//   routed experts / (PP x max(TP, EP)); KV cache of `batch` sequences at
//   the context (chunked layers keep one chunk) over the rank's KV heads
//   and the stage's layers; activations of one prefill chunk;
// - a step: for latency the pipeline stages run one after another, so the
//   compute term is the sum over stages of max(bytes / HBM bandwidth,
//   FLOPs / peak) of one GPU of the stage;
// - the routed experts a decode step reads: of the experts its tokens
//   touch, those of the busiest GPU (each GPU holds E / EP experts, each
//   split TP / EP ways when TP is wider);
// - collectives: an all-reduce after attention and after each FFN/MoE
//   (2 log2(TP) steps of latency plus 2 (TP-1)/TP of the message over
//   NVLink); with EP wider than TP, an all-to-all dispatch and combine of
//   the routed tokens per MoE layer (over NVLink inside a node, InfiniBand
//   across nodes); with PP, one activation transfer per stage boundary.
//
//===----------------------------------------------------------------------===//

#include "kiln/Analysis/ParallelPlan.h"
#include "dialects/kiln/KilnOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/FormatVariadic.h"

#include <algorithm>
#include <cmath>

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// The hardware the plan is for, with where each figure comes from.
struct Hardware {
  double memoryBytes = 80e9; // H100 SXM5 80 GB HBM3 (NVIDIA datasheet)
  double usable = 0.9; // kept free for the CUDA context, NCCL, fragmentation
  double flops = 989.4e12;  // dense BF16 tensor-core peak (datasheet)
  double hbm = 3.35e12;     // HBM3 bytes/s (datasheet)
  double nvlink = 450e9;    // NVLink 4: 900 GB/s per GPU both ways (datasheet)
  double infiniband = 50e9; // one 400 Gb/s NDR NIC per GPU (DGX H100 guide)
  double nvlinkLatency = 2.5e-6; // per all-reduce step; an assumption
  double ibLatency = 6e-6;       // per message across nodes; an assumption
  int64_t gpusPerNode = 8;       // HGX/DGX H100
};

constexpr int64_t kPrefillChunk = 8192;

int64_t elementCount(RankedTensorType t) {
  int64_t n = 1;
  for (int64_t d : t.getShape())
    n *= d;
  return n;
}

int64_t bytesOf(Type element) {
  if (element.isF32())
    return 4;
  return 2;
}

} // namespace

/// The latency of a recursive-doubling reduce and broadcast (2 log2(ranks)
/// steps, what small decode messages pay) plus the bandwidth term of a ring
/// (2 (R-1)/R of the message, what large prefill messages pay).
double mlir::kiln::gatherSeconds(int64_t ranks, double bytes, int64_t span) {
  if (ranks <= 1)
    return 0;
  Hardware hw;
  bool inNode = span <= hw.gpusPerNode;
  double r = static_cast<double>(ranks);
  return std::log2(r) * (inNode ? hw.nvlinkLatency : hw.ibLatency) +
         (r - 1) / r * bytes / (inNode ? hw.nvlink : hw.infiniband);
}

double mlir::kiln::allReduceSeconds(int64_t ranks, double bytes) {
  // A reduce-scatter then an all-gather, within one node.
  return 2.0 * gatherSeconds(ranks, bytes, /*span=*/1);
}

// An all-reduce of B bytes a rank, then a reader of the sum, against a
// gather of the R partials read by the reader:
//   all-reduce: 2 (log2 R latency + (R-1)/R B / NVLink), and the sum is
//               written and read back (2 B / HBM);
//   gather:     log2 R latency + (R-1) B / NVLink, and R-1 more partials
//               read ((R-1) B / HBM).
// The gather is no slower while
//   B [(R-1)(1 - 2/R) / NVLink + (R-3) / HBM] <= log2 R latency.
double mlir::kiln::partialGatherSeconds(int64_t ranks, double bytes) {
  Hardware hw;
  double r = static_cast<double>(ranks);
  return gatherSeconds(ranks, r * bytes, /*span=*/1) + (r - 1) * bytes / hw.hbm;
}

std::optional<int64_t> mlir::kiln::partialGatherMaxRows(int64_t ranks,
                                                        double rowBytes) {
  Hardware hw;
  double r = static_cast<double>(ranks);
  double perByte = (r - 1) * (1 - 2 / r) / hw.nvlink + (r - 3) / hw.hbm;
  if (perByte <= 0 || rowBytes <= 0)
    return std::nullopt;
  return static_cast<int64_t>(std::log2(r) * hw.nvlinkLatency / perByte /
                              rowBytes);
}

ReplicaExchangeBytes
mlir::kiln::replicaExchangeBytes(int64_t replicas, int64_t ranks,
                                 int64_t groups, int64_t topK, double rowBytes,
                                 int64_t tokens) {
  double d = static_cast<double>(replicas), r = static_cast<double>(ranks),
         tr = r / d, g = static_cast<double>(std::max<int64_t>(groups, 1)),
         t = static_cast<double>(tokens);
  ReplicaExchangeBytes b;
  b.gatherScatter = (d - 1) * t * rowBytes + (r - 1) / r * d * t * rowBytes +
                    (tr - 1) / tr * t * rowBytes;
  b.allToAll = 2.0 * t / tr * static_cast<double>(topK) * (r / g) * rowBytes *
               (r - 1) / r;
  return b;
}

double mlir::kiln::allToAllSeconds(int64_t ranks, double bytes) {
  if (ranks <= 1)
    return 0;
  Hardware hw;
  bool inNode = ranks <= hw.gpusPerNode;
  double latency = inNode ? hw.nvlinkLatency : hw.ibLatency;
  return 2.0 *
         (2.0 * latency + bytes / 2.0 / (inNode ? hw.nvlink : hw.infiniband));
}

double mlir::kiln::stageTransferSeconds(int64_t ranks, double bytes) {
  Hardware hw;
  bool inNode = ranks <= hw.gpusPerNode;
  return (inNode ? hw.nvlinkLatency : hw.ibLatency) +
         bytes / (inNode ? hw.nvlink : hw.infiniband);
}

FailureOr<ModelShape> mlir::kiln::modelShapeOf(ModuleOp module) {
  func::FuncOp graph = graphFunctionOf(module);
  if (!graph)
    return module.emitError("no graph function to plan for"), failure();
  ModelShape m;
  for (BlockArgument arg : graph.getArguments()) {
    auto name = graph.getArgAttrOfType<StringAttr>(
        arg.getArgNumber(), KilnDialect::getWeightAttrName());
    if (!name)
      continue;
    if (graph.getArgAttr(arg.getArgNumber(), KilnDialect::getShardAttrName()))
      return graph.emitError("--plan reads the unsharded graph (drop --tp)"),
             failure();
    auto type = cast<RankedTensorType>(arg.getType());
    m.weightElementBytes = bytesOf(type.getElementType());
    double bytes = static_cast<double>(elementCount(type)) *
                   bytesOf(type.getElementType());
    StringRef n = name.getValue();
    if (n.contains(".experts."))
      m.expertBytes += bytes;
    else if (n.contains("embed_tokens") || n.contains("lm_head"))
      m.vocabBytes += bytes;
    else
      m.denseBytes += bytes;
    if (n.contains("lm_head"))
      m.vocab = type.getDimSize(0);
  }
  graph.walk([&](Operation *op) {
    if (auto a = dyn_cast<AttentionOp>(op)) {
      ++m.layers;
      m.heads = a.getNumHeads();
      m.kvHeads = a.getNumKvHeads();
      m.headDim = cast<RankedTensorType>(a.getQuery().getType()).getDimSize(1) /
                  a.getNumHeads();
      m.hidden = cast<RankedTensorType>(a.getResult().getType()).getDimSize(1);
      if (a.getMask() == MaskKind::Chunked && a.getChunkSize()) {
        ++m.chunkedLayers;
        m.chunk = *a.getChunkSize();
      }
    } else if (auto moe = dyn_cast<MoeOp>(op)) {
      ++m.moeLayers;
      auto down = cast<RankedTensorType>(moe.getDown().getType());
      m.experts = down.getDimSize(0);
      m.topK = moe.getTopK();
      m.intermediate = std::max(m.intermediate, down.getDimSize(1));
      if (auto shared = moe.getSharedDown())
        m.intermediate =
            std::max(m.intermediate,
                     cast<RankedTensorType>(shared.getType()).getDimSize(1));
    } else if (auto s = dyn_cast<SwiGluOp>(op)) {
      m.intermediate = std::max(
          m.intermediate,
          cast<RankedTensorType>(s.getResult().getType()).getDimSize(1));
    }
  });
  // The attention output projection's input is the heads' width; the
  // residual stream's is the embedding's.
  graph.walk([&](EmbeddingOp e) {
    m.hidden = cast<RankedTensorType>(e.getResult().getType()).getDimSize(1);
  });
  if (m.layers == 0 || m.heads == 0)
    return graph.emitError("--plan needs a graph with attention layers"),
           failure();
  return m;
}

LayoutEstimate mlir::kiln::estimateLayout(const ModelShape &m,
                                          const PlanOptions &o, Layout layout) {
  Hardware hw;
  LayoutEstimate est;
  est.layout = layout;
  double tp = static_cast<double>(layout.tp),
         pp = static_cast<double>(layout.pp);
  double expertSplit = static_cast<double>(std::max(layout.tp, layout.ep));
  // Embedding and LM head: replicated on every rank (as
  // kiln-shard-tensor-parallel leaves them); with PP they sit on the first
  // and the last stage.
  double vocabPerGpu = m.vocabBytes / (layout.pp > 1 ? 2.0 : 1.0);
  est.weightBytes = m.denseBytes / (tp * pp) + vocabPerGpu +
                    m.expertBytes / (pp * expertSplit);

  int64_t kvHeadsPerGpu = std::max<int64_t>(1, m.kvHeads / layout.tp);
  double kvPerToken = 2.0 * kvHeadsPerGpu * m.headDim * 2; // k and v, bf16
  int64_t chunkTokens = m.chunk > 0 ? std::min(o.context, m.chunk) : o.context;
  double kvTokens = static_cast<double>(m.chunkedLayers) * chunkTokens +
                    static_cast<double>(m.layers - m.chunkedLayers) * o.context;
  est.kvBytes = o.batch * kvTokens / pp * kvPerToken;

  int64_t prefill = std::min(o.context, kPrefillChunk);
  double perToken =
      4.0 * m.hidden * 4 + (m.heads + 2.0 * m.kvHeads) * m.headDim / tp * 4 +
      2.0 * m.intermediate * std::max<int64_t>(1, m.topK) / tp * 4;
  est.activationBytes = prefill * perToken;
  est.fits = est.totalBytes() <= hw.memoryBytes * hw.usable;

  // Decode: `batch` tokens, one per sequence.
  double b = static_cast<double>(o.batch);
  double e = static_cast<double>(std::max<int64_t>(1, m.experts));
  double perExpertLayer = m.moeLayers ? m.expertBytes / (m.moeLayers * e) : 0.0;
  double touched =
      m.experts ? e * (1.0 - std::pow(1.0 - 1.0 / e, b * m.topK)) : 0.0;
  double ep = static_cast<double>(layout.ep);
  double expertRead = m.moeLayers * perExpertLayer *
                      std::max(1.0, touched / ep) / std::max(1.0, tp / ep);
  double lmHead = m.vocabBytes / 2;
  double kvRead = b * kvTokens * kvPerToken; // all stages
  double decodeBytes = m.denseBytes / tp + lmHead + expertRead + kvRead;
  double activeElements =
      (m.denseBytes + m.expertBytes * m.topK / e) / m.weightElementBytes;
  double lmHeadElements = m.vocabBytes / 2 / m.weightElementBytes;
  double decodeFlops = 2.0 * b * (activeElements / tp + lmHeadElements);
  double decodeCompute = std::max(decodeBytes / hw.hbm, decodeFlops / hw.flops);

  auto collectives = [&](double tokens) {
    double t =
        2.0 * m.layers * allReduceSeconds(layout.tp, tokens * m.hidden * 2);
    if (layout.ep > layout.tp && m.moeLayers) {
      bool inNode = layout.ep <= hw.gpusPerNode;
      double bw = inNode ? hw.nvlink : hw.infiniband;
      double latency = inNode ? hw.nvlinkLatency : hw.ibLatency;
      double bytes = tokens * m.topK * m.hidden * 2.0 *
                     static_cast<double>(layout.ep - 1) / layout.ep;
      t += m.moeLayers * 2.0 * (latency + bytes / bw);
    }
    if (layout.pp > 1)
      t += (pp - 1) *
           stageTransferSeconds(layout.tp * layout.pp, tokens * m.hidden * 2.0);
    return t;
  };
  est.decodeCommSeconds = collectives(b);
  est.decodeSeconds = decodeCompute + est.decodeCommSeconds;

  // Prefill: one sequence of `prefill` tokens, compute-bound.
  double p = static_cast<double>(prefill);
  double attentionFlops = 0;
  for (int64_t l = 0; l < m.layers; ++l) {
    double visible = l < m.chunkedLayers ? std::min<double>(p, chunkTokens) : p;
    attentionFlops += 2.0 * 2.0 * p * visible / 2 * m.heads * m.headDim;
  }
  // The LM head runs on the prompt's last row only.
  double prefillFlops =
      (2.0 * p * activeElements + attentionFlops) / tp + 2.0 * lmHeadElements;
  double prefillBytes = est.weightBytes * pp;
  est.prefillSeconds =
      std::max(prefillFlops / hw.flops, prefillBytes / hw.hbm) + collectives(p);
  return est;
}

std::vector<LayoutEstimate> mlir::kiln::estimateLayouts(const ModelShape &m,
                                                        const PlanOptions &o) {
  std::vector<LayoutEstimate> out;
  for (int64_t tp : {1, 2, 4, 8}) {
    if (m.heads % tp != 0 ||
        (tp <= m.kvHeads ? m.kvHeads % tp != 0 : tp % m.kvHeads != 0))
      continue;
    for (int64_t pp = 1; pp <= m.layers; ++pp) {
      if (m.layers % pp != 0 || o.gpus % (tp * pp) != 0)
        continue;
      int64_t dp = o.gpus / (tp * pp);
      // EP no wider than TP costs what TP alone does here: not listed.
      for (int64_t ep = 1; ep <= std::max<int64_t>(1, m.experts); ++ep) {
        if ((ep > 1 && ep <= tp) || (m.experts && m.experts % ep != 0) ||
            (tp * dp) % ep != 0)
          continue;
        out.push_back(estimateLayout(m, o, {tp, ep, pp, dp}));
      }
    }
  }
  return out;
}

/// The kilnc flags that build one replica of `l`, or why none do yet.
static std::string buildCommand(const Layout &l) {
  if (l.ep > l.tp) {
    // One expert-parallel group spans ep / tp attention replicas.
    std::string out = "kilnc <dir> --tp " + std::to_string(l.tp) + " --ep " +
                      std::to_string(l.ep) +
                      (l.pp > 1 ? " --pp " + std::to_string(l.pp) : "") +
                      " (mpirun -np " + std::to_string(l.ep * l.pp) + ", " +
                      std::to_string(l.ep / l.tp) + " attention replicas";
    if (l.dp * l.tp > l.ep)
      out += "; " + std::to_string(l.dp * l.tp / l.ep) + " such groups";
    return out + ")";
  }
  std::string flags;
  if (l.tp > 1)
    flags += " --tp " + std::to_string(l.tp);
  if (l.ep > 1)
    flags += " --ep " + std::to_string(l.ep);
  if (l.pp > 1)
    flags += " --pp " + std::to_string(l.pp);
  std::string out = "kilnc <dir>" + flags + " (mpirun -np " +
                    std::to_string(l.tp * l.pp) + " per replica";
  if (l.dp > 1)
    out += ", " + std::to_string(l.dp) + " replicas";
  return out + ")";
}

static std::string describe(const Layout &l) {
  return llvm::formatv("TP={0} EP={1} PP={2} DP={3}", l.tp, l.ep, l.pp, l.dp)
      .str();
}

/// Fitting layouts first, then the fastest decode step; within 2% the one
/// with more replicas (throughput), then less expert parallelism (fewer
/// all-to-alls).
static bool better(const LayoutEstimate &a, const LayoutEstimate &b) {
  if (a.fits != b.fits)
    return a.fits;
  if (!a.fits)
    return a.totalBytes() < b.totalBytes();
  double lo = std::min(a.decodeSeconds, b.decodeSeconds);
  if (std::abs(a.decodeSeconds - b.decodeSeconds) > 0.02 * lo)
    return a.decodeSeconds < b.decodeSeconds;
  if (a.layout.dp != b.layout.dp)
    return a.layout.dp > b.layout.dp;
  return a.layout.ep < b.layout.ep;
}

LogicalResult mlir::kiln::writeParallelPlan(const ModelShape &m,
                                            const PlanOptions &o,
                                            llvm::raw_ostream &os) {
  if (o.gpus < 1 || o.context < 1 || o.batch < 1)
    return failure();
  Hardware hw;
  auto gb = [](double bytes) { return bytes / 1e9; };
  os << llvm::format("model: %lld layers (%lld chunked, chunk %lld), hidden "
                     "%lld, %lld heads / %lld KV heads of %lld, %lld experts "
                     "(top %lld) in %lld MoE layers\n",
                     m.layers, m.chunkedLayers, m.chunk, m.hidden, m.heads,
                     m.kvHeads, m.headDim, m.experts, m.topK, m.moeLayers);
  os << llvm::format("weights: %.1f GB (dense %.1f, vocabulary %.1f, routed "
                     "experts %.1f)\n",
                     gb(m.denseBytes + m.vocabBytes + m.expertBytes),
                     gb(m.denseBytes), gb(m.vocabBytes), gb(m.expertBytes));
  os << llvm::format("request: %lld GPUs, context %lld, batch %lld per "
                     "replica\n",
                     o.gpus, o.context, o.batch);
  os << llvm::format(
      "assumed H100 SXM: %.0f GB HBM (%.0f%% usable), %.1f TFLOP/s BF16, %.2f "
      "TB/s HBM (datasheet); NVLink %.0f GB/s per direction (datasheet), "
      "InfiniBand %.0f GB/s per GPU (400G NDR, DGX H100 guide); latency %.1f "
      "us per all-reduce step, %.1f us per InfiniBand message (assumed); "
      "%lld GPUs per node\n",
      gb(hw.memoryBytes), hw.usable * 100, hw.flops / 1e12, hw.hbm / 1e12,
      hw.nvlink / 1e9, hw.infiniband / 1e9, hw.nvlinkLatency * 1e6,
      hw.ibLatency * 1e6, hw.gpusPerNode);

  std::vector<LayoutEstimate> all = estimateLayouts(m, o);
  std::sort(all.begin(), all.end(), better);
  int64_t fitting = std::count_if(
      all.begin(), all.end(), [](const LayoutEstimate &e) { return e.fits; });
  os << llvm::format("layouts: %zu candidates, %lld fit\n", all.size(),
                     fitting);
  os << "  layout                     GB/GPU (weights + KV + act)   "
        "prefill ms   decode ms (comm)\n";
  size_t shown = std::min<size_t>(all.size(), 10);
  for (size_t i = 0; i < shown; ++i) {
    const LayoutEstimate &e = all[i];
    os << llvm::format("  %-26s %6.1f (%5.1f + %5.1f + %4.1f)%s %10.1f "
                       "%10.2f (%.2f)\n",
                       describe(e.layout).c_str(), gb(e.totalBytes()),
                       gb(e.weightBytes), gb(e.kvBytes), gb(e.activationBytes),
                       e.fits ? "     " : " over", e.prefillSeconds * 1e3,
                       e.decodeSeconds * 1e3, e.decodeCommSeconds * 1e3);
  }
  if (fitting > 0) {
    const LayoutEstimate &c = all.front();
    os << "chosen: " << describe(c.layout) << "\n";
    os << llvm::format(
        "why: the fastest decode step (%.2f ms, %.2f ms of it in "
        "collectives) of the %lld layouts that fit %.0f GB per GPU; it "
        "needs %.1f GB per GPU",
        c.decodeSeconds * 1e3, c.decodeCommSeconds * 1e3, fitting,
        gb(hw.memoryBytes * hw.usable), gb(c.totalBytes()));
    if (all.size() > 1 && all[1].fits)
      os << llvm::format("; next: %s at %.2f ms",
                         describe(all[1].layout).c_str(),
                         all[1].decodeSeconds * 1e3);
    os << "\nbuild: " << buildCommand(c.layout) << "\n";
    return success();
  }
  // Nothing fits: the fewest whole nodes that would.
  for (int64_t nodes = 1; nodes <= 16384; ++nodes) {
    PlanOptions more = o;
    more.gpus = nodes * hw.gpusPerNode;
    if (more.gpus <= o.gpus)
      continue;
    std::vector<LayoutEstimate> options = estimateLayouts(m, more);
    auto best = std::min_element(options.begin(), options.end(), better);
    if (best != options.end() && best->fits) {
      os << llvm::format("chosen: none: no layout of %lld GPUs fits %.0f GB "
                         "per GPU (the smallest needs %.1f GB)\n",
                         o.gpus, gb(hw.memoryBytes * hw.usable),
                         all.empty() ? 0.0 : gb(all.front().totalBytes()));
      os << llvm::format("needs: %lld GPUs (%lld %s of %lld), e.g. %s at "
                         "%.1f GB per GPU, decode %.2f ms\n",
                         more.gpus, nodes, nodes == 1 ? "node" : "nodes",
                         hw.gpusPerNode, describe(best->layout).c_str(),
                         gb(best->totalBytes()), best->decodeSeconds * 1e3);
      os << "build: " << buildCommand(best->layout) << "\n";
      return success();
    }
  }
  os << "chosen: none: the model does not fit on up to 131072 GPUs\n";
  return success();
}
