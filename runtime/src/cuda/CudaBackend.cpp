//===- CudaBackend.cpp - Running sm_90a engines on one GPU ---------------===//
//
// Per model: the driver, a context on GPU 0, the engine's module and the
// weights in device memory. Per session: a stream, the activation arena,
// the KV pools, tensor maps and the decode graph, so sessions on one model
// are independent.
//
// Per step: the KV pools make room (a pool grows by doubling; a chunked
// layer drops the keys before the chunk of the step's first token by moving
// its start), the inputs and the key counts are copied up, every launch of
// the plan runs its GPU steps on one stream (choosing the decode or prefill
// variant by row count; the attention kernels append the new keys and
// values themselves), and the logits come back. Activations live in one
// device arena laid out by the plan. Kernel parameters follow the lowered
// signatures: each memref is expanded into (allocated, aligned, offset,
// sizes, strides), each TMA descriptor is a pointer to a 128-byte
// CUtensorMap encoded here and cached while its tensor does not move.
//
// Launches are prepared first (variants, grids, parameters: everything
// that allocates or copies), then enqueued. A decode step (one token)
// whose prepared launches equal the previous step's replays a CUDA graph
// captured from them: KV pools are passed by capacity and key counts are
// read on the device, so consecutive decode steps have identical
// parameters until a pool grows or a chunk is dropped, which recaptures.
// RuntimeOptions::cudaGraphs (KILN_CUDA_GRAPH=0) turns graphs off. A plan
// with the all-to-all token exchange runs a step in parts: each exchange
// waits for the stream and needs the routing on the host, so the launches
// between exchanges are prepared and enqueued (or replayed, one graph per
// part) in turn.
//
// RuntimeOptions::profile (KILN_PROFILE=1) times every launch with events and
// prints, when the session ends, the time per GPU function and step size
// (bench/device.sh reads it).
//
// A tensor- or pipeline-parallel engine runs one process per GPU under
// mpirun: the GPU of the process's local rank, NCCL (loaded at run time)
// communicators for the whole world and for the stage's tensor-parallel
// group, their unique ids handed out over MPI. Collectives are enqueued on
// the session's stream like kernels (so a decode step with all-reduces is
// still captured as one graph); while a step is waited for, NCCL's
// asynchronous errors are polled and a failed or stalled collective aborts
// the communicators instead of hanging.
//
// Errors name the CUDA call and the kernel. Launch errors surface at once;
// faults inside a kernel at the end of the step, or at the kernel itself
// with RuntimeOptions::syncEachLaunch (KILN_CUDA_SYNC=1: one
// synchronization per launch).
//
//===----------------------------------------------------------------------===//

#include "../Backend.h"
#include "../Communicator.h"
#include "Nccl.h"
#include "kiln/runtime/CudaDriver.h"
#include "kiln/runtime/Sampler.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>
#include <tuple>

using namespace kiln;
using namespace kiln::cuda;
using plan::GpuLaunch;
using plan::GpuParam;

namespace {

struct DeviceBuffer {
  CUdeviceptr ptr = 0;
  size_t bytes = 0;
};

struct GpuSlot {
  int64_t width = 0, chunk = 0, elementBytes = 2;
  DeviceBuffer keys, values, positions;
  int64_t start = 0, count = 0, capacity = 0;
  int64_t reserved = 0; // rows the session reserved: pools never shrink below
  /// Whether a launch this rank runs reads the pool (a pipeline rank holds
  /// only its stage's).
  bool used = true;
};

struct alignas(64) TensorMapBytes {
  uint8_t bytes[128];
};

struct CachedMap {
  DeviceBuffer device;
  CUdeviceptr source = 0;
  int64_t rows = -1;
};

/// (allocated, aligned, offset, sizes, strides) of a row-major tensor.
void appendDescriptor(std::vector<int64_t> &fields, CUdeviceptr ptr,
                      const std::vector<int64_t> &shape) {
  fields.push_back(static_cast<int64_t>(ptr));
  fields.push_back(static_cast<int64_t>(ptr));
  fields.push_back(0);
  for (int64_t d : shape)
    fields.push_back(d);
  int64_t stride = 1;
  std::vector<int64_t> strides(shape.size());
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  fields.insert(fields.end(), strides.begin(), strides.end());
}

/// Device memory, allocated and (optionally) poisoned.
struct Allocator {
  Driver &driver;
  bool poison;

  bool check(CUresult r, const std::string &call, std::string &error) {
    if (r == CUDA_SUCCESS)
      return true;
    error = driver.describe(call.c_str(), r);
    return false;
  }

  /// Grows `b` to at least `bytes` (contents are not kept).
  bool ensure(DeviceBuffer &b, size_t bytes, std::string &error) {
    if (b.bytes >= bytes && b.ptr)
      return true;
    if (b.ptr)
      driver.cuMemFree(b.ptr);
    b = {};
    size_t size = std::max<size_t>(bytes, 256);
    if (!check(driver.cuMemAlloc(&b.ptr, size),
               "cuMemAlloc(" + std::to_string(size) + " bytes)", error))
      return false;
    b.bytes = size;
    // Poisoned fresh device memory reads as NaN (0xff bytes), as the
    // emulator's does, so a kernel that reads what nobody wrote (a KV pool
    // row past the keys, say) shows it on a GPU too.
    if (poison && !check(driver.cuMemsetD8(b.ptr, 0xff, size),
                         "cuMemsetD8(poison)", error))
      return false;
    return true;
  }

  void release(DeviceBuffer &b) {
    if (b.ptr)
      driver.cuMemFree(b.ptr);
    b = {};
  }
};

class CudaModel;

class CudaSession final : public BackendSession {
public:
  CudaSession(CudaModel &model);
  ~CudaSession() override;
  bool open(int64_t kvTokens, std::string &error);
  Status run(const Step &step, StepOutput &out) override;
  void reset() override {
    for (GpuSlot &slot : slots)
      slot.start = slot.count = 0;
  }

private:
  /// What a prepared entry enqueues: a kernel, or an NCCL collective.
  enum class Op {
    Kernel,
    AllReduce,
    Send,
    Receive,
    Broadcast,
    AllGather,
    ReduceScatter,
    Copy
  };
  struct Prepared {
    /// The plan launch this GPU launch belongs to.
    size_t launch = 0;
    Op op = Op::Kernel;
    CUfunction function = nullptr;
    unsigned grid[3] = {1, 1, 1};
    unsigned block = 0, shared = 0;
    std::vector<int64_t> fields;
    /// Collectives: buffers, element count (per rank for a gather or
    /// scatter; f32 unless `bf16`), peer (send / receive) or root
    /// (broadcast), in the communicator `comm`. Copy: `count` elements from
    /// `in` to `out`.
    CUdeviceptr in = 0, out = 0;
    size_t count = 0;
    bool bf16 = false;
    int peer = 0;
    nccl::ncclComm_t comm = nullptr;
    std::string name; // "function (kernel k)", for errors
    std::string profileKey;
    bool operator==(const Prepared &o) const {
      return op == o.op && function == o.function &&
             std::equal(grid, grid + 3, o.grid) && block == o.block &&
             shared == o.shared && fields == o.fields && in == o.in &&
             out == o.out && count == o.count && bf16 == o.bf16 &&
             peer == o.peer && comm == o.comm;
    }
  };
  struct Timed {
    std::string key;
    CUevent begin, end;
  };
  struct Total {
    int64_t calls = 0;
    double ms = 0;
  };

  bool runStep(const Step &step, StepOutput &out, std::string &error);
  bool check(CUresult r, const std::string &call, std::string &error) {
    return memory.check(r, call, error);
  }
  bool ensure(DeviceBuffer &b, size_t bytes, std::string &error) {
    return memory.ensure(b, bytes, error);
  }
  /// Makes room for the step's rows in every pool and counts them.
  bool prepareSlots(const Step &step, std::string &error);
  /// The copies and collectives of an AllGather or ReduceScatter launch.
  bool prepareExchange(const Step &step, size_t li, std::string &error);
  /// Binds the storage of launch `li`'s results in this step.
  bool bindResults(const Step &step, size_t li, std::string &error);
  /// Appends launch `li`'s GPU launches (variants, grids, parameters) or
  /// collectives to `prepared`.
  bool prepareLaunch(const Step &step, size_t li, std::string &error);
  /// Enqueues `prepared` without a graph, with KILN_DUMP_DIR's dumps, and
  /// empties it.
  bool enqueuePrepared(const Step &step, std::string &error);
  /// KILN_DUMP_DIR: launch `li`'s results once `after` has run.
  bool dumpResults(const Step &step, size_t li, const std::string &after,
                   std::string &error);
  /// The all-to-all token exchange of launch `li` (a TokenDispatch or
  /// TokenCombine), enqueued once everything before it has run.
  bool exchangeTokens(const Step &step, size_t li, std::string &error);
  bool dispatchTokens(const Step &step, size_t li, std::string &error);
  bool combineTokens(const Step &step, size_t li, std::string &error);
  /// Enqueues launch `li`'s row gather-sum: `outRows` rows of `width` into
  /// `out`, row r the sum of in[sources[j]] for j in [starts[r],
  /// starts[r + 1]) over the `inRows` rows at `in`; exchangeState.lists
  /// holds the outRows + 1 starts, then the sources.
  bool gatherRows(size_t li, CUdeviceptr in, int64_t inRows, CUdeviceptr out,
                  int64_t outRows, int64_t width, std::string &error);
  /// Sends and receives of one NCCL group on the session's stream.
  struct PointToPoint {
    bool send;
    CUdeviceptr data;
    size_t count;
    int peer;
  };
  bool pointToPoint(size_t li, const std::vector<PointToPoint> &moves,
                    bool bf16, const std::string &what, std::string &error);
  bool enqueue(const Prepared &p, std::string &error);
  /// Waits for the stream: cuStreamSynchronize, or with collectives a poll
  /// of the stream and of NCCL's asynchronous errors.
  bool wait(const std::string &what, std::string &error);
  /// After a failed collective: appends the ranks that do not answer over
  /// MPI to `error` (a stopped rank fails NCCL without a name); false.
  bool nameSilentRanks(std::string &error);
  void dropGraphs();
  /// Enqueues `prepared` and empties it: replayed from graph `segment`
  /// (captured anew when its launches differ) when `graphable` and no
  /// launch in it has received pairs (their counts change every step),
  /// else launch by launch.
  bool flush(const Step &step, bool graphable, std::string &error);
  CUevent event();
  void collectProfile();
  void printProfile();

