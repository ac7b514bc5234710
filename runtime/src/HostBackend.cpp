//===- HostBackend.cpp - Running host engines
//------------------------------===//
//
// The engine's kernels are a shared object, loaded once per model; each
// session holds its own activations and KV pools, so sessions on one model
// run concurrently.
//
// Kernels are called through their C interface, `_mlir_ciface_<kernel>`,
// with one memref descriptor per argument: {allocated, aligned, offset,
// sizes[rank], strides[rank]}, every field 8 bytes. Outputs follow inputs;
// attention kernels take the positions of their keys after the inputs, and
// their key/value arguments are the KV pool of the call site (cached rows,
// then the new ones, appended here before the launch).
//
//===----------------------------------------------------------------------===//

#include "Backend.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <malloc.h>
#include <map>
#include <new>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

using namespace kiln;

namespace {

using P = void *;
void invoke(void *fn, std::vector<P> &a) {
#define KILN_ARGS_1 a[0]
#define KILN_ARGS_2 KILN_ARGS_1, a[1]
#define KILN_ARGS_3 KILN_ARGS_2, a[2]
#define KILN_ARGS_4 KILN_ARGS_3, a[3]
#define KILN_ARGS_5 KILN_ARGS_4, a[4]
#define KILN_ARGS_6 KILN_ARGS_5, a[5]
#define KILN_ARGS_7 KILN_ARGS_6, a[6]
#define KILN_ARGS_8 KILN_ARGS_7, a[7]
#define KILN_ARGS_9 KILN_ARGS_8, a[8]
#define KILN_ARGS_10 KILN_ARGS_9, a[9]
#define KILN_ARGS_11 KILN_ARGS_10, a[10]
#define KILN_ARGS_12 KILN_ARGS_11, a[11]
#define KILN_TYPES_1 P
#define KILN_TYPES_2 KILN_TYPES_1, P
#define KILN_TYPES_3 KILN_TYPES_2, P
#define KILN_TYPES_4 KILN_TYPES_3, P
#define KILN_TYPES_5 KILN_TYPES_4, P
#define KILN_TYPES_6 KILN_TYPES_5, P
#define KILN_TYPES_7 KILN_TYPES_6, P
#define KILN_TYPES_8 KILN_TYPES_7, P
#define KILN_TYPES_9 KILN_TYPES_8, P
#define KILN_TYPES_10 KILN_TYPES_9, P
#define KILN_TYPES_11 KILN_TYPES_10, P
#define KILN_TYPES_12 KILN_TYPES_11, P
#define KILN_CASE(N)                                                           \
  case N:                                                                      \
    reinterpret_cast<void (*)(KILN_TYPES_##N)>(fn)(KILN_ARGS_##N);             \
    return;
  switch (a.size()) {
    KILN_CASE(1)
    KILN_CASE(2)
    KILN_CASE(3)
    KILN_CASE(4)
    KILN_CASE(5)
    KILN_CASE(6)
    KILN_CASE(7)
    KILN_CASE(8)
    KILN_CASE(9) KILN_CASE(10) KILN_CASE(11) KILN_CASE(12) default : break;
  }
}

/// One memref descriptor: pointers and int64s, 8 bytes each.
std::vector<int64_t> describe(const void *data,
                              const std::vector<int64_t> &shape) {
  size_t rank = shape.size();
  std::vector<int64_t> d(3 + 2 * rank, 0);
  d[0] = d[1] = reinterpret_cast<int64_t>(data);
  int64_t stride = 1;
  for (size_t i = rank; i-- > 0;) {
    d[3 + i] = shape[i];
    d[3 + rank + i] = stride;
    stride *= shape[i];
  }
  return d;
}

} // namespace

namespace {

/// A host KV pool: cached rows in f32 (positions are the step logic's).
struct KvPool {
  int64_t width = 0;
  HugeVector<float> keys, values;
};

class HostModel;

class HostSession final : public BackendSession {
public:
  HostSession(const HostModel &model, int64_t kvTokens);
  ~HostSession() override { printProfile(); }
  Status run(const Step &step, StepOutput &out) override;
  void reset() override {
    for (KvPool &p : pools) {
      p.keys.clear();
      p.values.clear();
    }
  }

private:
  /// The step's activations and the KV pools after it, against the memory
  /// this process may hold, before any of it is allocated.
  Status checkStepMemory(const Step &step) const;
  /// An AllGather or ReduceScatter launch of an engine with attention
  /// replicas.
  Status exchangeRows(const Step &step, const plan::Launch &l);
  /// This rank's piece of its replica's rows in an exchange.
  std::vector<float> piece;
  /// A TokenDispatch or TokenCombine launch (the all-to-all exchange).
  Status dispatchTokens(const Step &step, size_t launch);
  Status combineTokens(const Step &step, size_t launch);
  /// What the last token dispatch sent and received, for its combine: per
  /// expert group, the pairs (indices into this rank's routing) sent to
  /// each of its ranks; per sending rank and local expert, the pairs
  /// received and where the first of them was filed (expert-major order).
  struct TokenExchange {
    TokenSends sent;
    std::vector<int64_t> received, filedAt, offsets;
    std::vector<float> sendBuffer, receiveBuffer;
  } tokenExchange;

