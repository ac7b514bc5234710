//===- Backend.h - What a runtime backend implements ------------*- C++ -*-===//
//
// The step logic lives once, in Model.cpp: checking the inputs, the row
// count of every value in a step, which launch runs on the last row only,
// trimming and growing each KV slot's positions, what comes back. It hands
// a backend a `Step` that says all of that; the backend only moves data and
// runs kernels. A backend is two classes: one per loaded model (code and
// weights on its device) and one per session (activations and KV pools).
// A new backend (another GPU, a multi-rank wrapper) is a new file and one
// row in the table at the end of this header.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_SRC_BACKEND_H
#define KILN_RUNTIME_SRC_BACKEND_H

#include "Communicator.h"
#include "kiln/runtime/EngineFile.h"
#include "kiln/runtime/EnginePlan.h"
#include "kiln/runtime/Model.h"

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <sys/mman.h>
#include <vector>

namespace kiln {

/// An allocator for large host buffers (a step's arena and KV pools, weights
/// laid out in panels): 2 MiB
/// and up come from their own mapping, 2 MiB-aligned, with transparent huge
/// pages asked for. Under a hypervisor each 4 KiB page fault costs about
/// 10 us: a 512-token prefill of a 243M model spent 60 ms of its 390 ms
/// faulting its fresh arena and KV pages in.
template <typename T> struct HugePageAllocator {
  using value_type = T;
  static constexpr size_t kHuge = size_t(2) << 20;

  HugePageAllocator() = default;
  template <typename U> HugePageAllocator(const HugePageAllocator<U> &) {}

  static size_t rounded(size_t bytes) {
    return (bytes + kHuge - 1) / kHuge * kHuge;
  }
  T *allocate(size_t n) {
    size_t bytes = n * sizeof(T);
    if (bytes < kHuge) {
      if (void *p = std::malloc(bytes))
        return static_cast<T *>(p);
      throw std::bad_alloc();
    }
    size_t size = rounded(bytes);
    void *map = mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
      throw std::bad_alloc();
    // Keep the 2 MiB-aligned part only.
    uintptr_t start = reinterpret_cast<uintptr_t>(map);
    uintptr_t aligned = (start + kHuge - 1) / kHuge * kHuge;
    if (aligned > start)
      munmap(map, aligned - start);
    if (size_t tail = start + size + kHuge - (aligned + size))
      munmap(reinterpret_cast<void *>(aligned + size), tail);
#ifdef MADV_HUGEPAGE
    madvise(reinterpret_cast<void *>(aligned), size, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<T *>(aligned);
  }
  void deallocate(T *p, size_t n) {
    size_t bytes = n * sizeof(T);
    if (bytes < kHuge)
      std::free(p);
    else
      munmap(p, rounded(bytes));
  }
  template <typename U> bool operator==(const HugePageAllocator<U> &) const {
    return true;
  }
  template <typename U> bool operator!=(const HugePageAllocator<U> &) const {
    return false;
  }
};
template <typename T> using HugeVector = std::vector<T, HugePageAllocator<T>>;

/// The plan and its weights in host memory, shared by every backend.
struct BoundPlan {
  plan::Plan plan;
  /// The ranks of a tensor- or pipeline-parallel engine (null for one
  /// rank) and this process's rank among them; its stage's tensor-parallel
  /// group, its rank in that group and its stage.
  std::shared_ptr<Communicator> comm, group;
  int64_t rank = 0, groupRank = 0, stage = 0;
  /// With data-parallel attention replicas: `group` is this rank's replica
  /// (its all-reduces), `exchange` every rank of the stage in rank order
  /// (the rows' gather and scatter), and `replica` its replica's index.
  /// `groupRank` stays the rank in the stage (the weights' shards and the
  /// `rank` input count all of them).
  std::shared_ptr<Communicator> exchange;
  int64_t replica = 0;
  /// The ranks whose stage broadcasts reach this one: every rank, or with
  /// replicas this rank's replica in every stage (in rank order, so stage
  /// s's first rank of it is s * replicaRanks()).
  std::shared_ptr<Communicator> line;
  /// Whether this rank runs launch `l` / binds value `v` (a pipeline rank
  /// holds only its stage's).
  bool runs(const plan::Launch &l) const {
    return l.stage < 0 || l.stage == stage;
  }
  /// Whether this rank is the receiving end of stage_send `l`.
  bool receives(const plan::Launch &l) const {
    return l.kind == plan::LaunchKind::StageSend && stage == l.stage + 1;
  }
  /// Whether launch `l` involves this rank at all: its stage's launches, the
  /// sends it receives, and every broadcast.
  bool takesPart(const plan::Launch &l) const {
    return runs(l) || receives(l) || l.kind == plan::LaunchKind::StageBroadcast;
  }
  bool binds(const plan::Value &v) const {
    return v.stage < 0 || v.stage == stage;
  }
  /// Per value: the host bytes of a weight (mapped from the checkpoint) or
  /// of a concat repacking; null for inputs and buffers.
  std::vector<const void *> hostData;
  std::vector<std::vector<uint8_t>> repacked;
  /// Weights laid out in panels for the host kernels (Value::panel), on
  /// huge pages.
  std::vector<HugeVector<uint8_t>> panelled;
  std::string enginePath;
};

/// One KV slot in a step.
struct SlotStep {
  /// Rows dropped from the front of the pool before the step (a chunked
  /// layer forgets keys before the chunk of the step's first token).
  int64_t dropped = 0;
  /// Rows kept from earlier steps, and rows after this step's are added.
  int64_t kept = 0, total = 0;
  /// Positions of the pool's rows after this step (`total` of them).
  const std::vector<int64_t> *positions = nullptr;
};

/// A launch operand as a kernel sees it in a step.
struct OperandView {
  int64_t value = 0;
  std::vector<int64_t> shape;
  /// Rows to skip at the start of the value's storage (the last-row-only
  /// LM head reads its input's last row).
  int64_t firstRow = 0;
};

/// Everything about one step that does not depend on the device.
struct Step {
  /// 1 for the first step after the session started (names dump files).
  size_t index = 0;
  int64_t tokenCount = 0;
  const int64_t *tokens = nullptr;
  const int64_t *positions = nullptr;
  /// Per plan value: its first extent in this step (inputs and buffers).
  /// Mutable: the received values' extent is set mid-step by the token
  /// dispatch (setReceived).
  mutable std::vector<int64_t> rows;
  /// With attention replicas: every replica's token count in this step
  /// (this rank's replica's is tokenCount; a replica with none is idle:
  /// its ranks only take part in the exchanges).
  std::vector<int64_t> replicaTokens;
  /// With attention replicas, per rank of the stage: the piece of its
  /// replica's rows it moves in an exchange (a replica's rows split evenly
  /// over its ranks), as its first row in the replica's rows, its row
  /// count, and its first row in the gathered rows (replica order).
  std::vector<int64_t> pieceBegin, pieceRows, pieceAt;
  /// Per launch: it computes the last token's row only.
  std::vector<bool> lastRowOnly;
  std::vector<SlotStep> slots;
  OutputMode mode = OutputMode::AllLogits;
  /// Token mode on a backend that picks tokens: {temperature, top_k, top_p,
  /// u}; temperature 0 is the argmax.
  double sample[4] = {0, 0, 1, 0};
  /// KILN_DUMP_DIR or RuntimeOptions::dumpDir; empty: no dumps.
  std::string dumpDir;

  /// The shape of value `id` in this step.
  std::vector<int64_t> shapeOf(const plan::Plan &plan, int64_t id) const;
  /// Operand `i` of launch `launch`.
  OperandView operand(const plan::Plan &plan, size_t launch, size_t i) const;
  /// Whether launch `launch` has nothing to do in this step: an operand
  /// with a token dimension is empty (an idle replica's own rows). Exchanges
  /// always take part.
  bool skips(const plan::Plan &plan, size_t launch) const;
  /// The token dispatch has run: this rank received `pairs` pairs.
  void setReceived(const plan::Plan &plan, int64_t pairs) const;
};

/// The geometry of a token dispatch or combine (plan launch `l`) over the
/// stage's `ranks` ranks: its expert groups of `perGroup` ranks, the
/// experts (`local` per group) and the width of the routed rows.
struct TokenExchangeShape {
  int64_t ranks = 0, groups = 0, perGroup = 0, experts = 0, local = 0;
  int64_t width = 0;
  static TokenExchangeShape of(const plan::Plan &plan, const plan::Launch &l,
                               int64_t ranks);
};

/// What a token dispatch sends, from its replica's routing: per expert
/// group, the pairs of the rank's piece of rows in routing order (by
/// expert, then token); how many of them per group and local expert
/// ([groups * local]); and how many each rank receives per local expert
/// ([ranks * local]: the counts the ranks exchange).
struct TokenSends {
  std::vector<std::vector<int64_t>> toGroup;
  std::vector<int64_t> perGroupExpert, perRankExpert;
};

/// The pairs of rows [begin, end) under the routing `offsets` ([experts +
/// 1]) and `indices` (a token per pair). Both backends send exactly these.
void routeTokenSends(const TokenExchangeShape &shape, const int64_t *indices,
                     const int64_t *offsets, int64_t begin, int64_t end,
                     TokenSends &out);

/// The received order a dispatch defines (by expert, then sender, then the
/// sender's order; docs/dialect.md#kilntoken_dispatch) from the counts
/// received (`received[s * local + e]`): where sender s's pairs of local
/// expert e start in it (`filedAt`, same indexing) and the received
/// offsets ([local + 1]).
void fileReceivedPairs(const TokenExchangeShape &shape,
                       const std::vector<int64_t> &received,
                       std::vector<int64_t> &filedAt,
                       std::vector<int64_t> &offsets);

struct StepOutput {
  /// AllLogits: every row; LastLogits (and Token on a backend that does not
  /// pick tokens): the last row.
  std::vector<float> logits;
  int64_t token = -1;
};

class BackendSession {
public:
  virtual ~BackendSession() = default;
  virtual Status run(const Step &step, StepOutput &out) = 0;
  /// Forgets every row of every KV pool.
  virtual void reset() = 0;
};

class Backend {
public:
  virtual ~Backend() = default;
  virtual Status newSession(int64_t kvTokens,
                            std::unique_ptr<BackendSession> &out) = 0;
  /// Called once the plan's weights are bound in host memory
  /// (BoundPlan::hostData): a device backend copies them over.
  virtual Status uploadWeights() { return {}; }
  /// Whether Token steps are picked on the device (else the step logic
  /// picks from the last logits row).
  virtual bool picksTokens() const { return false; }
};

/// Opens a backend for an engine: its device and code, from the plan alone
/// (the weights are bound later, then uploadWeights() runs). `bound` stays
/// where it is for the backend's lifetime.
using BackendOpener = Status (*)(const EngineFile &engine,
                                 const BoundPlan &bound,
                                 const RuntimeOptions &options,
                                 std::unique_ptr<Backend> &out);

Status openHostBackend(const EngineFile &engine, const BoundPlan &bound,
                       const RuntimeOptions &options,
                       std::unique_ptr<Backend> &out);
Status openCudaBackend(const EngineFile &engine, const BoundPlan &bound,
                       const RuntimeOptions &options,
                       std::unique_ptr<Backend> &out);

struct BackendEntry {
  const char *target;
  Device device;
  const char *deviceName;
  BackendOpener open;
};

/// Every backend this runtime has, by the engine target it runs.
inline constexpr BackendEntry kBackends[] = {
    {kTargetHost, Device::Host, "host", openHostBackend},
    {kTargetSm90a, Device::Cuda, "cuda", openCudaBackend},
};

/// Writes `count` elements of `dtype` at host address `data` with `shape`
/// to <dir>/<step>_<launch>_<kernel>_<result>.npy as float32.
Status dumpValue(const std::string &dir, size_t step, size_t launch,
                 const std::string &kernel, size_t result, plan::DType dtype,
                 const std::vector<int64_t> &shape, const void *data);

/// Human-readable GiB, two decimals.
std::string gib(double bytes);

/// Host memory this process may hold: physical memory, or the address-space
/// limit (ulimit -v) where that is lower.
double hostMemoryLimit();

/// Refuses `bytes` of host memory for `what` before anything is allocated
/// when they exceed hostMemoryLimit(), naming `what` and the size in bytes.
Status checkHostMemory(const std::string &what, double bytes);

} // namespace kiln

#endif // KILN_RUNTIME_SRC_BACKEND_H