  CudaModel &model;
  Driver &driver;
  Allocator memory;
  CUstream stream = nullptr;
  std::vector<CUdeviceptr> valuePtr;    // per plan value
  std::vector<DeviceBuffer> ownBuffers; // per plan value (non-arena)
  DeviceBuffer arena, tokens, positions, scratch, greedy, sampleRequest, rank;
  /// Attention replicas' exchanges: this rank's piece of rows, padded, and
  /// every rank's pieces, padded.
  DeviceBuffer piece, pieces;
  int64_t rankHost = 0;
  /// {temperature, top_k, top_p, u} of the step being sampled.
  double sampleHost[4] = {};
  std::vector<GpuSlot> slots;
  DeviceBuffer counts; // int64 key count per slot, this step's rows included
  std::vector<int64_t> countsHost;
  std::vector<Prepared> prepared;
  /// The last GPU launch enqueued in this step before `prepared` (a step
  /// with token exchanges enqueues in several parts).
  std::string lastEnqueued;
  /// The step's token count (profile keys).
  int64_t stepTokens = 0;
  /// The all-to-all token exchange of the MoE block in flight: what the
  /// dispatch sent and received, kept for its combine.
  struct TokenExchange {
    /// The routing of this rank's replica's rows, copied from the device.
    std::vector<int64_t> indices, offsets;
    std::vector<float> gates;
    /// What this rank sent (routeTokenSends).
    TokenSends sent;
    /// Per sender and local expert: pairs received, and where the
    /// expert-major received order files them.
    std::vector<int64_t> received, filedAt;
    /// Host staging of the received routing and of the gather lists (kept
    /// until the next exchange, which starts after a synchronization).
    std::vector<float> sendGates, arrivedGates, gotGates;
    std::vector<int64_t> pairIndices, gotOffsets, lists;
    DeviceBuffer sendRows, backRows, listBuffer;
  } exchangeState;
  /// The CUDA graphs of decode steps: one for a whole step, or with token
  /// exchanges one per part of the step between them (`segment` counts a
  /// step's parts).
  struct Graph {
    void *graph = nullptr, *exec = nullptr;
    std::vector<Prepared> launches;
  };
  std::vector<Graph> graphs;
  size_t segment = 0;
  int64_t graphLaunches = 0, graphCaptures = 0;
  std::map<std::tuple<size_t, size_t, size_t, size_t>, CachedMap> maps;
  std::vector<int32_t> tokens32;
  int64_t samplerChecks = 0, samplerMismatches = 0;
  std::vector<Timed> pending;
  std::vector<CUevent> spareEvents;
  std::map<std::string, Total> totals;
};

class CudaModel final : public Backend {
public:
  ~CudaModel() override;
  Status newSession(int64_t kvTokens,
                    std::unique_ptr<BackendSession> &out) override;
  Status uploadWeights() override;
  bool picksTokens() const override { return true; }

  const BoundPlan *bound = nullptr;
  RuntimeOptions options;
  std::unique_ptr<Driver> driver;
  CUdevice device = 0;
  CUcontext context = nullptr;
  CUmodule module = nullptr;
  int64_t sms = 1; // streaming multiprocessors of the GPU
  std::map<std::string, CUfunction> functions;
  std::vector<DeviceBuffer> weights;
  /// Per plan value: the device copy of a weight or repacking.
  std::vector<CUdeviceptr> weightPtr;
  /// Multi-rank engines: NCCL, a communicator over every rank (stage
  /// hand-overs), one over the stage's tensor-parallel group (all-reduces;
  /// the same one without stages or replicas), and with attention replicas
  /// one over the stage's ranks (the exchanges) and one over the replica's
  /// ranks of every stage (the logits' broadcast); each is `world` where it
  /// would hold the same ranks.
  std::unique_ptr<nccl::Library> nccl;
  nccl::ncclComm_t world = nullptr, group = nullptr, exchange = nullptr,
                   line = nullptr;
  /// Columns of the plan's widest all-gather or reduce-scatter (0: none).
  size_t exchangeWidth = 0;
  /// The distinct communicators, `world` first.
  std::vector<nccl::ncclComm_t> communicators() const {
    std::vector<nccl::ncclComm_t> all;
    for (nccl::ncclComm_t c : {world, group, exchange, line})
      if (c && std::find(all.begin(), all.end(), c) == all.end())
        all.push_back(c);
    return all;
  }
  /// After a failure: aborts every communicator (no collective can follow).
  void abortCommunicators() {
    for (nccl::ncclComm_t c : communicators())
      nccl->commAbort(c);
    world = group = exchange = line = nullptr;
  }
  bool ncclFailed = false;
  /// Polls NCCL's asynchronous errors; on one, aborts the communicators
  /// and says which rank saw what.
  bool collectiveError(std::string &error);
};

} // namespace

//===----------------------------------------------------------------------===//
// The model: code and weights on GPU 0
//===----------------------------------------------------------------------===//

bool CudaModel::collectiveError(std::string &error) {
  if (!nccl)
    return false;
  for (nccl::ncclComm_t comm : communicators()) {
    nccl::ncclResult_t async = nccl::ncclSuccess;
    if (!comm || nccl->commGetAsyncError(comm, &async) != nccl::ncclSuccess ||
        async == nccl::ncclSuccess || async == nccl::ncclInProgress)
      continue;
    error = "rank " + std::to_string(bound->rank) + ": " +
            nccl->describe("a collective", async) +
            "; another rank failed or left";
    ncclFailed = true;
    abortCommunicators();
    return true;
  }
  return false;
}

CudaModel::~CudaModel() {
  if (!driver)
    return;
  if (context)
    driver->cuCtxSetCurrent(context);
  if (nccl)
    for (nccl::ncclComm_t c : communicators())
      nccl->commDestroy(c);
  Allocator memory{*driver, false};
  for (DeviceBuffer &b : weights)
    memory.release(b);
  if (module)
    driver->cuModuleUnload(module);
  if (context)
    driver->cuDevicePrimaryCtxRelease(device);
}

/// KILN_NCCL_SELFTEST=1 on a one-rank engine (bench/device.sh): the real
/// NCCL path on one GPU, a one-rank communicator whose all-reduce must
/// return its input; says so on stderr.
static Status ncclSelfTest(CudaModel &m, const std::string &enginePath) {
  std::string error;
  auto lib = nccl::Library::load(error);
  if (!lib)
    return Status::error(StatusCode::Unavailable, "NCCL self-test: " + error);
  Driver &d = *m.driver;
  Allocator memory{d, false};
  int version = 0;
  lib->getVersion(&version);
  nccl::ncclUniqueId id{};
  nccl::ncclComm_t comm = nullptr;
  nccl::ncclResult_t r = lib->getUniqueId(&id);
  if (r == nccl::ncclSuccess)
    r = lib->commInitRank(&comm, 1, id, 0);
  if (r != nccl::ncclSuccess)
    return Status::error(StatusCode::DeviceError,
                         "NCCL self-test: " +
                             lib->describe("ncclCommInitRank", r));
  constexpr size_t kCount = 4096;
  std::vector<float> host(kCount), back(kCount, 0.0f);
  for (size_t i = 0; i < kCount; ++i)
    host[i] = static_cast<float>(i) * 0.25f - 7.0f;
  DeviceBuffer in, out;
  CUstream stream = nullptr;
  bool ok =
      memory.ensure(in, kCount * 4, error) &&
      memory.ensure(out, kCount * 4, error) &&
      memory.check(d.cuStreamCreate(&stream, 0), "cuStreamCreate", error) &&
      memory.check(d.cuMemcpyHtoD(in.ptr, host.data(), kCount * 4),
                   "cuMemcpyHtoD", error);
  if (ok) {
    r = lib->allReduce(reinterpret_cast<const void *>(in.ptr),
                       reinterpret_cast<void *>(out.ptr), kCount,
                       nccl::ncclFloat32, nccl::ncclSum, comm,
                       reinterpret_cast<nccl::cudaStream_t>(stream));
    if (r != nccl::ncclSuccess)
      error = lib->describe("ncclAllReduce", r), ok = false;
  }
  ok = ok &&
       memory.check(d.cuStreamSynchronize(stream), "ncclAllReduce", error) &&
       memory.check(d.cuMemcpyDtoH(back.data(), out.ptr, kCount * 4),
                    "cuMemcpyDtoH", error);
  if (ok && back != host)
    error = "a one-rank all-reduce changed its input", ok = false;
  // The exchanges of data-parallel attention: the same bytes gathered as
  // bf16 (2 per float) and reduce-scattered as f32 must come back as given.
  for (int which = 0; ok && which < 2; ++which) {
    const char *call = which == 0 ? "ncclAllGather" : "ncclReduceScatter";
    auto *s = reinterpret_cast<nccl::cudaStream_t>(stream);
    const void *from = reinterpret_cast<const void *>(in.ptr);
    void *to = reinterpret_cast<void *>(out.ptr);
    ok =
        memory.check(d.cuMemsetD8(out.ptr, 0, kCount * 4), "cuMemsetD8", error);
    r = !ok ? nccl::ncclSuccess
        : which == 0
            ? lib->allGather(from, to, 2 * kCount, nccl::ncclBfloat16, comm, s)
            : lib->reduceScatter(from, to, kCount, nccl::ncclFloat32,
                                 nccl::ncclSum, comm, s);
    if (ok && r != nccl::ncclSuccess)
      error = lib->describe(call, r), ok = false;
    ok = ok && memory.check(d.cuStreamSynchronize(stream), call, error) &&
         memory.check(d.cuMemcpyDtoH(back.data(), out.ptr, kCount * 4),
                      "cuMemcpyDtoH", error);
    if (ok && back != host)
      error = std::string("a one-rank ") + call + " changed its input",
      ok = false;
  }
  // The token all-to-all's sends and receives: a group with a send to
  // itself and the matching receive (bf16, as the dispatch moves rows).
  if (ok) {
    auto *s = reinterpret_cast<nccl::cudaStream_t>(stream);
    ok =
        memory.check(d.cuMemsetD8(out.ptr, 0, kCount * 4), "cuMemsetD8", error);
    r = ok ? lib->groupStart() : nccl::ncclSuccess;
    if (ok && r == nccl::ncclSuccess)
      r = lib->send(reinterpret_cast<const void *>(in.ptr), 2 * kCount,
                    nccl::ncclBfloat16, 0, comm, s);
    if (ok && r == nccl::ncclSuccess)
      r = lib->recv(reinterpret_cast<void *>(out.ptr), 2 * kCount,
                    nccl::ncclBfloat16, 0, comm, s);
    if (ok) {
      nccl::ncclResult_t ended = lib->groupEnd();
      if (r == nccl::ncclSuccess)
        r = ended;
    }
    if (ok && r != nccl::ncclSuccess)
      error = lib->describe("ncclSend/ncclRecv", r), ok = false;
    ok = ok &&
         memory.check(d.cuStreamSynchronize(stream), "ncclSend/ncclRecv",
                      error) &&
         memory.check(d.cuMemcpyDtoH(back.data(), out.ptr, kCount * 4),
                      "cuMemcpyDtoH", error);
    if (ok && back != host)
      error = "a one-rank send to itself changed its data", ok = false;
  }
  lib->commDestroy(comm);
  if (stream)
    d.cuStreamDestroy(stream);
  memory.release(in);
  memory.release(out);
  if (!ok)
    return Status::error(StatusCode::DeviceError,
                         enginePath + ": NCCL self-test: " + error);
  std::fprintf(stderr,
               "kiln: NCCL self-test: %s (version %d): one-rank all-reduce, "
               "all-gather (bf16), reduce-scatter and a grouped send/receive "
               "to itself (bf16) of %zu floats on the stream returned their "
               "input\n",
               lib->path().c_str(), version, kCount);
  return {};
}