  const HostModel &model;
  std::vector<KvPool> pools;
  HugeVector<uint64_t> arena; // 8-byte aligned
  std::vector<std::vector<uint8_t>> owned;
  std::vector<const void *> data; // per value, this step
  std::vector<int32_t> tokens32;
  /// The `rank` input of an expert-parallel engine.
  int64_t rank = 0;
  /// KILN_PROFILE: wall time per kernel and step size, printed at the end.
  struct Total {
    int64_t calls = 0;
    double ms = 0;
  };
  std::map<std::pair<std::string, int64_t>, Total> totals;
  void printProfile() const;
};

class HostModel final : public Backend {
public:
  ~HostModel() override {
    if (library)
      dlclose(library);
  }
  Status newSession(int64_t kvTokens,
                    std::unique_ptr<BackendSession> &out) override;
  /// The kernels read the weights where the checkpoint is mapped; this
  /// faults them in now rather than during the first step.
  Status uploadWeights() override;

  const BoundPlan *bound = nullptr;
  void *library = nullptr;
  /// Per launch: `_mlir_ciface_<kernel>`.
  std::vector<void *> entries;
  /// libomp's omp_set_num_threads, for kernels with threads (null without).
  void (*setThreads)(int) = nullptr;
  int threads = 1;
  /// Time every launch (KILN_PROFILE).
  bool profile = false;
};

/// The CPUs this process may run on, shared among the ranks of an MPI job
/// on this node (OpenMPI and MPICH say how many there are).
int defaultThreads() {
  cpu_set_t set;
  int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  int local = 1;
  for (const char *name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"})
    if (const char *v = std::getenv(name)) {
      local = std::max(1, std::atoi(v));
      break;
    }
  return std::max(1, cpus / local);
}

/// x86-64 levels in order; 0 for none of them.
int levelRank(const std::string &level) {
  if (level == "x86-64-v2")
    return 2;
  if (level == "x86-64-v3")
    return 3;
  if (level == "x86-64-v4")
    return 4;
  return 0;
}

/// Whether this CPU (capped at `cap`, when set) runs code built for x86-64
/// level `level`.
bool cpuSupports(const std::string &level, const std::string &cap) {
  if (!cap.empty() && levelRank(level) > levelRank(cap))
    return false;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (level == "x86-64-v4")
    return __builtin_cpu_supports("x86-64-v4");
  if (level == "x86-64-v3")
    return __builtin_cpu_supports("x86-64-v3");
  if (level == "x86-64-v2")
    return __builtin_cpu_supports("x86-64-v2");
  return level.empty();
#else
  return false;
#endif
}

/// Faults in the pages of every weight mapped from the checkpoint, at load:
/// otherwise the first step pays for a page fault per 4 KiB of weights
/// (about as long as a whole 64-token prefill of a 243M model), one thread
/// at a time.
void prefaultWeights(const BoundPlan &bound) {
  const plan::Plan &plan = bound.plan;
  uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (size_t id = 0; id < plan.values.size(); ++id) {
    const plan::Value &v = plan.values[id];
    if (v.kind != plan::ValueKind::Weight || !bound.hostData[id] ||
        !bound.repacked[id].empty() || !bound.panelled[id].empty())
      continue;
    size_t bytes = plan::elementSize(v.dtype);
    for (int64_t d : v.shape)
      bytes *= static_cast<size_t>(d);
    uintptr_t first = reinterpret_cast<uintptr_t>(bound.hostData[id]);
    uintptr_t begin = first & ~(page - 1), end = first + bytes;
#ifdef MADV_POPULATE_READ
    if (madvise(reinterpret_cast<void *>(begin), end - begin,
                MADV_POPULATE_READ) == 0)
      continue;
#endif
    // Kernels before 5.14: read a byte of each page.
    unsigned char sink = 0;
    for (uintptr_t p = begin; p < end; p += page)
      sink ^=
          *reinterpret_cast<const volatile unsigned char *>(std::max(p, first));
    (void)sink;
  }
}

/// Commits the capacity of a freshly reserved buffer (anonymous memory, so
/// writing zeros changes nothing): a page fault costs about 10 us on these
/// VMs, and a first 512-token prefill of the 243M model otherwise spent 40
/// of its 500 ms faulting in its KV caches and activations.
template <typename T> void prefaultCapacity(HugeVector<T> &buffer) {
  size_t bytes = buffer.capacity() * sizeof(T);
  if (bytes == 0)
    return;
  auto *first = reinterpret_cast<unsigned char *>(buffer.data());
  uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t begin =
      (reinterpret_cast<uintptr_t>(first) + page - 1) & ~(page - 1);
  uintptr_t end = reinterpret_cast<uintptr_t>(first) + bytes;
#ifdef MADV_POPULATE_WRITE
  if (begin < end && madvise(reinterpret_cast<void *>(begin), end - begin,
                             MADV_POPULATE_WRITE) == 0)
    return;
#endif
  for (unsigned char *p = first; p < first + bytes; p += page)
    *reinterpret_cast<volatile unsigned char *>(p) = 0;
}

/// Tokens of a step whose activations a new session maps up front: a
/// prompt's prefill up to llama.cpp's default micro-batch.
constexpr int64_t kPrefaultArenaTokens = 512;

} // namespace

Status kiln::openHostBackend(const EngineFile &engine, const BoundPlan &bound,
                             const RuntimeOptions &options,
                             std::unique_ptr<Backend> &out) {
  const std::string &path = bound.enginePath;
  const std::string &level = bound.plan.hostCpu;
  if (!options.cpuCap.empty() && levelRank(options.cpuCap) == 0)
    return Status::error(StatusCode::InvalidArgument,
                         "KILN_CPU_CAP is '" + options.cpuCap +
                             "', not x86-64-v2, x86-64-v3 or x86-64-v4");
  if (!cpuSupports(level, options.cpuCap))
    return Status::error(
        StatusCode::InvalidEngine,
        path + ": its kernels were compiled for " +
            (level.empty() ? std::string("another kind of CPU")
                           : level + " (" +
                                 (level == "x86-64-v4"   ? "AVX-512"
                                  : level == "x86-64-v3" ? "AVX2 and FMA"
                                                         : "SSE4.2") +
                                 ")") +
            ", which this CPU lacks: compile it again on this machine "
            "(kilnc's default, --cpu native) or for a level it has "
            "(--cpu x86-64-v2, x86-64-v3)");
  auto kernels = engine.sections.find(SectionKind::HostKernels);
  if (kernels == engine.sections.end())
    return Status::error(StatusCode::InvalidEngine,
                         path + ": engine lacks its kernels");
  auto model = std::make_unique<HostModel>();
  model->bound = &bound;
  // dlopen needs a file. An anonymous one (memfd) leaves nothing behind
  // however the process ends; where there is none, a temporary file in
  // $TMPDIR, removed as soon as it is loaded.
  const std::string &bytes = kernels->second;
  auto writeAll = [&](int fd) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return false;
      done += static_cast<size_t>(n);
    }
    return true;
  };
  int memfd = memfd_create("kiln-kernels", MFD_CLOEXEC);
  if (memfd >= 0) {
    if (!writeAll(memfd)) {
      ::close(memfd);
      return Status::error(StatusCode::Internal,
                           "cannot write the kernels to an anonymous file: " +
                               std::string(std::strerror(errno)));
    }
    std::string self = "/proc/self/fd/" + std::to_string(memfd);
    model->library = dlopen(self.c_str(), RTLD_NOW | RTLD_LOCAL);
    ::close(memfd);
  } else {
    const char *tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp && *tmp ? tmp : "/tmp") + "/kiln-kernels-XXXXXX";
    std::vector<char> name(pattern.begin(), pattern.end());
    name.push_back('\0');
    int fd = mkstemp(name.data());
    if (fd < 0)
      return Status::error(StatusCode::Internal,
                           "cannot create a temporary file for the kernels (" +
                               pattern + "): " + std::strerror(errno));
    bool written = writeAll(fd);
    ::close(fd);
    if (!written) {
      std::remove(name.data());
      return Status::error(StatusCode::Internal,
                           std::string("cannot write the kernels to ") +
                               name.data());
    }
    model->library = dlopen(name.data(), RTLD_NOW | RTLD_LOCAL);
    std::remove(name.data());
  }
  if (!model->library) {
    const char *why = dlerror();
    return Status::error(
        StatusCode::InvalidEngine,
        path + ": cannot load its kernels: " + (why ? why : "unknown error"));
  }
  for (const plan::Launch &l : bound.plan.launches) {
    if (l.kind != plan::LaunchKind::Kernel) {
      model->entries.push_back(nullptr);
      continue;
    }
    std::string symbol = "_mlir_ciface_" + l.kernel;
    void *entry = dlsym(model->library, symbol.c_str());
    if (!entry)
      return Status::error(StatusCode::InvalidEngine,
                           path + ": kernel '" + l.kernel + "' is missing");
    if (l.args.size() + l.attention.size() + l.results.size() > 12)
      return Status::error(StatusCode::InvalidEngine,
                           path + ": kernel '" + l.kernel +
                               "' takes too many arguments");
    model->entries.push_back(entry);
  }
  // dlsym on the library's handle also searches what it links: libomp.
  model->setThreads = reinterpret_cast<void (*)(int)>(
      dlsym(model->library, "omp_set_num_threads"));
  model->threads = options.threads > 0 ? options.threads : defaultThreads();
  model->profile = options.profile;
  // The kernels allocate their temporaries (a GEMM's result before its
  // epilogue: megabytes at prefill) with malloc on every launch. glibc
  // serves those from fresh mmaps and returns them on free, so each launch
  // faulted them in again (about 10 us a page under a hypervisor: a third
  // of a 64-token prefill). Keeping them on the heap up to 32 MiB (glibc's
  // largest threshold) and not trimming it lets launches reuse the pages.
  // This is process-wide, and only raises glibc's defaults.
  static bool heapKept = [] {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    return true;
  }();
  (void)heapKept;
  out = std::move(model);
  return {};
}

