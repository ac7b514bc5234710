//===- EnginePlan.h - The engine plan schema, in code -----------*- C++ -*-===//
//
// The plan section of an engine (docs/engine-format.md describes this file):
// the values a step reads and writes, the launches in order (with their GPU
// steps on sm_90a engines), the KV slots, the logits value and the
// next-token functions. The compiler builds a `Plan` and writes it with
// writePlan(); the runtime reads it back with readPlan(). Nothing else in
// Kiln spells the plan's JSON keys.
//
// Plain C++ (no MLIR, no LLVM): both the compiler and the runtime include it.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_ENGINEPLAN_H
#define KILN_RUNTIME_ENGINEPLAN_H

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln::plan {

/// Element types of plan values, named as safetensors names them.
enum class DType { F32, BF16, F16, I64, I32 };

const char *dtypeName(DType dtype);
/// False for a name that is none of the above.
bool parseDType(const std::string &name, DType &out);
size_t elementSize(DType dtype);

enum class ValueKind {
  /// A runtime input: `input` is "tokens" or "positions".
  Input,
  /// A checkpoint tensor bound by `name`.
  Weight,
  /// A repacking of weights (`of`, along `axis`), built once at load.
  Concat,
  /// An activation written by a launch.
  Buffer,
};

/// One split of a checkpoint tensor over the ranks of a tensor-parallel
/// engine: dimension `dim` viewed as [groups, parts, block]; a rank binds
/// block p of every group, p = rank * parts / ranks (`stride` 0) or
/// (rank / stride) % parts (#kiln.shard in the compiler).
struct Shard {
  int64_t dim = 0, parts = 0, groups = 1, stride = 0;
  int64_t partOf(int64_t rank, int64_t ranks) const {
    return stride ? (rank / stride) % parts : rank * parts / ranks;
  }
};

struct Value {
  ValueKind kind = ValueKind::Buffer;
  std::string input;
  std::string name;
  DType dtype = DType::F32;
  /// -1 as the first extent: the step's token count times rowsPerToken.
  std::vector<int64_t> shape;
  int64_t rowsPerToken = 1;
  std::vector<int64_t> of;
  int64_t axis = 0;
  /// Offset in the step's activation arena, per token; -1: own storage.
  int64_t arenaOffset = -1;
  /// Weights of a tensor-parallel engine: the splits that give the rank's
  /// slice, outermost first (`shape` is the slice's).
  std::vector<Shard> shards;
  /// Weights and repackings of a pipeline-parallel engine: the stage whose
  /// ranks bind it (-1: every stage).
  int64_t stage = -1;
  /// Weights of host engines: when above 0, the kernels read the [..., K, N]
  /// weight as panels of this many columns, [..., N / panel, K, panel]; the
  /// runtime lays it out so at load (packPanels).
  int64_t panel = 0;
  /// Buffers of an engine with data-parallel attention replicas that hold
  /// every replica's rows (from an AllGather to its ReduceScatter): the first
  /// extent counts the tokens of all replicas in the step, not this rank's.
  bool gathered = false;
  /// Buffers between a TokenDispatch and its TokenCombine that hold the
  /// pairs this rank received: the first extent is their count, known
  /// only once the dispatch has run.
  bool received = false;

  bool isDynamic() const { return !shape.empty() && shape[0] < 0; }
};

/// An attention in a launch: its key and value arguments are the KV pool of
/// `slot`.
struct AttentionUse {
  int64_t keyArg = 0, valueArg = 0, slot = 0;
};

/// One grid extent: ceil((rows(rowsOf) * perRow + constant) / divisor), or
/// constant / divisor (rounded up) when `rowsOf` is negative; with `perSm`,
/// that many blocks per SM of the GPU (persistent kernels). Rows are an
/// operand's first extent in the step.
struct GridExtent {
  int64_t rowsOf = -1;
  int64_t perRow = 0;
  int64_t constant = 1;
  int64_t divisor = 1;
  int64_t perSm = 0;
};

/// How the runtime fills one parameter of a GPU function. Operands are
/// numbered like the launch's values: its arguments, then its results.
struct GpuParam {
  enum class Kind {
    /// A memref descriptor (allocated, aligned, offset, sizes, strides).
    Memref,
    /// A pointer to a 128-byte CUtensorMap for a bf16 operand viewed as a
    /// 2-D row-major matrix [rows, cols] (3-D tensors: [d0 * d1, d2]), box
    /// {boxCols, boxRows}, 128-byte swizzle, zero fill out of bounds.
    TensorMap,
    /// The positions (i64 [keys]) of the KV slot bound to `operand` (an
    /// attention key argument), as a memref descriptor.
    KeyPositions,
    /// The KV pool bound to `operand` (an attention key or value argument):
    /// a memref descriptor over the pool's capacity; rows past the key
    /// count are not read.
    KvPool,
    /// The key count (memref<1xi64>, in device memory) of the KV slot bound
    /// to `operand`, counting this step's rows. Read on the device so a
    /// decode step's parameters do not change from step to step (CUDA
    /// graphs replay them).
    KeyCount,
    /// Device scratch memory (rows(operand) * perRow elements, i64 or
    /// f32) private to the launch sequence of one kernel call.
    Scratch,
  };
  Kind kind = Kind::Memref;
  int64_t operand = 0;
  int64_t boxCols = 0, boxRows = 0;
  /// TensorMap of a 3-D tensor [d0, d1, d2] kept 3-D (dims {d2, d1, d0},
  /// box {boxCols, boxRows, 1}), so boxes never run into the next d0 slice.
  bool box3 = false;
  /// TensorMap over the KV pool bound to `operand` (covering the step's
  /// keys) rather than the operand's own buffer.
  bool pool = false;
  /// Scratch: elements per row of `operand`; f32 when floatScratch, else
  /// i64.
  int64_t perRow = 0;
  bool floatScratch = false;

  bool readsKvSlot() const {
    return kind == Kind::KvPool || kind == Kind::KeyPositions ||
           kind == Kind::KeyCount || pool;
  }
};

/// "memref", "tensor_map", ...: the plan's names of the parameter kinds.
const char *paramKindName(GpuParam::Kind kind);
/// False for a name that is none of them.
bool parseParamKind(const std::string &name, GpuParam::Kind &out);

/// One GPU function launch.
struct GpuLaunch {
  /// Empty: the variant launches nothing (a step only some variants need).
  std::string function;
  int64_t blockThreads = 0;
  int64_t dynamicSharedBytes = 0;
  GridExtent grid[3];
  std::vector<GpuParam> params;
  /// A variant applies when rows(selectOperand) <= maxRows; the last
  /// variant of a step applies otherwise.
  int64_t selectOperand = -1;
  int64_t maxRows = -1;
};

/// A step of a kernel on the GPU: one of its variants runs.
struct GpuStep {
  std::vector<GpuLaunch> variants;
};

/// What a launch does: run a kernel; sum its one argument over the ranks
/// of the stage's tensor-parallel group (of the rank's replica, with
/// data-parallel attention) into its one result; send its argument from
/// the ranks of `stage` to those of the next stage, which receive it as the
/// result; give the one value (argument and result) of `stage`'s ranks to
/// every rank; with attention replicas, give every rank of the stage every
/// replica's rows of the argument, in replica order (AllGather); or sum
/// the gathered argument over the stage's ranks, each replica keeping its
/// own rows (ReduceScatter).
enum class LaunchKind {
  Kernel,
  AllReduce,
  StageSend,
  StageBroadcast,
  AllGather,
  ReduceScatter,
  /// The partial sums of the replica's ranks stacked for a kernel that sums
  /// them (kiln.gather_partials); above `maxRows` rows per rank, an
  /// all-reduce handing the kernel the sum as one block.
  GatherPartials,
  /// The all-to-all of a MoE block (kiln.token_dispatch): a rank's piece of
  /// its replica's routed rows to the ranks of each pair's expert group;
  /// the results are a router's over the rank's experts, as received.
  TokenDispatch,
  /// Its way back (kiln.token_combine): the received pairs' outputs to the
  /// ranks they came from, summed into the rows of their pieces.
  TokenCombine
};

struct Launch {
  LaunchKind kind = LaunchKind::Kernel;
  /// The kernel's name; empty for a collective.
  std::string kernel;
  std::vector<int64_t> args, results;
  std::vector<AttentionUse> attention;
  /// sm_90a engines: the GPU steps that make up this kernel, in order.
  std::vector<GpuStep> gpu;
  /// Pipeline-parallel engines: the stage whose ranks run it (the sending
  /// stage of a StageSend, the source of a StageBroadcast); -1: all.
  int64_t stage = -1;
  /// GatherPartials: the most rows per rank it gathers for (-1: any).
  int64_t maxRows = -1;
  /// TokenDispatch / TokenCombine: the expert groups the stage's ranks
  /// form (group g: ranks g R / G .. (g + 1) R / G - 1).
  int64_t expertGroups = 0;

  /// GatherPartials: whether a step of `rows` rows per rank gathers the
  /// partials (rather than all-reducing them).
  bool gathersPartials(int64_t rows) const {
    return maxRows < 0 || rows <= maxRows;
  }

  /// Operand `i`: args then results.
  int64_t operand(size_t i) const {
    return i < args.size() ? args[i] : results[i - args.size()];
  }
  size_t operandCount() const { return args.size() + results.size(); }
};

/// One KV pool: an attention call site.
struct Slot {
  int64_t width = 0;
  /// Chunk size of a chunked layer (0: full attention keeps everything).
  int64_t chunk = 0;
};

/// A one-block GPU function that picks the next token from the last logits
/// row (sm_90a engines; empty `function` when absent).
struct TokenFunction {
  std::string function;
  int64_t blockThreads = 0;
};

struct Plan {
  /// Ranks of each stage's tensor-parallel group (kiln.tensor_parallel);
  /// 1: one.
  int64_t tensorParallel = 1;
  /// Pipeline stages (kiln.pipeline_stages); the engine runs on
  /// tensorParallel x pipelineStages ranks, rank r in stage
  /// r / tensorParallel.
  int64_t pipelineStages = 1;
  int64_t worldSize() const { return tensorParallel * pipelineStages; }
  /// Data-parallel attention replicas (kiln.attention_replicas): the
  /// tensorParallel ranks of a stage form this many replicas of
  /// tensorParallel / attentionReplicas consecutive ranks, each running its
  /// own sequence; 1: none.
  int64_t attentionReplicas = 1;
  int64_t replicaRanks() const { return tensorParallel / attentionReplicas; }
  std::vector<Value> values;
  std::vector<Launch> launches;
  std::vector<Slot> slots;
  int64_t logits = -1;
  int64_t arenaBytesPerToken = 0;
  std::vector<int64_t> eosTokenIds;
  /// The model's max_position_embeddings (0: not known): runs longer than
  /// it are refused unless the caller raises the bound explicitly.
  int64_t maxPositions = 0;
  /// Host engines: the x86-64 level their kernels use (x86-64-v2, -v3,
  /// -v4); the runtime refuses the engine on a CPU without it.
  std::string hostCpu;
  /// `argmax(logits, token)`: the greedy token (ties to the lower id).
  TokenFunction argmax;
  /// `sample(logits, request, token)`: request = {temperature, top_k, top_p,
  /// u} in f64, drawn by the host sampler's rule.
  TokenFunction sample;

  int64_t vocab() const {
    return logits >= 0 && !values[logits].shape.empty()
               ? values[logits].shape.back()
               : 0;
  }
};

/// The plan as JSON text (the engine's plan section).
std::string writePlan(const Plan &plan);

/// Parses `text` and checks every index, size and name in it. `path` names
/// the engine in errors ("<path>: malformed plan: ...").
bool readPlan(const std::string &text, const std::string &path, Plan &out,
              std::string &error);

//===----------------------------------------------------------------------===//
// Rules shared by the plan's readers
//===----------------------------------------------------------------------===//

/// Bytes of one row of a value (its first extent excluded).
inline size_t rowBytes(const Value &v) {
  size_t n = elementSize(v.dtype);
  for (size_t i = 1; i < v.shape.size(); ++i)
    n *= static_cast<size_t>(v.shape[i]);
  return n;
}

/// The row-major tensor `shape` at `data` (elements of `elementBytes`) with
/// its last two dimensions [K, N] laid out as panels of `panel` columns:
/// [..., N / panel, K, panel]. N must be a multiple of `panel`.
void packPanels(const std::vector<int64_t> &shape, size_t elementBytes,
                const void *data, int64_t panel, uint8_t *out);
void packPanels(const std::vector<int64_t> &shape, size_t elementBytes,
                const void *data, int64_t panel, std::vector<uint8_t> &out);

/// Rank `rank` of `ranks`'s slice under `shards` of a row-major tensor of
/// shape `full` at `data`, elements of `elementBytes`: the bytes of a tensor
/// whose extent along each split's `dim` is full[dim] / parts. The runtime
/// binds weights with it; the reference evaluator too.
void sliceShards(const std::vector<Shard> &shards,
                 const std::vector<int64_t> &full, size_t elementBytes,
                 const void *data, int64_t rank, int64_t ranks,
                 std::vector<uint8_t> &out);

/// The checkpoint shape of a weight whose slice has shape `local`.
inline std::vector<int64_t> unshardedShape(const std::vector<Shard> &shards,
                                           std::vector<int64_t> local) {
  for (const Shard &s : shards)
    local[s.dim] *= s.parts;
  return local;
}

/// Whether `l` writes the plan's logits.
inline bool producesLogits(const Plan &plan, const Launch &l) {
  return std::find(l.results.begin(), l.results.end(), plan.logits) !=
         l.results.end();
}

/// Rows a KV pool reserves for `tokens` of context: a chunked layer's pool
/// never holds more than one chunk plus a step, so two chunks do.
inline int64_t reservedRows(const Slot &slot, int64_t tokens) {
  return slot.chunk > 0 ? std::min(tokens, 2 * slot.chunk) : tokens;
}

} // namespace kiln::plan

#endif // KILN_RUNTIME_ENGINEPLAN_H