Status kiln::openCudaBackend(const EngineFile &engine, const BoundPlan &bound,
                             const RuntimeOptions &options,
                             std::unique_ptr<Backend> &out) {
  const std::string &enginePath = bound.enginePath;
  const plan::Plan &plan = bound.plan;
  auto s = std::make_unique<CudaModel>();
  s->bound = &bound;
  s->options = options;
  std::string error;
  auto unavailable = [&](std::string message) {
    return Status::error(StatusCode::Unavailable, std::move(message));
  };
  auto deviceError = [&]() {
    return Status::error(StatusCode::DeviceError, error);
  };
  s->driver = Driver::load(error, options.cudaDriver);
  if (!s->driver)
    return unavailable(error);
  Driver &d = *s->driver;
  Allocator memory{d, options.poisonDeviceMemory};
  // One process per GPU: a rank takes the GPU of its rank on the node.
  int ordinal = 0;
  if (plan.worldSize() > 1) {
    const char *local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    int64_t rank = local && *local ? std::atoll(local) : bound.rank;
    ordinal = static_cast<int>(rank % std::max(d.deviceCount(), 1));
  }
  if (!memory.check(d.cuDeviceGet(&s->device, ordinal), "cuDeviceGet", error))
    return unavailable(error);
  int major = 0, minor = 0;
  d.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                         s->device);
  d.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                         s->device);
  if (major != 9 || minor != 0) {
    char name[128] = {0};
    d.cuDeviceGetName(name, sizeof name - 1, s->device);
    return unavailable(enginePath +
                       ": sm_90a code runs on H100/H200 (compute capability "
                       "9.0); GPU 0 (" +
                       name + ") is " + std::to_string(major) + "." +
                       std::to_string(minor));
  }
  if (!memory.check(d.cuDevicePrimaryCtxRetain(&s->context, s->device),
                    "cuDevicePrimaryCtxRetain", error) ||
      !memory.check(d.cuCtxSetCurrent(s->context), "cuCtxSetCurrent", error))
    return deviceError();

  auto cubin = engine.sections.find(SectionKind::CudaCubin);
  auto ptx = engine.sections.find(SectionKind::CudaPtx);
  if (cubin == engine.sections.end() && ptx == engine.sections.end())
    return Status::error(StatusCode::InvalidEngine,
                         enginePath +
                             ": sm_90a engine without a cubin or PTX section");
  CUresult loaded = CUDA_ERROR_STUB_LIBRARY;
  std::string failure;
  if (cubin != engine.sections.end()) {
    loaded = d.cuModuleLoadData(&s->module, cubin->second.data());
    if (loaded != CUDA_SUCCESS)
      failure = d.describe(
          ("cuModuleLoadData(" + enginePath + " cubin)").c_str(), loaded);
  }
  // The PTX is the fallback: a cubin the driver refuses (another ptxas,
  // another sm_9x part) is compiled again from it.
  if (loaded != CUDA_SUCCESS && ptx != engine.sections.end()) {
    std::string text = ptx->second; // NUL-terminated for the JIT
    loaded = d.cuModuleLoadData(&s->module, text.c_str());
    if (loaded != CUDA_SUCCESS)
      failure +=
          (failure.empty() ? "" : "; ") +
          d.describe(("cuModuleLoadData(" + enginePath + " PTX)").c_str(),
                     loaded);
  }
  if (loaded != CUDA_SUCCESS)
    return Status::error(StatusCode::InvalidEngine, failure);
  int smCount = 0;
  d.cuDeviceGetAttribute(&smCount, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                         s->device);
  s->sms = std::max(smCount, 1);
  int optIn = 0;
  d.cuDeviceGetAttribute(
      &optIn, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, s->device);
  for (const plan::Launch &l : plan.launches) {
    bool tokenExchange = l.kind == plan::LaunchKind::TokenDispatch ||
                         l.kind == plan::LaunchKind::TokenCombine;
    // A token exchange gathers rows with a function of the engine.
    if (tokenExchange && (l.gpu.size() != 1 || l.gpu[0].variants.size() != 1 ||
                          l.gpu[0].variants[0].function.empty()))
      return Status::error(StatusCode::InvalidEngine,
                           enginePath +
                               ": a token exchange without its GPU row "
                               "gather (an engine from an older kilnc: "
                               "compile it again)");
    if (l.kind != plan::LaunchKind::Kernel && !tokenExchange)
      continue; // collectives: NCCL
    if (l.gpu.empty())
      return Status::error(StatusCode::InvalidEngine,
                           enginePath + ": kernel '" + l.kernel +
                               "' has no GPU code");
    for (const plan::GpuStep &step : l.gpu)
      for (const GpuLaunch &v : step.variants) {
        if (v.function.empty() || s->functions.count(v.function))
          continue;
        CUfunction f = nullptr;
        if (!memory.check(
                d.cuModuleGetFunction(&f, s->module, v.function.c_str()),
                "cuModuleGetFunction(" + v.function + ")", error))
          return Status::error(StatusCode::InvalidEngine, error);
        if (v.dynamicSharedBytes > optIn)
          return unavailable(enginePath + ": " + v.function + " needs " +
                             std::to_string(v.dynamicSharedBytes) +
                             " bytes of shared memory; GPU 0 allows " +
                             std::to_string(optIn));
        if (v.dynamicSharedBytes > 48 * 1024 &&
            !memory.check(d.cuFuncSetAttribute(
                              f,
                              CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                              static_cast<int>(v.dynamicSharedBytes)),
                          "cuFuncSetAttribute(" + v.function + ")", error))
          return deviceError();
        s->functions[v.function] = f;
      }
  }
  for (const plan::TokenFunction *fn : {&plan.argmax, &plan.sample}) {
    if (fn->function.empty())
      continue;
    CUfunction f = nullptr;
    if (!memory.check(
            d.cuModuleGetFunction(&f, s->module, fn->function.c_str()),
            "cuModuleGetFunction(" + fn->function + ")", error))
      return Status::error(StatusCode::InvalidEngine, error);
    s->functions[fn->function] = f;
  }

  for (const plan::Launch &l : plan.launches)
    if (l.kind == plan::LaunchKind::AllGather ||
        l.kind == plan::LaunchKind::ReduceScatter)
      s->exchangeWidth =
          std::max(s->exchangeWidth,
                   static_cast<size_t>(plan.values[l.args[0]].shape[1]));
  if (plan.worldSize() == 1 && std::getenv("KILN_NCCL_SELFTEST"))
    if (Status st = ncclSelfTest(*s, enginePath); !st.ok())
      return st;
  if (plan.worldSize() > 1) {
    s->nccl = nccl::Library::load(error);
    if (!s->nccl)
      return unavailable(enginePath + ": " + error);
    nccl::Library &n = *s->nccl;
    // Rank 0 of each MPI communicator makes the NCCL id; MPI hands it out.
    auto open = [&](Communicator &mpi, nccl::ncclComm_t &comm) -> Status {
      nccl::ncclUniqueId id{};
      nccl::ncclResult_t r = nccl::ncclSuccess;
      if (mpi.rank() == 0 && (r = n.getUniqueId(&id)) != nccl::ncclSuccess)
        return unavailable(enginePath + ": " +
                           n.describe("ncclGetUniqueId", r));
      if (Status st = mpi.broadcastBytes(&id, sizeof id, 0); !st.ok())
        return st;
      if ((r = n.commInitRank(&comm, static_cast<int>(mpi.size()), id,
                              static_cast<int>(mpi.rank()))) !=
          nccl::ncclSuccess)
        return Status::error(StatusCode::DeviceError,
                             enginePath + ": rank " +
                                 std::to_string(bound.rank) + ": " +
                                 n.describe("ncclCommInitRank", r));
      return {};
    };
    if (Status st = open(*bound.comm, s->world); !st.ok())
      return st;
    s->group = s->exchange = s->line = s->world;
    bool replicas = plan.attentionReplicas > 1,
         stages = plan.pipelineStages > 1;
    if ((stages && plan.tensorParallel > 1) || replicas)
      if (Status st = open(*bound.group, s->group); !st.ok())
        return st;
    if (replicas && stages)
      if (Status st = open(*bound.exchange, s->exchange); !st.ok())
        return st;
    if (replicas && stages)
      if (Status st = open(*bound.line, s->line); !st.ok())
        return st;
  }

  out = std::move(s);
  return {};
}

Status CudaModel::uploadWeights() {
  const plan::Plan &plan = bound->plan;
  Driver &d = *driver;
  Allocator memory{d, options.poisonDeviceMemory};
  std::string error;
  if (!memory.check(d.cuCtxSetCurrent(context), "cuCtxSetCurrent", error))
    return Status::error(StatusCode::DeviceError, error);
  // Weights and repackings that a launch reads go to the device once.
  std::vector<bool> used(plan.values.size(), false);
  for (const plan::Launch &l : plan.launches)
    if (bound->runs(l))
      for (int64_t id : l.args)
        used[id] = true;
  weightPtr.assign(plan.values.size(), 0);
  for (size_t id = 0; id < plan.values.size(); ++id) {
    const plan::Value &v = plan.values[id];
    if (!used[id] || !bound->hostData[id])
      continue;
    size_t bytes = plan::elementSize(v.dtype);
    for (int64_t dim : v.shape)
      bytes *= static_cast<size_t>(dim);
    DeviceBuffer b;
    if (!memory.ensure(b, bytes, error))
      return Status::error(StatusCode::OutOfMemory,
                           "uploading the weights: " + error);
    weights.push_back(b);
    if (!memory.check(d.cuMemcpyHtoD(b.ptr, bound->hostData[id], bytes),
                      "cuMemcpyHtoD(" +
                          (v.name.empty() ? "repacked weight" : v.name) + ")",
                      error))
      return Status::error(StatusCode::DeviceError, error);
    weightPtr[id] = b.ptr;
  }
  return {};
}

Status CudaModel::newSession(int64_t kvTokens,
                             std::unique_ptr<BackendSession> &out) {
  auto session = std::make_unique<CudaSession>(*this);
  std::string error;
  if (!session->open(kvTokens, error))
    return Status::error(error.find("reserving the KV caches") == 0
                             ? StatusCode::OutOfMemory
                             : StatusCode::DeviceError,
                         error);
  out = std::move(session);
  return {};
}

//===----------------------------------------------------------------------===//
// A session: one sequence on its own stream
//===----------------------------------------------------------------------===//