Status HostModel::uploadWeights() {
  prefaultWeights(*bound);
  return {};
}

Status HostModel::newSession(int64_t kvTokens,
                             std::unique_ptr<BackendSession> &out) {
  if (kvTokens > 0) {
    // Host pools hold f32 keys and values and i64 positions.
    double bytes = 0;
    for (const plan::Slot &info : bound->plan.slots)
      bytes += double(plan::reservedRows(info, kvTokens)) *
               (2.0 * info.width * sizeof(float) + sizeof(int64_t));
    if (Status s = checkHostMemory(bound->enginePath + ": the KV caches for " +
                                       std::to_string(kvTokens) + " tokens",
                                   bytes);
        !s.ok())
      return s;
  }
  out = std::make_unique<HostSession>(*this, kvTokens);
  return {};
}

HostSession::HostSession(const HostModel &model, int64_t kvTokens)
    : model(model) {
  const plan::Plan &plan = model.bound->plan;
  for (const plan::Slot &info : plan.slots) {
    KvPool pool;
    pool.width = info.width;
    if (kvTokens > 0) {
      size_t rows = static_cast<size_t>(plan::reservedRows(info, kvTokens));
      pool.keys.reserve(rows * info.width);
      pool.values.reserve(rows * info.width);
      prefaultCapacity(pool.keys);
      prefaultCapacity(pool.values);
    }
    pools.push_back(std::move(pool));
  }
  if (kvTokens > 0) {
    int64_t tokens = std::min(kvTokens, kPrefaultArenaTokens);
    arena.reserve((plan.arenaBytesPerToken * tokens + 7) / 8);
    prefaultCapacity(arena);
  }
  owned.resize(plan.values.size());
  data = model.bound->hostData;
}

