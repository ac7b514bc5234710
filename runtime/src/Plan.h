//===- Plan.h - An engine's plan, parsed ------------------------*- C++ -*-===//
//
// The plan section of an engine (docs/engine-format.md), shared by the host
// and the CUDA backends: values, launches (with their GPU steps on sm_90a
// engines), KV slots, the logits value.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_SRC_PLAN_H
#define KILN_RUNTIME_SRC_PLAN_H

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {
class Checkpoint;
}

namespace kiln::plan {

enum class ValueKind { Input, Weight, Concat, Buffer };

struct Value {
  ValueKind kind;
  std::string input; // "tokens" / "positions"
  std::string name;  // checkpoint tensor
  std::string dtype;
  std::vector<int64_t> shape; // -1: rows set per run
  int64_t rowsPerToken = 1;
  std::vector<int64_t> of; // concat inputs
  int64_t axis = 0;
  /// Offset in the activation arena, per token of the step; -1: own storage.
  int64_t arenaOffset = -1;
  // Host storage, set by the host backend and by weight binding.
  const void *data = nullptr;
  std::vector<uint8_t> owned;
  int64_t rows = 0; // current dynamic extent
};

struct AttentionUse {
  int64_t keyArg, valueArg, slot;
};

struct GpuExtent {
  int64_t rowsOf = -1, perRow = 0, constant = 1, divisor = 1;
  /// Blocks per SM (persistent kernels), when positive.
  int64_t perSm = 0;
};

struct GpuParam {
  enum class Kind {
    Memref,
    TensorMap,
    KeyPositions,
    KvPool,
    KeyCount,
    Scratch
  } kind;
  int64_t operand = 0;
  int64_t boxCols = 0, boxRows = 0;
  /// A 3-D tensor map (box {boxCols, boxRows, 1}) instead of a folded 2-D
  /// one.
  bool box3 = false;
  /// A tensor map over the KV pool bound to the operand.
  bool pool = false;
  int64_t perRow = 0;
  /// Scratch element type: F32 or I64 (8 or 4 bytes per element).
  bool floatScratch = false;
};

struct GpuVariant {
  /// Empty: this variant launches nothing.
  std::string function;
  int64_t block = 0, sharedBytes = 0;
  GpuExtent grid[3];
  std::vector<GpuParam> params;
  int64_t selectOperand = -1, maxRows = -1;
};

struct Launch {
  std::string kernel;
  void *entry = nullptr;
  std::vector<int64_t> args, results;
  std::vector<AttentionUse> attention;
  /// sm_90a: steps, each a list of variants.
  std::vector<std::vector<GpuVariant>> gpu;
  /// Operand `i`: args then results.
  int64_t operand(size_t i) const {
    return i < args.size() ? args[i] : results[i - args.size()];
  }
  size_t operandCount() const { return args.size() + results.size(); }
};

struct Slot {
  int64_t width = 0;
  /// Chunk size of a chunked layer (0: full attention keeps everything).
  int64_t chunk = 0;
};

struct Plan {
  std::vector<Value> values;
  std::vector<Launch> launches;
  std::vector<Slot> slotInfo;
  int64_t logits = -1;
  int64_t vocab = 0;
  int64_t arenaBytesPerToken = 0;
  std::vector<int64_t> eos;
  /// sm_90a: the greedy-sampling GPU function (argmax of the last logits
  /// row), or empty.
  std::string argmaxFunction;
  int64_t argmaxBlock = 0;
  /// sm_90a: the temperature / top-k / top-p sampling GPU function, or
  /// empty.
  std::string sampleFunction;
  int64_t sampleBlock = 0;

  /// Parses and checks the plan; `path` names the engine in errors.
  bool parse(const std::string &text, const std::string &path,
             std::string &error);
  /// Binds checkpoint tensors to the weight values (zero-copy) and builds
  /// the concat repackings in host memory.
  bool bindWeights(const Checkpoint &checkpoint, std::string &error);
};

size_t elementSize(const std::string &dtype);

/// Bytes of one row of a value (its first extent excluded).
inline size_t rowBytes(const Value &v) {
  size_t n = elementSize(v.dtype);
  for (size_t i = 1; i < v.shape.size(); ++i)
    n *= static_cast<size_t>(v.shape[i]);
  return n;
}

/// KILN_DUMP_DIR: when set, both backends write every launch's results as
/// float32 .npy files named <step>_<launch>_<kernel>_<result>.npy (steps
/// counted from the session's start), so the
/// first launch where two engines of one model disagree can be found
/// (bench/device/compare_dumps.py). Returns the folder or "".
std::string dumpDirectory();

/// Writes `count` elements of `dtype` at host address `data` with `shape`
/// to <dir>/<launch>_<kernel>_<result>.npy as float32.
bool dumpValue(const std::string &dir, size_t step, size_t launch,
               const std::string &kernel, size_t result,
               const std::string &dtype, const std::vector<int64_t> &shape,
               const void *data, std::string &error);

/// Whether `l` writes the plan's logits.
inline bool producesLogits(const Plan &plan, const Launch &l) {
  for (int64_t id : l.results)
    if (id == plan.logits)
      return true;
  return false;
}

/// Rows a KV pool reserves for `tokens` of context: a chunked layer's pool
/// never holds more than one chunk plus a step, so two chunks do.
inline int64_t reservedRows(const Slot &slot, int64_t tokens) {
  return slot.chunk > 0 ? std::min(tokens, 2 * slot.chunk) : tokens;
}

/// Index of the first key position of a chunked pool to keep when a step
/// starts at `firstPosition`.
template <typename Positions>
size_t chunkedKeep(const Positions &positions, int64_t chunk,
                   int64_t firstPosition) {
  int64_t chunkStart = firstPosition / chunk * chunk;
  size_t drop = 0;
  while (drop < positions.size() && positions[drop] < chunkStart)
    ++drop;
  return drop;
}

} // namespace kiln::plan

#endif // KILN_RUNTIME_SRC_PLAN_H