CudaSession::CudaSession(CudaModel &model)
    : model(model),
      driver(*model.driver), memory{*model.driver,
                                    model.options.poisonDeviceMemory} {}

bool CudaSession::open(int64_t kvTokens, std::string &error) {
  const plan::Plan &plan = model.bound->plan;
  if (!check(driver.cuCtxSetCurrent(model.context), "cuCtxSetCurrent", error) ||
      !check(driver.cuStreamCreate(&stream, 0), "cuStreamCreate", error))
    return false;
  for (const plan::Slot &info : plan.slots) {
    GpuSlot slot;
    slot.width = info.width;
    slot.chunk = info.chunk;
    slots.push_back(slot);
  }
  for (GpuSlot &slot : slots)
    slot.used = false;
  for (const plan::Launch &l : plan.launches)
    for (const plan::AttentionUse &a : l.attention) {
      slots[a.slot].elementBytes = static_cast<int64_t>(
          plan::elementSize(plan.values[l.args[a.keyArg]].dtype));
      slots[a.slot].used = model.bound->runs(l);
    }
  valuePtr = model.weightPtr;
  ownBuffers.resize(plan.values.size());
  countsHost.assign(slots.size(), 0);
  if (!slots.empty() && !ensure(counts, slots.size() * sizeof(int64_t), error))
    return false;
  if (kvTokens <= 0)
    return true;
  double total = 0;
  for (size_t i = 0; i < slots.size(); ++i)
    if (slots[i].used)
      total += double(plan::reservedRows(plan.slots[i], kvTokens)) *
               (2.0 * slots[i].width * slots[i].elementBytes + 8);
  for (size_t i = 0; i < slots.size(); ++i) {
    GpuSlot &slot = slots[i];
    if (!slot.used)
      continue;
    int64_t rows = plan::reservedRows(plan.slots[i], kvTokens);
    size_t row = static_cast<size_t>(slot.width * slot.elementBytes);
    std::string why;
    if (!ensure(slot.keys, rows * row, why) ||
        !ensure(slot.values, rows * row, why) ||
        !ensure(slot.positions, rows * 8, why)) {
      error = "reserving the KV caches for " + std::to_string(kvTokens) +
              " tokens of context (" + gib(total) + " GiB on the GPU): " + why;
      return false;
    }
    slot.capacity = slot.reserved = rows;
  }
  return true;
}

CudaSession::~CudaSession() {
  if (model.context)
    driver.cuCtxSetCurrent(model.context);
  if (stream)
    driver.cuStreamSynchronize(stream);
  printProfile();
  if (model.options.checkSampler)
    std::fprintf(stderr,
                 "kiln: sampler check: %lld tokens picked on the GPU, %lld "
                 "differ from the host rule\n",
                 static_cast<long long>(samplerChecks),
                 static_cast<long long>(samplerMismatches));
  dropGraphs();
  if (model.options.graphStats)
    std::fprintf(stderr, "kiln-cuda: %lld graph launches, %lld captures\n",
                 static_cast<long long>(graphLaunches),
                 static_cast<long long>(graphCaptures));
  for (Timed &t : pending)
    spareEvents.insert(spareEvents.end(), {t.begin, t.end});
  for (CUevent e : spareEvents)
    if (e)
      driver.cuEventDestroy(e);
  for (DeviceBuffer &b : ownBuffers)
    memory.release(b);
  for (DeviceBuffer *b :
       {&arena, &tokens, &positions, &scratch, &counts, &greedy, &sampleRequest,
        &rank, &piece, &pieces, &exchangeState.sendRows,
        &exchangeState.backRows, &exchangeState.listBuffer})
    memory.release(*b);
  for (GpuSlot &s : slots) {
    memory.release(s.keys);
    memory.release(s.values);
    memory.release(s.positions);
  }
  for (auto &[key, map] : maps)
    memory.release(map.device);
  if (stream)
    driver.cuStreamDestroy(stream);
}

CUevent CudaSession::event() {
  if (!spareEvents.empty()) {
    CUevent e = spareEvents.back();
    spareEvents.pop_back();
    return e;
  }
  CUevent e = nullptr;
  driver.cuEventCreate(&e, 0);
  return e;
}

void CudaSession::collectProfile() {
  for (Timed &t : pending) {
    float ms = 0;
    if (driver.cuEventElapsedTime(&ms, t.begin, t.end) == CUDA_SUCCESS) {
      totals[t.key].calls += 1;
      totals[t.key].ms += ms;
    }
    spareEvents.push_back(t.begin);
    spareEvents.push_back(t.end);
  }
  pending.clear();
}

void CudaSession::printProfile() {
  if (totals.empty())
    return;
  std::fprintf(stderr, "kiln-profile: %-36s %7s %6s %11s %11s\n", "function",
               "tokens", "calls", "total_ms", "mean_us");
  for (const auto &[key, t] : totals) {
    size_t at = key.find('@');
    std::fprintf(stderr, "kiln-profile: %-36s %7s %6lld %11.3f %11.2f\n",
                 key.substr(0, at).c_str(), key.substr(at + 1).c_str(),
                 static_cast<long long>(t.calls), t.ms,
                 1000.0 * t.ms / t.calls);
  }
}

void CudaSession::dropGraphs() {
  for (Graph &g : graphs) {
    if (g.exec)
      driver.cuGraphExecDestroy(g.exec);
    if (g.graph)
      driver.cuGraphDestroy(g.graph);
  }
  graphs.clear();
}

bool CudaSession::flush(const Step &step, bool graphable, std::string &error) {
  // Parts are numbered by the exchanges before them, so a part that is
  // empty in one step (no pairs received) leaves the others' graphs be.
  size_t k = segment++;
  if (prepared.empty())
    return true;
  const plan::Plan &plan = model.bound->plan;
  for (const Prepared &p : prepared) {
    if (p.launch >= plan.launches.size())
      continue; // the next-token function
    const plan::Launch &l = plan.launches[p.launch];
    for (size_t i = 0; graphable && i < l.operandCount(); ++i)
      graphable = !plan.values[l.operand(i)].received;
  }
  if (!graphable)
    return enqueuePrepared(step, error);
  if (graphs.size() <= k)
    graphs.resize(k + 1);
  Graph &g = graphs[k];
  if (g.exec == nullptr || prepared != g.launches) {
    if (g.exec)
      driver.cuGraphExecDestroy(g.exec);
    if (g.graph)
      driver.cuGraphDestroy(g.graph);
    g = Graph();
    if (!check(
            driver.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_RELAXED),
            "cuStreamBeginCapture", error))
      return false;
    bool ok = true;
    for (const Prepared &p : prepared)
      if (!(ok = enqueue(p, error)))
        break;
    // The session owns the captured graph from here on (dropGraphs).
    CUresult ended = driver.cuStreamEndCapture(stream, &g.graph);
    if (!ok || !check(ended, "cuStreamEndCapture", error) ||
        !check(driver.cuGraphInstantiateWithFlags(&g.exec, g.graph, 0),
               "cuGraphInstantiateWithFlags", error))
      return false;
    g.launches = prepared;
    ++graphCaptures;
  }
  if (!check(driver.cuGraphLaunch(g.exec, stream), "cuGraphLaunch(decode step)",
             error))
    return false;
  ++graphLaunches;
  lastEnqueued = prepared.back().name;
  prepared.clear();
  return true;
}

bool CudaSession::enqueue(const Prepared &p, std::string &error) {
  std::vector<void *> params;
  std::vector<int64_t> fields = p.fields;
  for (int64_t &f : fields)
    params.push_back(&f);
  // The driver reads exactly the function's parameter count; the null after
  // them lets test/fakecuda check that count.
  params.push_back(nullptr);
  Timed timed;
  bool profile = model.options.profile;
  if (profile) {
    timed = {p.profileKey, event(), event()};
    driver.cuEventRecord(timed.begin, stream);
  }
  if (p.op == Op::Copy) {
    if (!check(driver.cuMemcpyDtoDAsync(p.out, p.in, p.count * (p.bf16 ? 2 : 4),
                                        stream),
               "cuMemcpyDtoDAsync(" + p.name + ")", error))
      return false;
  } else if (p.op != Op::Kernel) {
    nccl::Library &n = *model.nccl;
    auto *s = reinterpret_cast<nccl::cudaStream_t>(stream);
    const void *in = reinterpret_cast<const void *>(p.in);
    void *out = reinterpret_cast<void *>(p.out);
    nccl::ncclResult_t r = nccl::ncclSuccess;
    switch (p.op) {
    case Op::AllReduce:
      r = n.allReduce(in, out, p.count, nccl::ncclFloat32, nccl::ncclSum,
                      p.comm, s);
      break;
    case Op::Send:
      r = n.send(in, p.count, nccl::ncclFloat32, p.peer, p.comm, s);
      break;
    case Op::Receive:
      r = n.recv(out, p.count, nccl::ncclFloat32, p.peer, p.comm, s);
      break;
    case Op::AllGather:
      r = n.allGather(in, out, p.count,
                      p.bf16 ? nccl::ncclBfloat16 : nccl::ncclFloat32, p.comm,
                      s);
      break;
    case Op::ReduceScatter:
      r = n.reduceScatter(in, out, p.count, nccl::ncclFloat32, nccl::ncclSum,
                          p.comm, s);
      break;
    default: // in place: the root's buffer is the value
      r = n.broadcast(out, out, p.count, nccl::ncclFloat32, p.peer, p.comm, s);
      break;
    }
    if (r != nccl::ncclSuccess) {
      error = "rank " + std::to_string(model.bound->rank) + ": " +
              n.describe(p.name.c_str(), r);
      return nameSilentRanks(error);
    }
  } else if (!check(driver.cuLaunchKernel(p.function, p.grid[0], p.grid[1],
                                          p.grid[2], p.block, 1, 1, p.shared,
                                          stream, params.data(), nullptr),
                    "cuLaunchKernel(" + p.name + ")", error)) {
    return false;
  }
  if (profile) {
    driver.cuEventRecord(timed.end, stream);
    pending.push_back(timed);
  }
  if (model.options.syncEachLaunch && !wait("running " + p.name, error))
    return false;
  return true;
}

bool CudaSession::nameSilentRanks(std::string &error) {
  // The others wait in wait() or in MPI, and answer (within the
  // communicator's liveness window).
  Communicator *mpi = model.bound->comm.get();
  std::string who = mpi ? mpi->silentRanksNamed() : std::string();
  if (!who.empty())
    error += " (" + who + (who.rfind("ranks ", 0) == 0 ? " do" : " does") +
             " not answer: stopped, hung or dead)";
  return false;
}