Status HostSession::checkStepMemory(const Step &step) const {
  const plan::Plan &plan = model.bound->plan;
  const BoundPlan &bound = *model.bound;
  double t = double(step.tokenCount);
  double activations = double(plan.arenaBytesPerToken) * t;
  std::vector<bool> ownPool(pools.size(), false);
  for (const plan::Launch &l : plan.launches) {
    if (!bound.takesPart(l))
      continue;
    for (const plan::AttentionUse &a : l.attention)
      ownPool[a.slot] = true;
    for (int64_t id : l.results) {
      if (plan.values[id].arenaOffset >= 0)
        continue;
      double n = double(plan::elementSize(plan.values[id].dtype));
      for (int64_t d : step.shapeOf(plan, id))
        n *= double(d);
      activations += n;
    }
  }
  double kv = 0;
  for (size_t i = 0; i < pools.size(); ++i)
    if (ownPool[i])
      kv += double(step.slots[i].total) * 2.0 * double(pools[i].width) *
            sizeof(float);
  return checkHostMemory(bound.enginePath + ": a " +
                             std::to_string(step.tokenCount) +
                             "-token step's activations and KV caches",
                         activations + kv);
}

void HostSession::printProfile() const {
  if (totals.empty())
    return;
  std::fprintf(stderr, "kiln-profile: %-36s %7s %6s %11s %11s\n", "function",
               "tokens", "calls", "total_ms", "mean_us");
  for (const auto &[key, total] : totals)
    std::fprintf(stderr, "kiln-profile: %-36s %7lld %6lld %11.3f %11.2f\n",
                 key.first.c_str(), static_cast<long long>(key.second),
                 static_cast<long long>(total.calls), total.ms,
                 1000.0 * total.ms / total.calls);
}