bool CudaSession::wait(const std::string &what, std::string &error) {
  if (!model.nccl)
    return check(driver.cuStreamSynchronize(stream), what, error);
  // A collective whose peer died never completes: poll the stream and
  // NCCL's errors, and give up after KILN_COLLECTIVE_TIMEOUT seconds (30).
  const char *limit = std::getenv("KILN_COLLECTIVE_TIMEOUT");
  double seconds = limit && *limit ? std::atof(limit) : 30.0;
  auto start = std::chrono::steady_clock::now();
  Communicator *mpi = model.bound->comm.get();
  auto nameSilent = [&] { return nameSilentRanks(error); };
  for (;;) {
    CUresult r = driver.cuStreamQuery(stream);
    if (r != CUDA_ERROR_NOT_READY)
      return check(r, what, error);
    if (model.collectiveError(error))
      return nameSilent();
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count() > seconds) {
      error = "rank " + std::to_string(model.bound->rank) + ": " + what +
              " did not finish in " + std::to_string(seconds) +
              " s (a collective waits for a rank that stopped); "
              "aborting NCCL";
      model.abortCommunicators();
      return nameSilent();
    }
    if (mpi)
      mpi->answerLivenessQuestions();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

bool CudaSession::prepareExchange(const Step &step, size_t li,
                                  std::string &error) {
  // NCCL's all-gather and reduce-scatter move one size from every rank, and
  // a replica's rows are split over its ranks in pieces that differ between
  // replicas: each piece travels padded to the step's largest, copied in
  // and out on the stream (so a decode step stays one captured graph).
  const plan::Plan &plan = model.bound->plan;
  const BoundPlan &bound = *model.bound;
  const plan::Launch &l = plan.launches[li];
  int64_t perReplica = plan.replicaRanks(), ranks = plan.tensorParallel;
  size_t width = static_cast<size_t>(plan.values[l.args[0]].shape[1]);
  bool bf16 = plan.values[l.args[0]].dtype == plan::DType::BF16;
  size_t element = bf16 ? 2 : 4;
  const std::vector<int64_t> &begin = step.pieceBegin, &rows = step.pieceRows,
                             &at = step.pieceAt;
  int64_t padded = *std::max_element(rows.begin(), rows.end());
  if (padded == 0)
    return true;                                     // every replica is idle
  size_t slab = static_cast<size_t>(padded) * width; // elements per piece
  // Sized for the plan's widest exchange in f32, so that no exchange of
  // the step moves the buffers under the ones prepared before it.
  size_t room = static_cast<size_t>(padded) * model.exchangeWidth * 4;
  if (!ensure(piece, room, error) || !ensure(pieces, room * ranks, error))
    return false;
  if (!model.exchange || !model.group) {
    error = "rank " + std::to_string(bound.rank) +
            ": the NCCL communicators were aborted after an earlier failure";
    return false;
  }
  auto rowPtr = [&](CUdeviceptr base, int64_t row) {
    return base + static_cast<CUdeviceptr>(row) * width * element;
  };
  auto slot = [&](CUdeviceptr base, int64_t k) {
    return base + static_cast<CUdeviceptr>(k) * slab * element;
  };
  std::string suffix = " (plan launch " + std::to_string(li) + ")";
  auto copy = [&](CUdeviceptr from, CUdeviceptr to, int64_t n) {
    if (n == 0)
      return;
    Prepared p;
    p.launch = li;
    p.op = Op::Copy;
    p.in = from;
    p.out = to;
    p.count = static_cast<size_t>(n) * width;
    p.bf16 = bf16;
    p.name = "exchange copy" + suffix;
    p.profileKey = "exchange-copy@" + std::to_string(step.tokenCount);
    prepared.push_back(std::move(p));
  };
  auto collective = [&](Op op, const char *name, CUdeviceptr in,
                        CUdeviceptr out, nccl::ncclComm_t comm) {
    Prepared p;
    p.launch = li;
    p.op = op;
    p.in = in;
    p.out = out;
    p.count = slab;
    p.bf16 = bf16;
    p.comm = comm;
    p.name = name + suffix;
    p.profileKey = std::string(name) + "@" + std::to_string(step.tokenCount);
    prepared.push_back(std::move(p));
  };
  CUdeviceptr in = valuePtr[l.args[0]], out = valuePtr[l.results[0]];
  int64_t me = bound.groupRank;
  if (l.kind == plan::LaunchKind::AllGather) {
    copy(rowPtr(in, begin[me]), piece.ptr, rows[me]);
    collective(Op::AllGather, "ncclAllGather", piece.ptr, pieces.ptr,
               model.exchange);
    for (int64_t k = 0; k < ranks; ++k)
      copy(slot(pieces.ptr, k), rowPtr(out, at[k]), rows[k]);
    return true;
  }
  // The sum of every rank's piece k lands on rank k; the replica's ranks
  // then put their pieces together.
  for (int64_t k = 0; k < ranks; ++k)
    copy(rowPtr(in, at[k]), slot(pieces.ptr, k), rows[k]);
  collective(Op::ReduceScatter, "ncclReduceScatter", pieces.ptr, piece.ptr,
             model.exchange);
  collective(Op::AllGather, "ncclAllGather", piece.ptr, pieces.ptr,
             model.group);
  int64_t first = bound.replica * perReplica;
  for (int64_t j = 0; j < perReplica; ++j)
    copy(slot(pieces.ptr, j), rowPtr(out, begin[first + j]), rows[first + j]);
  return true;
}

bool CudaSession::prepareSlots(const Step &step, std::string &error) {
  int64_t t = step.tokenCount;
  for (size_t i = 0; i < slots.size(); ++i) {
    GpuSlot &slot = slots[i];
    const SlotStep &s = step.slots[i];
    if (!slot.used) {
      countsHost[i] = s.total;
      continue;
    }
    size_t row = static_cast<size_t>(slot.width * slot.elementBytes);
    slot.start += s.dropped;
    slot.count = s.kept;
    if (slot.start + slot.count + t > slot.capacity) {
      // Compact into a larger pool: the live rows move to the front.
      int64_t capacity =
          std::max({2 * (slot.count + t), int64_t(256), slot.reserved});
      DeviceBuffer keys, values, positions;
      if (!ensure(keys, capacity * row, error) ||
          !ensure(values, capacity * row, error) ||
          !ensure(positions, capacity * 8, error))
        return false;
      if (slot.count > 0) {
        size_t live = static_cast<size_t>(slot.count) * row;
        if (!check(driver.cuMemcpyDtoDAsync(keys.ptr,
                                            slot.keys.ptr + slot.start * row,
                                            live, stream),
                   "cuMemcpyDtoDAsync(KV pool)", error) ||
            !check(driver.cuMemcpyDtoDAsync(values.ptr,
                                            slot.values.ptr + slot.start * row,
                                            live, stream),
                   "cuMemcpyDtoDAsync(KV pool)", error) ||
            !check(driver.cuMemcpyDtoDAsync(positions.ptr,
                                            slot.positions.ptr + slot.start * 8,
                                            slot.count * 8, stream),
                   "cuMemcpyDtoDAsync(key positions)", error))
          return false;
      }
      // Queued copies may still read the old pools: free after them.
      driver.cuStreamSynchronize(stream);
      memory.release(slot.keys);
      memory.release(slot.values);
      memory.release(slot.positions);
      slot.keys = keys;
      slot.values = values;
      slot.positions = positions;
      slot.capacity = capacity;
      slot.start = 0;
    }
    slot.count = s.total;
    countsHost[i] = slot.count;
  }
  if (!slots.empty() &&
      !check(driver.cuMemcpyHtoDAsync(counts.ptr, countsHost.data(),
                                      countsHost.size() * 8, stream),
             "cuMemcpyHtoDAsync(key counts)", error))
    return false;
  return true;
}

bool CudaSession::dumpResults(const Step &step, size_t li,
                              const std::string &after, std::string &error) {
  const plan::Plan &plan = model.bound->plan;
  const plan::Launch &l = plan.launches[li];
  for (size_t r = 0; r < l.results.size(); ++r) {
    int64_t id = l.results[r];
    std::vector<int64_t> shape = step.shapeOf(plan, id);
    int64_t n = 1;
    for (int64_t dim : shape)
      n *= dim;
    std::vector<uint8_t> host(n * plan::elementSize(plan.values[id].dtype));
    if (!check(driver.cuMemcpyDtoHAsync(host.data(), valuePtr[id], host.size(),
                                        stream),
               "cuMemcpyDtoHAsync(dump)", error) ||
        !wait("running " + after, error))
      return false;
    std::string name = l.kernel.empty() ? "exchange" : l.kernel;
    if (Status s = dumpValue(step.dumpDir, step.index, li, name, r,
                             plan.values[id].dtype, shape, host.data());
        !s.ok()) {
      error = s.message;
      return false;
    }
  }
  return true;
}

bool CudaSession::enqueuePrepared(const Step &step, std::string &error) {
  const plan::Plan &plan = model.bound->plan;
  for (size_t i = 0; i < prepared.size(); ++i) {
    if (!enqueue(prepared[i], error))
      return false;
    // KILN_DUMP_DIR: after a plan launch's last GPU launch, its results.
    size_t li = prepared[i].launch;
    if (step.dumpDir.empty() || li >= plan.launches.size() ||
        (i + 1 < prepared.size() && prepared[i + 1].launch == li))
      continue;
    if (!dumpResults(step, li, prepared[i].name, error))
      return false;
  }
  if (!prepared.empty())
    lastEnqueued = prepared.back().name;
  prepared.clear();
  return true;
}

bool CudaSession::bindResults(const Step &step, size_t li, std::string &error) {
  const plan::Plan &plan = model.bound->plan;
  const plan::Launch &l = plan.launches[li];
  int64_t t = step.tokenCount;
  for (int64_t id : l.results) {
    const plan::Value &v = plan.values[id];
    if (v.arenaOffset >= 0) {
      valuePtr[id] = arena.ptr + v.arenaOffset * t;
      continue;
    }
    int64_t n = 1;
    for (int64_t dim : step.shapeOf(plan, id))
      n *= dim;
    if (!ensure(ownBuffers[id], n * plan::elementSize(v.dtype), error))
      return false;
    valuePtr[id] = ownBuffers[id].ptr;
  }
  return true;
}

bool CudaSession::prepareLaunch(const Step &step, size_t li,
                                std::string &error) {
  const plan::Plan &plan = model.bound->plan;
  const BoundPlan &bound = *model.bound;
  Driver &d = driver;
  int64_t t = step.tokenCount;
  auto shapeOf = [&](int64_t id) { return step.shapeOf(plan, id); };
  const plan::Launch &l = plan.launches[li];
  if (!bound.takesPart(l))
    return true; // another pipeline stage's
  // An idle replica's ranks (no tokens of their own in this step) run only
  // the exchanges and the kernels on every replica's rows.
  if (step.skips(plan, li))
    return true;
  bool exchange = l.kind == plan::LaunchKind::AllGather ||
                  l.kind == plan::LaunchKind::ReduceScatter;
  bool receives = bound.receives(l);
  if (!bindResults(step, li, error))
    return false;
  if (exchange) {
    return prepareExchange(step, li, error);
  }
  if (l.kind != plan::LaunchKind::Kernel) {
    Prepared p;
    p.launch = li;
    p.in = valuePtr[l.args[0]];
    p.out = valuePtr[l.results[0]];
    p.count = 1;
    for (int64_t dim : shapeOf(l.results[0]))
      p.count *= static_cast<size_t>(dim);
    int64_t tp = plan.tensorParallel;
    switch (l.kind) {
    case plan::LaunchKind::AllReduce:
      p.op = Op::AllReduce;
      p.comm = model.group;
      p.name = "ncclAllReduce";
      break;
    case plan::LaunchKind::GatherPartials:
      // Every rank's partial sum into its block of the result (the kernel
      // reading it sums them), or above the launch's limit one all-reduced
      // block.
      p.count = 1;
      for (int64_t dim : shapeOf(l.args[0]))
        p.count *= static_cast<size_t>(dim);
      p.comm = model.group;
      if (l.gathersPartials(t)) {
        p.op = Op::AllGather;
        p.name = "ncclAllGather";
      } else {
        p.op = Op::AllReduce;
        p.name = "ncclAllReduce";
      }
      break;
    case plan::LaunchKind::StageSend:
      p.op = receives ? Op::Receive : Op::Send;
      p.peer = static_cast<int>(receives ? bound.rank - tp : bound.rank + tp);
      p.comm = model.world;
      p.name = receives ? "ncclRecv" : "ncclSend";
      break;
    default:
      // Over the ranks whose stages broadcast to this one: every rank, or
      // this rank's replica in every stage.
      p.op = Op::Broadcast;
      p.peer = static_cast<int>(l.stage * plan.replicaRanks());
      p.comm = model.line;
      p.name = "ncclBroadcast";
      break;
    }
    if (!p.comm) {
      error = "rank " + std::to_string(bound.rank) +
              ": the NCCL communicators were aborted after an earlier "
              "failure";
      return false;
    }
    p.name += " (plan launch " + std::to_string(li) + ")";
    p.profileKey = p.name.substr(0, p.name.find(' ')) + "@" + std::to_string(t);
    prepared.push_back(std::move(p));
    return true;
  }
  struct Operand {
    CUdeviceptr ptr;
    std::vector<int64_t> shape;
  };
  std::vector<Operand> operands(l.operandCount());
  for (size_t i = 0; i < operands.size(); ++i) {
    OperandView view = step.operand(plan, li, i);
    operands[i] = {valuePtr[view.value] +
                       view.firstRow * plan::rowBytes(plan.values[view.value]),
                   view.shape};
  }
  // The KV slot bound to a key or value operand, and which of the two.
  std::map<int64_t, std::pair<int64_t, bool>> slotOf;
  for (const plan::AttentionUse &a : l.attention) {
    slotOf[a.keyArg] = {a.slot, true};
    slotOf[a.valueArg] = {a.slot, false};
  }
  auto rowsOf = [&](int64_t operand) {
    const std::vector<int64_t> &shape = operands[operand].shape;
    return shape.empty() ? int64_t(1) : shape[0];
  };

  for (size_t si = 0; si < l.gpu.size(); ++si) {
    const std::vector<GpuLaunch> &variants = l.gpu[si].variants;
    size_t vi = variants.size() - 1;
    for (size_t i = 0; i + 1 < variants.size(); ++i)
      if (variants[i].selectOperand >= 0 &&
          rowsOf(variants[i].selectOperand) <= variants[i].maxRows) {
        vi = i;
        break;
      }
    const GpuLaunch &v = variants[vi];
    if (v.function.empty())
      continue;
    Prepared p;
    p.launch = li;
    p.function = model.functions[v.function];
    p.block = static_cast<unsigned>(v.blockThreads);
    p.shared = static_cast<unsigned>(v.dynamicSharedBytes);
    p.name = v.function + " (kernel " + l.kernel + ")";
    p.profileKey = v.function + "@" + std::to_string(t);
    std::vector<int64_t> &fields = p.fields;
    for (size_t pi = 0; pi < v.params.size(); ++pi) {
      const GpuParam &param = v.params[pi];
      const Operand &op = operands[param.operand];
      GpuSlot *slot = nullptr;
      int64_t slotIndex = -1;
      bool isKey = false;
      if (auto it = slotOf.find(param.operand); it != slotOf.end()) {
        slotIndex = it->second.first;
        slot = &slots[slotIndex];
        isKey = it->second.second;
      }
      if (param.readsKvSlot() && !slot) {
        error = "engine: " + v.function +
                " reads a KV pool through an operand without a KV slot";
        return false;
      }
      switch (param.kind) {
      case GpuParam::Kind::Memref:
        appendDescriptor(fields, op.ptr, op.shape);
        break;
      case GpuParam::Kind::KvPool: {
        size_t row = slot->width * slot->elementBytes;
        CUdeviceptr base = isKey ? slot->keys.ptr : slot->values.ptr;
        appendDescriptor(fields, base + slot->start * row,
                         {slot->capacity - slot->start, slot->width});
        break;
      }
      case GpuParam::Kind::KeyPositions:
        appendDescriptor(fields, slot->positions.ptr + slot->start * 8,
                         {slot->capacity - slot->start});
        break;
      case GpuParam::Kind::KeyCount:
        appendDescriptor(fields, counts.ptr + slotIndex * 8, {1});
        break;
      case GpuParam::Kind::Scratch: {
        int64_t n = std::max<int64_t>(rowsOf(param.operand) * param.perRow, 1);
        if (!ensure(scratch, n * (param.floatScratch ? 4 : 8), error))
          return false;
        appendDescriptor(fields, scratch.ptr, {n});
        break;
      }
      case GpuParam::Kind::TensorMap: {
        // bf16 viewed as [rows, cols]: 3-D weights fold their first two
        // dimensions. A pool map covers exactly the keys of this step
        // (prepareSlots counted its rows in): TMA fills the rows of a
        // K/V tile past them with zeros. Covering the whole capacity let
        // the flash kernel multiply never-written pool rows (NaN/Inf bit
        // patterns on a GPU, poison in the emulator) by P = 0, which is
        // NaN. Pool maps are only read by the flash kernel, which serves
        // steps of more than 8 rows and is never in a replayed graph, so
        // re-encoding one per step costs a 128-byte copy.
        Operand target = op;
        if (param.pool) {
          size_t row = slot->width * slot->elementBytes;
          target.ptr =
              (isKey ? slot->keys.ptr : slot->values.ptr) + slot->start * row;
          target.shape = {slot->count, slot->width};
        }
        int64_t cols = target.shape.back(), total = 1;
        for (int64_t dim : target.shape)
          total *= dim;
        int64_t mapRows = total / cols;
        CachedMap &cache = maps[{li, si, vi, pi}];
        if (cache.source != target.ptr || cache.rows != mapRows) {
          // 2-D: [rows, cols]; 3-D: [d0, d1, d2] innermost first.
          bool three = param.box3 && target.shape.size() == 3;
          unsigned rank = three ? 3 : 2;
          TensorMapBytes map;
          uint64_t dims[3] = {static_cast<uint64_t>(cols),
                              static_cast<uint64_t>(mapRows), 1};
          uint64_t strides[2] = {static_cast<uint64_t>(cols * 2), 0};
          if (three) {
            dims[1] = static_cast<uint64_t>(target.shape[1]);
            dims[2] = static_cast<uint64_t>(target.shape[0]);
            strides[1] = static_cast<uint64_t>(target.shape[1] * cols * 2);
          }
          unsigned box[3] = {static_cast<unsigned>(param.boxCols),
                             static_cast<unsigned>(param.boxRows), 1};
          unsigned elementStrides[3] = {1, 1, 1};
          if (!check(d.cuTensorMapEncodeTiled(
                         &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank,
                         reinterpret_cast<void *>(target.ptr), dims, strides,
                         box, elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                         CU_TENSOR_MAP_SWIZZLE_128B,
                         CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
                     "cuTensorMapEncodeTiled(" + v.function + ")", error) ||
              !ensure(cache.device, sizeof map, error) ||
              !check(d.cuMemcpyHtoD(cache.device.ptr, &map, sizeof map),
                     "cuMemcpyHtoD(tensor map)", error))
            return false;
          cache.source = target.ptr;
          cache.rows = mapRows;
        }
        fields.push_back(static_cast<int64_t>(cache.device.ptr));
        break;
      }
      }
    }
    for (int dim = 0; dim < 3; ++dim) {
      const plan::GridExtent &g = v.grid[dim];
      int64_t numerator =
          (g.rowsOf >= 0 ? rowsOf(g.rowsOf) * g.perRow : 0) + g.constant;
      int64_t n = g.perSm > 0 ? g.perSm * model.sms
                              : (numerator + g.divisor - 1) / g.divisor;
      p.grid[dim] = static_cast<unsigned>(std::max<int64_t>(n, 1));
    }
    prepared.push_back(std::move(p));
  }
  return true;
}

//===----------------------------------------------------------------------===//
// The all-to-all token exchange
//===----------------------------------------------------------------------===//
//
// The pairs a rank sends depend on the step's routing, which is on the
// device: a dispatch waits for the stream, copies the routing to the host,
// exchanges the per-expert counts and the gates over MPI (a few bytes per
// pair), and moves the rows themselves GPU to GPU with NCCL sends and
// receives in one group, a block per (peer, expert), each landing at its
// place in the expert-major received order (docs/dialect.md). A row
// gather-sum kernel of the engine packs the sent rows beforehand; on the
// way back it sums each row's outputs in the reference's order. The
// combine needs no routing from the device, but waits for the stream too
// so that nothing it and the launches after it allocate is still in use.

bool CudaSession::gatherRows(size_t li, CUdeviceptr in, int64_t inRows,
                             CUdeviceptr out, int64_t outRows, int64_t width,
                             std::string &error) {
  if (outRows == 0)
    return true;
  const plan::Launch &l = model.bound->plan.launches[li];
  const GpuLaunch &g = l.gpu[0].variants[0];
  std::vector<int64_t> &lists = exchangeState.lists;
  DeviceBuffer &buffer = exchangeState.listBuffer;
  size_t sources = lists.size() - static_cast<size_t>(outRows + 1);
  if (!ensure(buffer, lists.size() * 8, error) ||
      !check(driver.cuMemcpyHtoDAsync(buffer.ptr, lists.data(),
                                      lists.size() * 8, stream),
             "cuMemcpyHtoDAsync(token exchange lists)", error))
    return false;
  Prepared p;
  p.launch = li;
  p.function = model.functions[g.function];
  p.block = static_cast<unsigned>(g.blockThreads);
  p.grid[0] = static_cast<unsigned>(outRows);
  p.name = g.function + " (plan launch " + std::to_string(li) + ")";
  p.profileKey = g.function + "@" + std::to_string(stepTokens);
  appendDescriptor(p.fields, in, {inRows, width});
  appendDescriptor(p.fields, buffer.ptr, {outRows + 1});
  appendDescriptor(p.fields, buffer.ptr + (outRows + 1) * 8,
                   {static_cast<int64_t>(sources)});
  appendDescriptor(p.fields, out, {outRows, width});
  return enqueue(p, error);
}

bool CudaSession::pointToPoint(size_t li,
                               const std::vector<PointToPoint> &moves,
                               bool bf16, const std::string &what,
                               std::string &error) {
  nccl::Library &n = *model.nccl;
  if (!model.exchange) {
    error = "rank " + std::to_string(model.bound->rank) +
            ": the NCCL communicators were aborted after an earlier failure";
    return false;
  }
  auto *s = reinterpret_cast<nccl::cudaStream_t>(stream);
  int type = bf16 ? nccl::ncclBfloat16 : nccl::ncclFloat32;
  std::string name = what + " (plan launch " + std::to_string(li) + ")";
  Timed timed;
  if (model.options.profile) {
    timed = {what + "@" + std::to_string(stepTokens), event(), event()};
    driver.cuEventRecord(timed.begin, stream);
  }
  nccl::ncclResult_t r = n.groupStart();
  for (const PointToPoint &m : moves) {
    if (r != nccl::ncclSuccess)
      break;
    r = m.send ? n.send(reinterpret_cast<const void *>(m.data), m.count, type,
                        m.peer, model.exchange, s)
               : n.recv(reinterpret_cast<void *>(m.data), m.count, type, m.peer,
                        model.exchange, s);
  }
  // A group that was started is ended even after a failed call.
  nccl::ncclResult_t ended = n.groupEnd();
  if (r == nccl::ncclSuccess)
    r = ended;
  if (r != nccl::ncclSuccess) {
    error = "rank " + std::to_string(model.bound->rank) + ": " +
            n.describe(name.c_str(), r);
    return nameSilentRanks(error);
  }
  if (model.options.profile) {
    driver.cuEventRecord(timed.end, stream);
    pending.push_back(timed);
  }
  lastEnqueued = name;
  if (model.options.syncEachLaunch && !wait("running " + name, error))
    return false;
  return true;
}

bool CudaSession::exchangeTokens(const Step &step, size_t li,
                                 std::string &error) {
  const plan::Launch &l = model.bound->plan.launches[li];
  std::string before = lastEnqueued.empty() ? "nothing" : lastEnqueued;
  if (!wait("the step before the token exchange (plan launch " +
                std::to_string(li) + "; last launch: " + before + ")",
            error))
    return false;
  bool ok = l.kind == plan::LaunchKind::TokenDispatch
                ? dispatchTokens(step, li, error)
                : combineTokens(step, li, error);
  if (ok && !step.dumpDir.empty())
    ok = dumpResults(step, li, "the token exchange", error);
  return ok;
}

bool CudaSession::dispatchTokens(const Step &step, size_t li,
                                 std::string &error) {
  const BoundPlan &bound = *model.bound;
  const plan::Plan &plan = bound.plan;
  const plan::Launch &l = plan.launches[li];
  Communicator &mpi = *bound.exchange;
  int64_t me = mpi.rank();
  TokenExchangeShape shape = TokenExchangeShape::of(plan, l, mpi.size());
  int64_t ranks = shape.ranks, groups = shape.groups, perGroup = shape.perGroup;
  int64_t width = shape.width, experts = shape.experts, local = shape.local;
  const plan::Value &input = plan.values[l.args[0]];
  size_t element = plan::elementSize(input.dtype);
  int64_t t = step.tokenCount;
  TokenExchange &x = exchangeState;
  std::string where = "rank " + std::to_string(bound.rank) +
                      ": token dispatch (plan launch " + std::to_string(li) +
                      ")";

  // The routing of the replica's rows (an idle replica's ranks routed
  // nothing: they send nothing and only receive).
  int64_t routed = t > 0 ? step.rows[l.args[1]] : 0;
  x.indices.assign(static_cast<size_t>(routed), 0);
  x.gates.assign(static_cast<size_t>(routed), 0.0f);
  x.offsets.assign(static_cast<size_t>(experts + 1), 0);
  if (t > 0 &&
      (!check(driver.cuMemcpyDtoH(x.indices.data(), valuePtr[l.args[1]],
                                  routed * 8),
              "cuMemcpyDtoH(token indices)", error) ||
       !check(driver.cuMemcpyDtoH(x.offsets.data(), valuePtr[l.args[2]],
                                  (experts + 1) * 8),
              "cuMemcpyDtoH(expert offsets)", error) ||
       !check(
           driver.cuMemcpyDtoH(x.gates.data(), valuePtr[l.args[3]], routed * 4),
           "cuMemcpyDtoH(gates)", error)))
    return false;
  // What the router wrote decides host indexing below: check it first.
  for (int64_t e = 0; t > 0 && e < experts; ++e)
    if (x.offsets[0] != 0 || x.offsets[e] > x.offsets[e + 1] ||
        x.offsets[experts] > routed) {
      error = where +
              ": the router's expert offsets are not ascending "
              "within its " +
              std::to_string(routed) + " pairs";
      return false;
    }
  for (int64_t p = 0; p < routed; ++p)
    if (x.indices[p] < 0 || x.indices[p] >= t) {
      error = where + ": the router's pair " + std::to_string(p) +
              " names row " + std::to_string(x.indices[p]) + " of " +
              std::to_string(t);
      return false;
    }
  int64_t begin = step.pieceBegin[me], end = begin + step.pieceRows[me];
  routeTokenSends(shape, x.indices.data(), x.offsets.data(), t > 0 ? begin : 0,
                  t > 0 ? end : 0, x.sent);
  auto failed = [&](Status s) {
    error = s.message;
    return false;
  };
  if (Status s = mpi.allToAllCounts(x.sent.perRankExpert,
                                    static_cast<size_t>(local), x.received);
      !s.ok())
    return failed(s);
  // The gates travel with the counts, on the host.
  std::vector<size_t> sendCounts, receiveCounts;
  x.sendGates.clear();
  int64_t pairs = 0;
  for (int64_t r = 0; r < ranks; ++r) {
    const std::vector<int64_t> &sent = x.sent.toGroup[r / perGroup];
    for (int64_t p : sent)
      x.sendGates.push_back(x.gates[p]);
    sendCounts.push_back(sent.size());
    int64_t from = 0;
    for (int64_t e = 0; e < local; ++e)
      from += x.received[r * local + e];
    receiveCounts.push_back(static_cast<size_t>(from));
    pairs += from;
  }
  x.arrivedGates.assign(static_cast<size_t>(pairs), 0.0f);
  if (Status s = mpi.allToAll(x.sendGates.data(), sendCounts,
                              x.arrivedGates.data(), receiveCounts);
      !s.ok())
    return failed(s);

  step.setReceived(plan, pairs);
  if (!bindResults(step, li, error))
    return false;
  // Sender s's pairs of local expert e are filed at filedAt[s][e] of the
  // expert-major order; their gates arrived sender-major.
  fileReceivedPairs(shape, x.received, x.filedAt, x.gotOffsets);
  x.gotGates.assign(static_cast<size_t>(pairs), 0.0f);
  x.pairIndices.resize(static_cast<size_t>(pairs));
  size_t arrived = 0;
  for (int64_t s = 0; s < ranks; ++s)
    for (int64_t e = 0; e < local; ++e)
      for (int64_t k = 0; k < x.received[s * local + e]; ++k, ++arrived)
        x.gotGates[x.filedAt[s * local + e] + k] = x.arrivedGates[arrived];
  for (int64_t i = 0; i < pairs; ++i)
    x.pairIndices[i] = i;
  CUdeviceptr rows = valuePtr[l.results[0]];
  if (!check(driver.cuMemcpyHtoDAsync(valuePtr[l.results[2]],
                                      x.gotOffsets.data(),
                                      x.gotOffsets.size() * 8, stream),
             "cuMemcpyHtoDAsync(received offsets)", error) ||
      (pairs > 0 &&
       (!check(driver.cuMemcpyHtoDAsync(valuePtr[l.results[1]],
                                        x.pairIndices.data(), pairs * 8,
                                        stream),
               "cuMemcpyHtoDAsync(pair indices)", error) ||
        !check(driver.cuMemcpyHtoDAsync(valuePtr[l.results[3]],
                                        x.gotGates.data(), pairs * 4, stream),
               "cuMemcpyHtoDAsync(received gates)", error))))
    return false;

  // The sent rows, group by group in routing order, packed on the device.
  int64_t sent = 0;
  for (const std::vector<int64_t> &g : x.sent.toGroup)
    sent += static_cast<int64_t>(g.size());
  x.lists.clear();
  for (int64_t i = 0; i <= sent; ++i)
    x.lists.push_back(i);
  for (const std::vector<int64_t> &g : x.sent.toGroup)
    for (int64_t p : g)
      x.lists.push_back(x.indices[p]);
  if (!ensure(x.sendRows, sent * width * element, error) ||
      !gatherRows(li, valuePtr[l.args[0]], t, x.sendRows.ptr, sent, width,
                  error))
    return false;

  // A block per (peer, expert) each way, in expert order on both sides.
  std::vector<PointToPoint> moves;
  size_t rowBytes = static_cast<size_t>(width) * element;
  for (int64_t r = 0; r < ranks; ++r) {
    int64_t g = r / perGroup, from = 0;
    for (int64_t h = 0; h < g; ++h)
      from += static_cast<int64_t>(x.sent.toGroup[h].size());
    for (int64_t e = 0; e < local; ++e) {
      int64_t n = x.sent.perGroupExpert[g * local + e];
      if (n > 0)
        moves.push_back({true, x.sendRows.ptr + from * rowBytes,
                         static_cast<size_t>(n * width), static_cast<int>(r)});
      from += n;
    }
  }
  for (int64_t s = 0; s < ranks; ++s)
    for (int64_t e = 0; e < local; ++e)
      if (int64_t n = x.received[s * local + e])
        moves.push_back({false, rows + x.filedAt[s * local + e] * rowBytes,
                         static_cast<size_t>(n * width), static_cast<int>(s)});
  return pointToPoint(li, moves, input.dtype == plan::DType::BF16,
                      "ncclSend/ncclRecv (token dispatch)", error);
}

bool CudaSession::combineTokens(const Step &step, size_t li,
                                std::string &error) {
  const BoundPlan &bound = *model.bound;
  const plan::Plan &plan = bound.plan;
  const plan::Launch &l = plan.launches[li];
  TokenExchangeShape shape =
      TokenExchangeShape::of(plan, l, bound.exchange->size());
  int64_t ranks = shape.ranks, groups = shape.groups, perGroup = shape.perGroup;
  int64_t width = shape.width, local = shape.local;
  int64_t t = step.tokenCount;
  TokenExchange &x = exchangeState;
  if (x.received.size() != static_cast<size_t>(ranks * local) ||
      x.sent.toGroup.size() != static_cast<size_t>(groups)) {
    error = "rank " + std::to_string(bound.rank) +
            ": a token combine (plan launch " + std::to_string(li) +
            ") without its dispatch";
    return false;
  }
  if (!bindResults(step, li, error))
    return false;
  // From rank r come the outputs of what this rank sent to r's group, in
  // the order sent.
  std::vector<int64_t> fromRank(static_cast<size_t>(ranks + 1), 0);
  for (int64_t r = 0; r < ranks; ++r)
    fromRank[r + 1] =
        fromRank[r] + static_cast<int64_t>(x.sent.toGroup[r / perGroup].size());
  int64_t back = fromRank[ranks];
  size_t rowBytes = static_cast<size_t>(width) * 4;
  if (!ensure(x.backRows, back * rowBytes, error))
    return false;
  std::vector<PointToPoint> moves;
  CUdeviceptr outputs = valuePtr[l.args[0]];
  for (int64_t s = 0; s < ranks; ++s)
    for (int64_t e = 0; e < local; ++e)
      if (int64_t n = x.received[s * local + e])
        moves.push_back({true, outputs + x.filedAt[s * local + e] * rowBytes,
                         static_cast<size_t>(n * width), static_cast<int>(s)});
  for (int64_t r = 0; r < ranks; ++r) {
    int64_t g = r / perGroup, at = fromRank[r];
    for (int64_t e = 0; e < local; ++e) {
      int64_t n = x.sent.perGroupExpert[g * local + e];
      if (n > 0)
        moves.push_back({false, x.backRows.ptr + at * rowBytes,
                         static_cast<size_t>(n * width), static_cast<int>(r)});
      at += n;
    }
  }
  if (!pointToPoint(li, moves, /*bf16=*/false,
                    "ncclSend/ncclRecv (token combine)", error))
    return false;
  // Row by row, its pairs in routing order and each pair's outputs in rank
  // order (the reference's sum); rows outside the piece stay zero.
  std::vector<std::vector<int64_t>> sources(static_cast<size_t>(t));
  for (int64_t g = 0; g < groups; ++g) {
    const std::vector<int64_t> &sent = x.sent.toGroup[g];
    for (size_t q = 0; q < sent.size(); ++q)
      for (int64_t r = g * perGroup; r < (g + 1) * perGroup; ++r)
        sources[x.indices[sent[q]]].push_back(fromRank[r] +
                                              static_cast<int64_t>(q));
  }
  x.lists.assign(1, 0);
  for (const std::vector<int64_t> &row : sources)
    x.lists.push_back(x.lists.back() + static_cast<int64_t>(row.size()));
  for (const std::vector<int64_t> &row : sources)
    x.lists.insert(x.lists.end(), row.begin(), row.end());
  return gatherRows(li, x.backRows.ptr, back, valuePtr[l.results[0]], t, width,
                    error);
}

Status CudaSession::run(const Step &step, StepOutput &out) {
  std::string error;
  if (runStep(step, out, error))
    return {};
  return Status::error(error.find("cuMemAlloc") != std::string::npos
                           ? StatusCode::OutOfMemory
                           : StatusCode::DeviceError,
                       error);
}

bool CudaSession::runStep(const Step &step, StepOutput &out,
                          std::string &error) {
  const plan::Plan &plan = model.bound->plan;
  Driver &d = driver;
  int64_t vocab = plan.vocab();
  bool pickToken = step.mode == OutputMode::Token;
  bool sample = pickToken && step.sample[0] > 0;
  lastEnqueued.clear();
  stepTokens = step.tokenCount;
  if (!check(d.cuCtxSetCurrent(model.context), "cuCtxSetCurrent", error))
    return false;
  int64_t t = step.tokenCount;
  tokens32.assign(step.tokens, step.tokens + t);
  if (!ensure(tokens, t * 8, error) || !ensure(positions, t * 8, error) ||
      !ensure(arena, std::max<int64_t>(plan.arenaBytesPerToken * t, 1),
              error) ||
      !prepareSlots(step, error))
    return false;

  for (size_t id = 0; id < plan.values.size(); ++id) {
    const plan::Value &v = plan.values[id];
    if (v.kind != plan::ValueKind::Input || (t == 0 && v.input != "rank"))
      continue; // an idle replica's step has no tokens
    if (v.input == "rank") {
      // Expert-parallel routing reads the rank in its tensor-parallel group.
      rankHost = model.bound->groupRank;
      if (!ensure(rank, sizeof rankHost, error) ||
          !check(
              d.cuMemcpyHtoDAsync(rank.ptr, &rankHost, sizeof rankHost, stream),
              "cuMemcpyHtoDAsync(rank)", error))
        return false;
      valuePtr[id] = rank.ptr;
      continue;
    }
    bool isPositions = v.input == "positions";
    const void *src = isPositions ? static_cast<const void *>(step.positions)
                      : v.dtype == plan::DType::I32
                          ? static_cast<const void *>(tokens32.data())
                          : static_cast<const void *>(step.tokens);
    DeviceBuffer &dst = isPositions ? positions : tokens;
    size_t bytes = t * plan::elementSize(v.dtype);
    if (!check(d.cuMemcpyHtoDAsync(dst.ptr, src, bytes, stream),
               "cuMemcpyHtoDAsync(" + v.input + ")", error))
      return false;
    valuePtr[id] = dst.ptr;
  }

  auto shapeOf = [&](int64_t id) { return step.shapeOf(plan, id); };

  // Phase 1: everything that allocates, encodes or copies. A token
  // exchange needs the routing on the host: the launches before it are
  // enqueued first, and it runs at once (exchangeTokens).
  // Decode steps replay CUDA graphs (one per part between exchanges).
  bool graphable = t == 1 && model.options.cudaGraphs &&
                   !model.options.profile && !model.options.syncEachLaunch &&
                   step.dumpDir.empty();
  prepared.clear();
  segment = 0;
  for (size_t li = 0; li < plan.launches.size(); ++li) {
    const plan::Launch &l = plan.launches[li];
    if ((l.kind == plan::LaunchKind::TokenDispatch ||
         l.kind == plan::LaunchKind::TokenCombine) &&
        model.bound->takesPart(l)) {
      if (!flush(step, graphable, error) || !exchangeTokens(step, li, error))
        return false;
      continue;
    }
    if (!prepareLaunch(step, li, error))
      return false;
  }

  // The next token picked on the GPU from the last logits row: the argmax,
  // or a draw whose parameters and uniform number are copied in before the
  // launches (so a decode graph replays with each step's draw).
  if (pickToken) {
    const std::string &function =
        sample ? plan.sample.function : plan.argmax.function;
    if (function.empty()) {
      error = std::string("engine: no GPU ") +
              (sample ? "sampling" : "argmax") +
              " function (recompile the engine)";
      return false;
    }
    if (!ensure(greedy, sizeof(int64_t), error))
      return false;
    Prepared p;
    p.launch = plan.launches.size();
    p.function = model.functions[function];
    p.grid[0] = p.grid[1] = p.grid[2] = 1;
    p.block = static_cast<unsigned>(sample ? plan.sample.blockThreads
                                           : plan.argmax.blockThreads);
    p.shared = 0;
    p.name = function;
    p.profileKey = function + "@" + std::to_string(t);
    appendDescriptor(p.fields, valuePtr[plan.logits], shapeOf(plan.logits));
    if (sample) {
      std::copy(step.sample, step.sample + 4, sampleHost);
      if (!ensure(sampleRequest, sizeof sampleHost, error) ||
          !check(d.cuMemcpyHtoDAsync(sampleRequest.ptr, sampleHost,
                                     sizeof sampleHost, stream),
                 "cuMemcpyHtoDAsync(sampling request)", error))
        return false;
      appendDescriptor(p.fields, sampleRequest.ptr, {4});
    }
    appendDescriptor(p.fields, greedy.ptr, {1});
    prepared.push_back(std::move(p));
  }

  // Phase 2: launches only, replayed from a graph for repeated decode steps.
  std::string lastKernel = !prepared.empty()       ? prepared.back().name
                           : !lastEnqueued.empty() ? lastEnqueued
                                                   : std::string("none");
  if (!flush(step, graphable, error))
    return false;

  if (pickToken) {
    int64_t *greedyToken = &out.token;
    if (!check(d.cuMemcpyDtoHAsync(greedyToken, greedy.ptr, sizeof(int64_t),
                                   stream),
               "cuMemcpyDtoHAsync(token)", error) ||
        !wait("the step (last launch: " + lastKernel +
                  "; KILN_CUDA_SYNC=1 names the failing kernel)",
              error))
      return false;
    out.logits.clear();
    if (model.options.profile)
      collectProfile();
    if (model.options.checkSampler) {
      std::vector<float> row(static_cast<size_t>(vocab));
      CUdeviceptr last = valuePtr[plan.logits] +
                         (step.rows[plan.logits] - 1) * vocab * sizeof(float);
      if (!check(d.cuMemcpyDtoH(row.data(), last, row.size() * 4),
                 "cuMemcpyDtoH(logits for KILN_CHECK_SAMPLER)", error))
        return false;
      SamplingParams params; // temperature 0: the argmax
      double u = 0;
      if (sample) {
        params.temperature = step.sample[0];
        params.topK = static_cast<int64_t>(step.sample[1]);
        params.topP = step.sample[2];
        u = step.sample[3];
      }
      int64_t host = Sampler::pickWith(params, row.data(), vocab, u);
      ++samplerChecks;
      if (host != *greedyToken) {
        ++samplerMismatches;
        std::fprintf(stderr,
                     "kiln: sampler check: step %zu: GPU picked %lld, the "
                     "host rule %lld (temperature %g, top_k %lld, top_p %g, "
                     "u %.17g)\n",
                     step.index, static_cast<long long>(*greedyToken),
                     static_cast<long long>(host), params.temperature,
                     static_cast<long long>(params.topK), params.topP, u);
      }
    }
    return true;
  }
  std::vector<float> &logits = out.logits;
  int64_t logitRows = step.rows[plan.logits];
  logits.resize(static_cast<size_t>(logitRows * vocab));
  if (logitRows == 0) // an idle replica's step
    return wait("the step (last launch: " + lastKernel + ")", error);
  // The last row only, when that is all the caller wants.
  CUdeviceptr from = valuePtr[plan.logits];
  if (step.mode != OutputMode::AllLogits && logitRows > 1) {
    from += (logitRows - 1) * vocab * sizeof(float);
    logits.resize(static_cast<size_t>(vocab));
  }
  if (!check(d.cuMemcpyDtoHAsync(logits.data(), from,
                                 logits.size() * sizeof(float), stream),
             "cuMemcpyDtoHAsync(logits)", error) ||
      !wait("the step (last launch: " + lastKernel +
                "; KILN_CUDA_SYNC=1 names the failing kernel)",
            error))
    return false;
  if (model.options.profile)
    collectProfile();
  return true;
}