Status HostSession::exchangeRows(const Step &step, const plan::Launch &l) {
  // Each rank moves its piece of its replica's rows: the gather takes every
  // piece of every replica (replica order is the stage's rank order), and
  // the scatter sums each rank's piece over the stage, after which a
  // replica's ranks put their pieces together.
  const BoundPlan &bound = *model.bound;
  const plan::Plan &plan = bound.plan;
  int64_t perReplica = plan.replicaRanks();
  size_t width = static_cast<size_t>(plan.values[l.args[0]].shape[1]);
  std::vector<size_t> counts, replicaCounts;
  for (int64_t k = 0; k < plan.tensorParallel; ++k) {
    counts.push_back(static_cast<size_t>(step.pieceRows[k]) * width);
    if (k / perReplica == bound.replica)
      replicaCounts.push_back(counts.back());
  }
  int64_t me = bound.groupRank;
  const float *in = static_cast<const float *>(data[l.args[0]]);
  float *out = static_cast<float *>(const_cast<void *>(data[l.results[0]]));
  if (l.kind == plan::LaunchKind::AllGather)
    return bound.exchange->allGather(in + step.pieceBegin[me] * width, out,
                                     counts);
  piece.resize(counts[me]);
  if (Status s = bound.exchange->reduceScatterSum(in, piece.data(), counts);
      !s.ok())
    return s;
  return bound.group->allGather(piece.data(), out, replicaCounts);
}

Status HostSession::dispatchTokens(const Step &step, size_t launch) {
  // Pairs go out sorted as the router sorted them (by expert, then token),
  // the pairs of one expert group as one block sent to each of the group's
  // ranks; each pair is its row followed by its gate. The receiver files
  // them by expert, then sender, then the sender's order (the reference's
  // order, docs/dialect.md#kilntoken_dispatch).
  const BoundPlan &bound = *model.bound;
  const plan::Plan &plan = bound.plan;
  const plan::Launch &l = plan.launches[launch];
  Communicator &world = *bound.exchange;
  int64_t me = world.rank();
  TokenExchangeShape shape = TokenExchangeShape::of(plan, l, world.size());
  int64_t ranks = shape.ranks, perGroup = shape.perGroup;
  int64_t width = shape.width, local = shape.local;
  int64_t t = step.tokenCount;
  const float *rows = static_cast<const float *>(data[l.args[0]]);
  const int64_t *indices = static_cast<const int64_t *>(data[l.args[1]]);
  const int64_t *offsets = static_cast<const int64_t *>(data[l.args[2]]);
  const float *gates = static_cast<const float *>(data[l.args[3]]);
  int64_t begin = step.pieceBegin[me], end = begin + step.pieceRows[me];

  TokenExchange &x = tokenExchange;
  // An idle replica's rank routed nothing this step (its router skipped):
  // it sends nothing and only receives.
  routeTokenSends(shape, indices, offsets, t > 0 ? begin : 0, t > 0 ? end : 0,
                  x.sent);
  if (Status s = world.allToAllCounts(x.sent.perRankExpert,
                                      static_cast<size_t>(local), x.received);
      !s.ok())
    return s;
  size_t pairWidth = static_cast<size_t>(width) + 1;
  std::vector<size_t> sendCounts, receiveCounts;
  x.sendBuffer.clear();
  for (int64_t r = 0; r < ranks; ++r) {
    const std::vector<int64_t> &sent = x.sent.toGroup[r / perGroup];
    for (int64_t p : sent) {
      const float *row = rows + indices[p] * width;
      x.sendBuffer.insert(x.sendBuffer.end(), row, row + width);
      x.sendBuffer.push_back(gates[p]);
    }
    sendCounts.push_back(sent.size() * pairWidth);
    int64_t from = 0;
    for (int64_t e = 0; e < local; ++e)
      from += x.received[r * local + e];
    receiveCounts.push_back(static_cast<size_t>(from) * pairWidth);
  }
  size_t pairs = 0;
  for (size_t c : receiveCounts)
    pairs += c / pairWidth;
  x.receiveBuffer.resize(pairs * pairWidth);
  if (Status s = world.allToAll(x.sendBuffer.data(), sendCounts,
                                x.receiveBuffer.data(), receiveCounts);
      !s.ok())
    return s;

  step.setReceived(plan, static_cast<int64_t>(pairs));
  for (int64_t id : l.results) {
    size_t n = plan::elementSize(plan.values[id].dtype);
    for (int64_t d : step.shapeOf(plan, id))
      n *= static_cast<size_t>(d);
    owned[id].resize(std::max<size_t>(n, 1));
    data[id] = owned[id].data();
  }
  float *gotRows = static_cast<float *>(const_cast<void *>(data[l.results[0]]));
  int64_t *pairIndices =
      static_cast<int64_t *>(const_cast<void *>(data[l.results[1]]));
  int64_t *gotOffsets =
      static_cast<int64_t *>(const_cast<void *>(data[l.results[2]]));
  float *gotGates =
      static_cast<float *>(const_cast<void *>(data[l.results[3]]));
  // Sender s's block arrives sender-major (by expert within it); its pairs
  // of expert e are filed at filedAt[s][e] of the expert-major order.
  fileReceivedPairs(shape, x.received, x.filedAt, x.offsets);
  std::copy(x.offsets.begin(), x.offsets.end(), gotOffsets);
  size_t arrived = 0;
  for (int64_t s = 0; s < ranks; ++s)
    for (int64_t e = 0; e < local; ++e)
      for (int64_t k = 0; k < x.received[s * local + e]; ++k, ++arrived) {
        int64_t at = x.filedAt[s * local + e] + k;
        const float *pair = x.receiveBuffer.data() + arrived * pairWidth;
        std::copy(pair, pair + width, gotRows + at * width);
        gotGates[at] = pair[width];
        pairIndices[at] = at;
      }
  return {};
}

Status HostSession::combineTokens(const Step &step, size_t launch) {
  // The received pairs' outputs go back to their senders in the order they
  // came (per sender, by expert); a sender adds, pair by pair in its
  // routing order, the outputs of every rank of the pair's group.
  const BoundPlan &bound = *model.bound;
  const plan::Plan &plan = bound.plan;
  const plan::Launch &l = plan.launches[launch];
  Communicator &world = *bound.exchange;
  TokenExchangeShape shape = TokenExchangeShape::of(plan, l, world.size());
  int64_t ranks = shape.ranks, groups = shape.groups, perGroup = shape.perGroup,
          width = shape.width, local = shape.local;
  const float *outputs = static_cast<const float *>(data[l.args[0]]);
  const int64_t *indices = static_cast<const int64_t *>(data[l.args[2]]);
  TokenExchange &x = tokenExchange;
  if (x.received.size() != static_cast<size_t>(ranks * local))
    return Status::error(StatusCode::Internal,
                         "a token combine without its dispatch");

  // Received order is expert-major; senders get theirs sender-major.
  std::vector<size_t> sendCounts, receiveCounts;
  x.sendBuffer.clear();
  for (int64_t s = 0; s < ranks; ++s) {
    size_t n = 0;
    for (int64_t e = 0; e < local; ++e) {
      const float *block = outputs + x.filedAt[s * local + e] * width;
      size_t count = static_cast<size_t>(x.received[s * local + e]);
      x.sendBuffer.insert(x.sendBuffer.end(), block, block + count * width);
      n += count;
    }
    sendCounts.push_back(n * static_cast<size_t>(width));
    receiveCounts.push_back(x.sent.toGroup[s / perGroup].size() *
                            static_cast<size_t>(width));
  }
  size_t total = 0;
  for (size_t c : receiveCounts)
    total += c;
  x.receiveBuffer.resize(total);
  if (Status s = world.allToAll(x.sendBuffer.data(), sendCounts,
                                x.receiveBuffer.data(), receiveCounts);
      !s.ok())
    return s;

  int64_t t = step.tokenCount;
  float *out = static_cast<float *>(const_cast<void *>(data[l.results[0]]));
  std::fill(out, out + t * width, 0.0f);
  std::vector<size_t> fromRank(static_cast<size_t>(ranks), 0);
  for (int64_t r = 1; r < ranks; ++r)
    fromRank[r] = fromRank[r - 1] + receiveCounts[r - 1];
  for (int64_t g = 0; g < groups; ++g) {
    const std::vector<int64_t> &sent = x.sent.toGroup[g];
    for (size_t q = 0; q < sent.size(); ++q) {
      float *row = out + indices[sent[q]] * width;
      for (int64_t r = g * perGroup; r < (g + 1) * perGroup; ++r) {
        const float *got = x.receiveBuffer.data() + fromRank[r] + q * width;
        for (int64_t c = 0; c < width; ++c)
          row[c] += got[c];
      }
    }
  }
  return {};
}

Status HostSession::run(const Step &step, StepOutput &out) {
  const plan::Plan &plan = model.bound->plan;
  int64_t t = step.tokenCount;
  tokens32.assign(step.tokens, step.tokens + t);
  for (size_t id = 0; id < plan.values.size(); ++id) {
    const plan::Value &v = plan.values[id];
    if (v.kind != plan::ValueKind::Input)
      continue;
    rank = model.bound->groupRank;
    data[id] = v.input == "rank" ? static_cast<const void *>(&rank)
               : v.input == "positions"
                   ? static_cast<const void *>(step.positions)
               : v.dtype == plan::DType::I32
                   ? static_cast<const void *>(tokens32.data())
                   : static_cast<const void *>(step.tokens);
  }
  if (Status s = checkStepMemory(step); !s.ok())
    return s;
  auto stepBegin = std::chrono::steady_clock::now();
  double kernelMs = 0;
  // The thread count is per calling thread in OpenMP: set it for the
  // thread running this session.
  if (model.setThreads)
    model.setThreads(model.threads);
  // One arena for the step's activations, laid out by the plan.
  arena.resize((plan.arenaBytesPerToken * t + 7) / 8);
  uint8_t *base = reinterpret_cast<uint8_t *>(arena.data());
  for (size_t i = 0; i < pools.size(); ++i) {
    KvPool &p = pools[i];
    // Another pipeline stage's pool stays empty.
    size_t drop = std::min(static_cast<size_t>(step.slots[i].dropped) * p.width,
                           p.keys.size());
    p.keys.erase(p.keys.begin(), p.keys.begin() + drop);
    p.values.erase(p.values.begin(), p.values.begin() + drop);
  }

  std::vector<std::vector<int64_t>> descriptors;
  std::vector<P> pointers;
  const BoundPlan &bound = *model.bound;
  for (size_t li = 0; li < plan.launches.size(); ++li) {
    const plan::Launch &l = plan.launches[li];
    if (!bound.takesPart(l))
      continue; // another pipeline stage's
    // An idle replica's ranks (no tokens of their own in this step) run only
    // the exchanges and the kernels on every replica's rows; a step where
    // every replica is idle runs nothing.
    if (step.skips(plan, li))
      continue;
    bool receives = bound.receives(l);
    for (int64_t id : l.results) {
      const plan::Value &v = plan.values[id];
      if (v.arenaOffset >= 0) {
        data[id] = base + v.arenaOffset * t;
        continue;
      }
      size_t n = plan::elementSize(v.dtype);
      for (int64_t d : step.shapeOf(plan, id))
        n *= static_cast<size_t>(d);
      owned[id].resize(n);
      data[id] = owned[id].data();
    }
    if (l.kind == plan::LaunchKind::AllReduce) {
      // The ranks' partial sums into the result (a buffer of its own: the
      // argument is still live when it is placed).
      size_t count = 1;
      for (int64_t d : step.shapeOf(plan, l.results[0]))
        count *= static_cast<size_t>(d);
      float *sum = static_cast<float *>(const_cast<void *>(data[l.results[0]]));
      const float *part = static_cast<const float *>(data[l.args[0]]);
      if (Status s = bound.group->allReduceSum(part, sum, count); !s.ok())
        return s;
      continue;
    }
    if (l.kind == plan::LaunchKind::GatherPartials) {
      // Every rank's partial sum as a block of the result, or above the
      // launch's limit their sum as the only block.
      size_t count = static_cast<size_t>(t) *
                     static_cast<size_t>(plan.values[l.args[0]].shape[1]);
      float *out = static_cast<float *>(const_cast<void *>(data[l.results[0]]));
      const float *part = static_cast<const float *>(data[l.args[0]]);
      Status s = l.gathersPartials(t)
                     ? bound.group->allGather(
                           part, out,
                           std::vector<size_t>(
                               static_cast<size_t>(plan.replicaRanks()), count))
                     : bound.group->allReduceSum(part, out, count);
      if (!s.ok())
        return s;
      continue;
    }
    if (l.kind == plan::LaunchKind::AllGather ||
        l.kind == plan::LaunchKind::ReduceScatter) {
      if (Status s = exchangeRows(step, l); !s.ok())
        return s;
      continue;
    }
    if (l.kind == plan::LaunchKind::TokenDispatch ||
        l.kind == plan::LaunchKind::TokenCombine) {
      Status s = l.kind == plan::LaunchKind::TokenDispatch
                     ? dispatchTokens(step, li)
                     : combineTokens(step, li);
      if (!s.ok())
        return s;
      continue;
    }
    if (l.kind == plan::LaunchKind::StageSend ||
        l.kind == plan::LaunchKind::StageBroadcast) {
      size_t count = 1;
      for (int64_t d : step.shapeOf(plan, l.results[0]))
        count *= static_cast<size_t>(d);
      float *out = static_cast<float *>(const_cast<void *>(data[l.results[0]]));
      const float *in = static_cast<const float *>(data[l.args[0]]);
      int64_t tp = plan.tensorParallel;
      Status s;
      if (l.kind == plan::LaunchKind::StageBroadcast)
        s = bound.line->broadcast(out, count, l.stage * plan.replicaRanks());
      else if (receives)
        s = bound.comm->receive(out, count, bound.rank - tp);
      else
        s = bound.comm->send(in, count, bound.rank + tp);
      if (!s.ok())
        return s;
      continue;
    }
    descriptors.clear();
    for (size_t i = 0; i < l.args.size(); ++i) {
      OperandView view = step.operand(plan, li, i);
      const uint8_t *bytes = static_cast<const uint8_t *>(data[view.value]);
      bytes += view.firstRow * plan::rowBytes(plan.values[view.value]);
      descriptors.push_back(describe(bytes, view.shape));
    }
    // Attention: append the new keys and values to the call site's pool and
    // pass the whole pool (cached rows, then the new ones) with its
    // positions.
    for (const plan::AttentionUse &a : l.attention) {
      KvPool &pool = pools[a.slot];
      const float *keys = static_cast<const float *>(data[l.args[a.keyArg]]);
      const float *values =
          static_cast<const float *>(data[l.args[a.valueArg]]);
      pool.keys.insert(pool.keys.end(), keys, keys + t * pool.width);
      pool.values.insert(pool.values.end(), values, values + t * pool.width);
      int64_t rows = step.slots[a.slot].total;
      descriptors[a.keyArg] = describe(pool.keys.data(), {rows, pool.width});
      descriptors[a.valueArg] =
          describe(pool.values.data(), {rows, pool.width});
    }
    for (const plan::AttentionUse &a : l.attention)
      descriptors.push_back(describe(step.slots[a.slot].positions->data(),
                                     {step.slots[a.slot].total}));
    for (int64_t id : l.results)
      descriptors.push_back(describe(data[id], step.shapeOf(plan, id)));
    pointers.clear();
    for (auto &d : descriptors)
      pointers.push_back(d.data());
    if (model.profile) {
      auto begin = std::chrono::steady_clock::now();
      invoke(model.entries[li], pointers);
      Total &total = totals[{l.kernel, t}];
      double ms = std::chrono::duration<double, std::milli>(
                      std::chrono::steady_clock::now() - begin)
                      .count();
      total.calls += 1;
      total.ms += ms;
      kernelMs += ms;
    } else {
      invoke(model.entries[li], pointers);
    }
    if (!step.dumpDir.empty())
      for (size_t r = 0; r < l.results.size(); ++r) {
        int64_t id = l.results[r];
        if (Status s = dumpValue(step.dumpDir, step.index, li, l.kernel, r,
                                 plan.values[id].dtype, step.shapeOf(plan, id),
                                 data[id]);
            !s.ok())
          return s;
      }
  }
  const float *logits = static_cast<const float *>(data[plan.logits]);
  int64_t vocab = plan.vocab();
  int64_t rows = step.rows[plan.logits];
  int64_t from = step.mode == OutputMode::AllLogits ? 0 : rows - 1;
  if (rows > 0)
    out.logits.assign(logits + from * vocab, logits + rows * vocab);
  else
    out.logits.clear(); // an idle replica's step
  if (model.profile) {
    // What the step spent around its kernels: KV appends, buffers, logits.
    Total &total = totals[{"(outside kernels)", t}];
    total.calls += 1;
    total.ms += std::chrono::duration<double, std::milli>(
                    std::chrono::steady_clock::now() - stepBegin)
                    .count() -
                kernelMs;
  }
  return {};
}
