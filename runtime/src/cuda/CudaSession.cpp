//===- CudaSession.cpp - Running sm_90a engines ---------------------------===//
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
// KILN_CUDA_GRAPH=0 turns graphs off.
//
// KILN_PROFILE=1 times every launch with events and prints, when the session
// ends, the time per GPU function and step size (bench/device.sh reads it).
//
// Errors name the CUDA call and the kernel. Launch errors surface at once;
// faults inside a kernel at the end of the step, or at the kernel itself
// when KILN_CUDA_SYNC=1 (one synchronization per launch).
//
//===----------------------------------------------------------------------===//

#include "../CudaSession.h"
#include "../Plan.h"
#include "kiln/runtime/CudaDriver.h"
#include "kiln/runtime/EngineFile.h"
#include "kiln/runtime/Sampler.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

using namespace kiln;
using namespace kiln::cuda;
using plan::GpuParam;
using plan::GpuVariant;

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
  std::vector<int64_t> hostPositions; // of rows [start, start + count)
};

/// An operand as a kernel sees it this step.
struct Operand {
  CUdeviceptr ptr = 0;
  std::vector<int64_t> shape;
  std::string dtype;
};

struct alignas(64) TensorMapBytes {
  uint8_t bytes[128];
};

struct CachedMap {
  DeviceBuffer device;
  CUdeviceptr source = 0;
  int64_t rows = -1;
};

} // namespace

struct CudaSession::State {
  std::unique_ptr<Driver> driver;
  CUdevice device = 0;
  CUcontext context = nullptr;
  CUstream stream = nullptr;
  CUmodule module = nullptr;
  int64_t sms = 1; // streaming multiprocessors of the GPU
  std::map<std::string, CUfunction> functions;
  std::vector<DeviceBuffer> owned;      // weights, repacks
  std::vector<CUdeviceptr> valuePtr;    // per plan value
  std::vector<DeviceBuffer> ownBuffers; // per plan value (non-arena)
  DeviceBuffer arena, tokens, positions, scratch, greedy, sampleRequest;
  /// {temperature, top_k, top_p, u} of the step being sampled.
  double sampleHost[4] = {};
  std::vector<GpuSlot> slots;
  DeviceBuffer counts; // int64 key count per slot, this step's rows included
  std::vector<int64_t> countsHost;

  struct Prepared {
    /// The plan launch this GPU launch belongs to.
    size_t launch = 0;
    CUfunction function;
    unsigned grid[3];
    unsigned block, shared;
    std::vector<int64_t> fields;
    std::string name; // "function (kernel k)", for errors
    std::string profileKey;
    bool operator==(const Prepared &o) const {
      return function == o.function && std::equal(grid, grid + 3, o.grid) &&
             block == o.block && shared == o.shared && fields == o.fields;
    }
  };
  std::vector<Prepared> prepared, graphed;
  void *graph = nullptr, *graphExec = nullptr;
  bool useGraphs = true;
  int64_t graphLaunches = 0, graphCaptures = 0;
  std::map<std::tuple<size_t, size_t, size_t, size_t>, CachedMap> maps;
  std::vector<int32_t> tokens32;
  std::vector<int64_t> tokens64, positionsHost;
  bool syncEachLaunch = false;
  bool poisonFresh = false; // KILN_CUDA_POISON
  size_t steps = 0;         // runs so far (names KILN_DUMP_DIR files)
  // KILN_CHECK_SAMPLER: every token picked on the GPU is picked again on
  // the host from the same logits (copied back) by the same rule.
  bool checkSampler = false;
  int64_t samplerChecks = 0, samplerMismatches = 0;

  // KILN_PROFILE: events around each launch, read after the step.
  bool profile = false;
  struct Timed {
    std::string key;
    CUevent begin, end;
  };
  std::vector<Timed> pending;
  std::vector<CUevent> spareEvents;
  struct Total {
    int64_t calls = 0;
    double ms = 0;
  };
  std::map<std::string, Total> totals;

  CUevent event() {
    if (!spareEvents.empty()) {
      CUevent e = spareEvents.back();
      spareEvents.pop_back();
      return e;
    }
    CUevent e = nullptr;
    driver->cuEventCreate(&e, 0);
    return e;
  }
  void collectProfile() {
    for (Timed &t : pending) {
      float ms = 0;
      if (driver->cuEventElapsedTime(&ms, t.begin, t.end) == CUDA_SUCCESS) {
        totals[t.key].calls += 1;
        totals[t.key].ms += ms;
      }
      spareEvents.push_back(t.begin);
      spareEvents.push_back(t.end);
    }
    pending.clear();
  }
  void printProfile() {
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

  ~State() {
    if (!driver)
      return;
    if (context)
      driver->cuCtxSetCurrent(context);
    printProfile();
    if (checkSampler)
      std::fprintf(stderr,
                   "kiln: sampler check: %lld tokens picked on the GPU, %lld "
                   "differ from the host rule\n",
                   static_cast<long long>(samplerChecks),
                   static_cast<long long>(samplerMismatches));
    dropGraph();
    if (const char *v = std::getenv("KILN_CUDA_GRAPH_STATS"); v && *v)
      std::fprintf(stderr, "kiln-cuda: %lld graph launches, %lld captures\n",
                   static_cast<long long>(graphLaunches),
                   static_cast<long long>(graphCaptures));
    for (Timed &t : pending)
      spareEvents.insert(spareEvents.end(), {t.begin, t.end});
    for (CUevent e : spareEvents)
      if (e)
        driver->cuEventDestroy(e);
    auto release = [&](DeviceBuffer &b) {
      if (b.ptr)
        driver->cuMemFree(b.ptr);
      b = {};
    };
    for (DeviceBuffer &b : owned)
      release(b);
    for (DeviceBuffer &b : ownBuffers)
      release(b);
    release(arena);
    release(tokens);
    release(positions);
    release(scratch);
    release(counts);
    release(greedy);
    release(sampleRequest);
    for (GpuSlot &s : slots) {
      release(s.keys);
      release(s.values);
      release(s.positions);
    }
    for (auto &[key, map] : maps)
      release(map.device);
    if (module)
      driver->cuModuleUnload(module);
    if (stream)
      driver->cuStreamDestroy(stream);
    if (context)
      driver->cuDevicePrimaryCtxRelease(device);
  }

  bool check(CUresult r, const std::string &call, std::string &error) {
    if (r == CUDA_SUCCESS)
      return true;
    error = driver->describe(call.c_str(), r);
    return false;
  }

  /// Grows `b` to at least `bytes` (contents are not kept).
  bool ensure(DeviceBuffer &b, size_t bytes, std::string &error) {
    if (b.bytes >= bytes && b.ptr)
      return true;
    if (b.ptr)
      driver->cuMemFree(b.ptr);
    b = {};
    size_t size = std::max<size_t>(bytes, 256);
    if (!check(driver->cuMemAlloc(&b.ptr, size),
               "cuMemAlloc(" + std::to_string(size) + " bytes)", error))
      return false;
    b.bytes = size;
    // KILN_CUDA_POISON=1: fresh device memory reads as NaN (0xff bytes), as
    // the emulator's does, so a kernel that reads what nobody wrote (a KV
    // pool row past the keys, say) shows it on a GPU too.
    if (poisonFresh && !check(driver->cuMemsetD8(b.ptr, 0xff, size),
                              "cuMemsetD8(poison)", error))
      return false;
    return true;
  }

  /// Makes room for the step's rows in every pool and counts them.
  bool prepareSlots(const std::vector<int64_t> &stepPositions,
                    std::string &error);
  bool enqueue(const Prepared &p, std::string &error);
  void dropGraph() {
    if (graphExec)
      driver->cuGraphExecDestroy(graphExec);
    if (graph)
      driver->cuGraphDestroy(graph);
    graph = graphExec = nullptr;
    graphed.clear();
  }
};

CudaSession::CudaSession(std::unique_ptr<State> state)
    : state(std::move(state)) {}
CudaSession::~CudaSession() = default;

std::unique_ptr<CudaSession> CudaSession::open(const EngineFile &engine,
                                               const plan::Plan &plan,
                                               const std::string &enginePath,
                                               std::string &error) {
  auto s = std::make_unique<State>();
  s->driver = Driver::load(error);
  if (!s->driver)
    return nullptr;
  Driver &d = *s->driver;
  if (!s->check(d.cuDeviceGet(&s->device, 0), "cuDeviceGet", error))
    return nullptr;
  int major = 0, minor = 0;
  d.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                         s->device);
  d.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                         s->device);
  if (major != 9 || minor != 0) {
    char name[128] = {0};
    d.cuDeviceGetName(name, sizeof name - 1, s->device);
    error = enginePath +
            ": sm_90a code runs on H100/H200 (compute capability "
            "9.0); GPU 0 (" +
            name + ") is " + std::to_string(major) + "." +
            std::to_string(minor);
    return nullptr;
  }
  if (!s->check(d.cuDevicePrimaryCtxRetain(&s->context, s->device),
                "cuDevicePrimaryCtxRetain", error) ||
      !s->check(d.cuCtxSetCurrent(s->context), "cuCtxSetCurrent", error) ||
      !s->check(d.cuStreamCreate(&s->stream, 0), "cuStreamCreate", error))
    return nullptr;

  auto cubin = engine.sections.find(SectionKind::CudaCubin);
  auto ptx = engine.sections.find(SectionKind::CudaPtx);
  if (cubin == engine.sections.end() && ptx == engine.sections.end()) {
    error = enginePath + ": sm_90a engine without a cubin or PTX section";
    return nullptr;
  }
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
  if (loaded != CUDA_SUCCESS) {
    error = failure;
    return nullptr;
  }
  int smCount = 0;
  d.cuDeviceGetAttribute(&smCount, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                         s->device);
  s->sms = std::max(smCount, 1);
  int optIn = 0;
  d.cuDeviceGetAttribute(
      &optIn, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, s->device);
  for (const plan::Launch &l : plan.launches) {
    if (l.gpu.empty()) {
      error = enginePath + ": kernel '" + l.kernel + "' has no GPU code";
      return nullptr;
    }
    for (const auto &step : l.gpu)
      for (const GpuVariant &v : step) {
        if (v.function.empty() || s->functions.count(v.function))
          continue;
        CUfunction f = nullptr;
        if (!s->check(d.cuModuleGetFunction(&f, s->module, v.function.c_str()),
                      "cuModuleGetFunction(" + v.function + ")", error))
          return nullptr;
        if (v.sharedBytes > optIn) {
          error = enginePath + ": " + v.function + " needs " +
                  std::to_string(v.sharedBytes) +
                  " bytes of shared memory; GPU 0 allows " +
                  std::to_string(optIn);
          return nullptr;
        }
        if (v.sharedBytes > 48 * 1024 &&
            !s->check(d.cuFuncSetAttribute(
                          f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                          static_cast<int>(v.sharedBytes)),
                      "cuFuncSetAttribute(" + v.function + ")", error))
          return nullptr;
        s->functions[v.function] = f;
      }
  }
  for (const std::string *name : {&plan.argmaxFunction, &plan.sampleFunction}) {
    if (name->empty())
      continue;
    CUfunction f = nullptr;
    if (!s->check(d.cuModuleGetFunction(&f, s->module, name->c_str()),
                  "cuModuleGetFunction(" + *name + ")", error))
      return nullptr;
    s->functions[*name] = f;
  }
  for (const plan::Slot &info : plan.slotInfo) {
    GpuSlot slot;
    slot.width = info.width;
    slot.chunk = info.chunk;
    s->slots.push_back(std::move(slot));
  }
  for (const plan::Launch &l : plan.launches)
    for (const plan::AttentionUse &a : l.attention)
      s->slots[a.slot].elementBytes = static_cast<int64_t>(
          plan::elementSize(plan.values[l.args[a.keyArg]].dtype));
  s->valuePtr.assign(plan.values.size(), 0);
  s->ownBuffers.resize(plan.values.size());
  const char *sync = std::getenv("KILN_CUDA_SYNC");
  s->syncEachLaunch = sync && *sync && std::string(sync) != "0";
  const char *poison = std::getenv("KILN_CUDA_POISON");
  s->poisonFresh = poison && *poison && std::string(poison) != "0";
  const char *checkSampler = std::getenv("KILN_CHECK_SAMPLER");
  s->checkSampler =
      checkSampler && *checkSampler && std::string(checkSampler) != "0";
  const char *profile = std::getenv("KILN_PROFILE");
  s->profile = profile && *profile && std::string(profile) != "0";
  const char *graphs = std::getenv("KILN_CUDA_GRAPH");
  s->useGraphs = !(graphs && std::string(graphs) == "0");
  s->countsHost.assign(s->slots.size(), 0);
  if (!s->slots.empty() &&
      !s->ensure(s->counts, s->slots.size() * sizeof(int64_t), error))
    return nullptr;
  return std::unique_ptr<CudaSession>(new CudaSession(std::move(s)));
}

bool CudaSession::upload(const plan::Plan &plan, std::string &error) {
  State &s = *state;
  std::vector<bool> used(plan.values.size(), false);
  for (const plan::Launch &l : plan.launches) {
    for (int64_t id : l.args)
      used[id] = true;
  }
  for (size_t id = 0; id < plan.values.size(); ++id) {
    const plan::Value &v = plan.values[id];
    if (!used[id] || (v.kind != plan::ValueKind::Weight &&
                      v.kind != plan::ValueKind::Concat))
      continue;
    int64_t n = 1;
    for (int64_t dim : v.shape)
      n *= dim;
    size_t bytes = static_cast<size_t>(n) * plan::elementSize(v.dtype);
    DeviceBuffer b;
    if (!s.ensure(b, bytes, error))
      return false;
    s.owned.push_back(b);
    if (!s.check(s.driver->cuMemcpyHtoD(b.ptr, v.data, bytes),
                 "cuMemcpyHtoD(" +
                     (v.name.empty() ? "repacked weight" : v.name) + ")",
                 error))
      return false;
    s.valuePtr[id] = b.ptr;
  }
  return true;
}

bool CudaSession::reserve(const plan::Plan &plan, int64_t tokens,
                          std::string &error) {
  State &s = *state;
  if (tokens <= 0)
    return true;
  double total = 0;
  for (size_t i = 0; i < s.slots.size(); ++i)
    total += double(plan::reservedRows(plan.slotInfo[i], tokens)) *
             (2.0 * s.slots[i].width * s.slots[i].elementBytes + 8);
  for (size_t i = 0; i < s.slots.size(); ++i) {
    GpuSlot &slot = s.slots[i];
    int64_t rows = plan::reservedRows(plan.slotInfo[i], tokens);
    size_t row = static_cast<size_t>(slot.width * slot.elementBytes);
    std::string why;
    if (!s.ensure(slot.keys, rows * row, why) ||
        !s.ensure(slot.values, rows * row, why) ||
        !s.ensure(slot.positions, rows * 8, why)) {
      char gib[32];
      std::snprintf(gib, sizeof gib, "%.2f", total / (1024.0 * 1024 * 1024));
      error = "reserving the KV caches for " + std::to_string(tokens) +
              " tokens of context (" + gib + " GiB on the GPU): " + why;
      return false;
    }
    slot.capacity = slot.reserved = rows;
  }
  return true;
}

void CudaSession::reset() {
  for (GpuSlot &slot : state->slots) {
    slot.start = slot.count = 0;
    slot.hostPositions.clear();
  }
}

bool CudaSession::State::enqueue(const Prepared &p, std::string &error) {
  std::vector<void *> params;
  std::vector<int64_t> fields = p.fields;
  for (int64_t &f : fields)
    params.push_back(&f);
  // The driver reads exactly the function's parameter count; the null after
  // them lets test/fakecuda check that count.
  params.push_back(nullptr);
  Timed timed;
  if (profile) {
    timed = {p.profileKey, event(), event()};
    driver->cuEventRecord(timed.begin, stream);
  }
  if (!check(driver->cuLaunchKernel(p.function, p.grid[0], p.grid[1], p.grid[2],
                                    p.block, 1, 1, p.shared, stream,
                                    params.data(), nullptr),
             "cuLaunchKernel(" + p.name + ")", error))
    return false;
  if (profile) {
    driver->cuEventRecord(timed.end, stream);
    pending.push_back(timed);
  }
  if (syncEachLaunch &&
      !check(driver->cuStreamSynchronize(stream), "running " + p.name, error))
    return false;
  return true;
}

bool CudaSession::State::prepareSlots(const std::vector<int64_t> &stepPositions,
                                      std::string &error) {
  int64_t t = static_cast<int64_t>(stepPositions.size());
  int64_t first = *std::min_element(stepPositions.begin(), stepPositions.end());
  for (size_t i = 0; i < slots.size(); ++i) {
    GpuSlot &slot = slots[i];
    size_t row = static_cast<size_t>(slot.width * slot.elementBytes);
    if (slot.chunk > 0 && !slot.hostPositions.empty()) {
      size_t drop = plan::chunkedKeep(slot.hostPositions, slot.chunk, first);
      slot.hostPositions.erase(slot.hostPositions.begin(),
                               slot.hostPositions.begin() + drop);
      slot.start += static_cast<int64_t>(drop);
      slot.count -= static_cast<int64_t>(drop);
    }
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
        if (!check(driver->cuMemcpyDtoDAsync(keys.ptr,
                                             slot.keys.ptr + slot.start * row,
                                             live, stream),
                   "cuMemcpyDtoDAsync(KV pool)", error) ||
            !check(driver->cuMemcpyDtoDAsync(values.ptr,
                                             slot.values.ptr + slot.start * row,
                                             live, stream),
                   "cuMemcpyDtoDAsync(KV pool)", error) ||
            !check(driver->cuMemcpyDtoDAsync(
                       positions.ptr, slot.positions.ptr + slot.start * 8,
                       slot.count * 8, stream),
                   "cuMemcpyDtoDAsync(key positions)", error))
          return false;
      }
      // Queued copies may still read the old pools: free after them.
      driver->cuStreamSynchronize(stream);
      for (DeviceBuffer *b : {&slot.keys, &slot.values, &slot.positions})
        if (b->ptr)
          driver->cuMemFree(b->ptr);
      slot.keys = keys;
      slot.values = values;
      slot.positions = positions;
      slot.capacity = capacity;
      slot.start = 0;
    }
    slot.hostPositions.insert(slot.hostPositions.end(), stepPositions.begin(),
                              stepPositions.end());
    slot.count += t;
    countsHost[i] = slot.count;
  }
  if (!slots.empty() &&
      !check(driver->cuMemcpyHtoDAsync(counts.ptr, countsHost.data(),
                                       countsHost.size() * 8, stream),
             "cuMemcpyHtoDAsync(key counts)", error))
    return false;
  return true;
}

/// (allocated, aligned, offset, sizes, strides) of a row-major tensor.
static void appendDescriptor(std::vector<int64_t> &fields, CUdeviceptr ptr,
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

bool CudaSession::run(plan::Plan &plan, const std::vector<int64_t> &tokens,
                      const std::vector<int64_t> &positions,
                      std::vector<float> &logits, std::string &error,
                      bool lastOnly, int64_t *greedyToken,
                      const double *sample) {
  State &s = *state;
  Driver &d = *s.driver;
  if (!s.check(d.cuCtxSetCurrent(s.context), "cuCtxSetCurrent", error))
    return false;
  int64_t t = static_cast<int64_t>(tokens.size());
  s.tokens32.assign(tokens.begin(), tokens.end());
  s.tokens64 = tokens;
  s.positionsHost = positions;
  if (!s.ensure(s.tokens, t * 8, error) ||
      !s.ensure(s.positions, t * 8, error) ||
      !s.ensure(s.arena, std::max<int64_t>(plan.arenaBytesPerToken * t, 1),
                error) ||
      !s.prepareSlots(positions, error))
    return false;

  std::vector<int64_t> rows(plan.values.size(), 0);
  for (size_t id = 0; id < plan.values.size(); ++id) {
    plan::Value &v = plan.values[id];
    if (v.kind != plan::ValueKind::Input)
      continue;
    rows[id] = t;
    bool isPositions = v.input == "positions";
    const void *src = isPositions ? static_cast<const void *>(positions.data())
                      : v.dtype == "I32"
                          ? static_cast<const void *>(s.tokens32.data())
                          : static_cast<const void *>(s.tokens64.data());
    DeviceBuffer &dst = isPositions ? s.positions : s.tokens;
    size_t bytes = t * plan::elementSize(v.dtype);
    if (!s.check(d.cuMemcpyHtoDAsync(dst.ptr, src, bytes, s.stream),
                 "cuMemcpyHtoDAsync(" + v.input + ")", error))
      return false;
    s.valuePtr[id] = dst.ptr;
  }

  auto shapeOf = [&](size_t id) {
    std::vector<int64_t> shape = plan.values[id].shape;
    if (!shape.empty() && shape[0] < 0)
      shape[0] = rows[id];
    return shape;
  };

  // Phase 1: everything that allocates, encodes or copies.
  s.prepared.clear();
  for (size_t li = 0; li < plan.launches.size(); ++li) {
    plan::Launch &l = plan.launches[li];
    // The LM head of a last-row-only step reads the last row and writes one.
    bool lastRow = lastOnly && t > 1 && plan::producesLogits(plan, l);
    for (int64_t id : l.results) {
      plan::Value &v = plan.values[id];
      rows[id] = lastRow ? 1 : t * v.rowsPerToken;
      if (v.arenaOffset >= 0) {
        s.valuePtr[id] = s.arena.ptr + v.arenaOffset * t;
        continue;
      }
      int64_t n = 1;
      for (int64_t dim : shapeOf(id))
        n *= dim;
      if (!s.ensure(s.ownBuffers[id], n * plan::elementSize(v.dtype), error))
        return false;
      s.valuePtr[id] = s.ownBuffers[id].ptr;
    }
    std::vector<Operand> operands(l.operandCount());
    for (size_t i = 0; i < operands.size(); ++i) {
      int64_t id = l.operand(i);
      operands[i] = {s.valuePtr[id], shapeOf(id), plan.values[id].dtype};
      const plan::Value &v = plan.values[id];
      if (lastRow && i < l.args.size() && !v.shape.empty() && v.shape[0] < 0) {
        operands[i].ptr += (operands[i].shape[0] - 1) * plan::rowBytes(v);
        operands[i].shape[0] = 1;
      }
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
      const std::vector<GpuVariant> &variants = l.gpu[si];
      size_t vi = variants.size() - 1;
      for (size_t i = 0; i + 1 < variants.size(); ++i)
        if (variants[i].selectOperand >= 0 &&
            rowsOf(variants[i].selectOperand) <= variants[i].maxRows) {
          vi = i;
          break;
        }
      const GpuVariant &v = variants[vi];
      if (v.function.empty())
        continue;
      State::Prepared p;
      p.launch = li;
      p.function = s.functions[v.function];
      p.block = static_cast<unsigned>(v.block);
      p.shared = static_cast<unsigned>(v.sharedBytes);
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
          slot = &s.slots[slotIndex];
          isKey = it->second.second;
        }
        bool needsSlot = param.kind == GpuParam::Kind::KvPool ||
                         param.kind == GpuParam::Kind::KeyPositions ||
                         param.kind == GpuParam::Kind::KeyCount || param.pool;
        if (needsSlot && !slot) {
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
          appendDescriptor(fields, s.counts.ptr + slotIndex * 8, {1});
          break;
        case GpuParam::Kind::Scratch: {
          int64_t n =
              std::max<int64_t>(rowsOf(param.operand) * param.perRow, 1);
          if (!s.ensure(s.scratch, n * (param.floatScratch ? 4 : 8), error))
            return false;
          appendDescriptor(fields, s.scratch.ptr, {n});
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
          CachedMap &cache = s.maps[{li, si, vi, pi}];
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
            if (!s.check(d.cuTensorMapEncodeTiled(
                             &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank,
                             reinterpret_cast<void *>(target.ptr), dims,
                             strides, box, elementStrides,
                             CU_TENSOR_MAP_INTERLEAVE_NONE,
                             CU_TENSOR_MAP_SWIZZLE_128B,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
                         "cuTensorMapEncodeTiled(" + v.function + ")", error) ||
                !s.ensure(cache.device, sizeof map, error) ||
                !s.check(d.cuMemcpyHtoD(cache.device.ptr, &map, sizeof map),
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
        const plan::GpuExtent &g = v.grid[dim];
        int64_t numerator =
            (g.rowsOf >= 0 ? rowsOf(g.rowsOf) * g.perRow : 0) + g.constant;
        int64_t n = g.perSm > 0 ? g.perSm * s.sms
                                : (numerator + g.divisor - 1) / g.divisor;
        p.grid[dim] = static_cast<unsigned>(std::max<int64_t>(n, 1));
      }
      s.prepared.push_back(std::move(p));
    }
  }

  // The next token picked on the GPU from the last logits row: the argmax,
  // or a draw whose parameters and uniform number are copied in before the
  // launches (so a decode graph replays with each step's draw).
  if (greedyToken) {
    const std::string &function =
        sample ? plan.sampleFunction : plan.argmaxFunction;
    if (function.empty()) {
      error = std::string("engine: no GPU ") +
              (sample ? "sampling" : "argmax") +
              " function (recompile the engine)";
      return false;
    }
    if (!s.ensure(s.greedy, sizeof(int64_t), error))
      return false;
    State::Prepared p;
    p.launch = plan.launches.size();
    p.function = s.functions[function];
    p.grid[0] = p.grid[1] = p.grid[2] = 1;
    p.block =
        static_cast<unsigned>(sample ? plan.sampleBlock : plan.argmaxBlock);
    p.shared = 0;
    p.name = function;
    p.profileKey = function + "@" + std::to_string(t);
    appendDescriptor(p.fields, s.valuePtr[plan.logits], shapeOf(plan.logits));
    if (sample) {
      std::copy(sample, sample + 4, s.sampleHost);
      if (!s.ensure(s.sampleRequest, sizeof s.sampleHost, error) ||
          !s.check(d.cuMemcpyHtoDAsync(s.sampleRequest.ptr, s.sampleHost,
                                       sizeof s.sampleHost, s.stream),
                   "cuMemcpyHtoDAsync(sampling request)", error))
        return false;
      appendDescriptor(p.fields, s.sampleRequest.ptr, {4});
    }
    appendDescriptor(p.fields, s.greedy.ptr, {1});
    s.prepared.push_back(std::move(p));
  }

  // Phase 2: launches only, replayed from a graph for repeated decode steps.
  std::string lastKernel =
      s.prepared.empty() ? std::string("none") : s.prepared.back().name;
  std::string dumpDir = plan::dumpDirectory();
  ++s.steps;
  bool graphable = t == 1 && s.useGraphs && !s.profile && !s.syncEachLaunch &&
                   dumpDir.empty();
  if (graphable && (s.graphExec == nullptr || s.prepared != s.graphed)) {
    s.dropGraph();
    if (!s.check(
            d.cuStreamBeginCapture(s.stream, CU_STREAM_CAPTURE_MODE_RELAXED),
            "cuStreamBeginCapture", error))
      return false;
    bool ok = true;
    for (const State::Prepared &p : s.prepared)
      if (!(ok = s.enqueue(p, error)))
        break;
    void *graph = nullptr;
    CUresult ended = d.cuStreamEndCapture(s.stream, &graph);
    if (!ok)
      return false;
    if (!s.check(ended, "cuStreamEndCapture", error))
      return false;
    s.graph = graph;
    if (!s.check(d.cuGraphInstantiateWithFlags(&s.graphExec, s.graph, 0),
                 "cuGraphInstantiateWithFlags", error))
      return false;
    s.graphed = s.prepared;
    ++s.graphCaptures;
  }
  if (graphable) {
    if (!s.check(d.cuGraphLaunch(s.graphExec, s.stream),
                 "cuGraphLaunch(decode step)", error))
      return false;
    ++s.graphLaunches;
  } else {
    for (size_t i = 0; i < s.prepared.size(); ++i) {
      if (!s.enqueue(s.prepared[i], error))
        return false;
      // KILN_DUMP_DIR: after a plan launch's last GPU launch, its results.
      size_t li = s.prepared[i].launch;
      if (dumpDir.empty() || li >= plan.launches.size() ||
          (i + 1 < s.prepared.size() && s.prepared[i + 1].launch == li))
        continue;
      const plan::Launch &l = plan.launches[li];
      for (size_t r = 0; r < l.results.size(); ++r) {
        int64_t id = l.results[r];
        std::vector<int64_t> shape = shapeOf(id);
        int64_t n = 1;
        for (int64_t dim : shape)
          n *= dim;
        std::vector<uint8_t> host(n * plan::elementSize(plan.values[id].dtype));
        if (!s.check(d.cuMemcpyDtoHAsync(host.data(), s.valuePtr[id],
                                         host.size(), s.stream),
                     "cuMemcpyDtoHAsync(dump)", error) ||
            !s.check(d.cuStreamSynchronize(s.stream),
                     "running " + s.prepared[i].name, error) ||
            !plan::dumpValue(dumpDir, s.steps, li, l.kernel, r,
                             plan.values[id].dtype, shape, host.data(), error))
          return false;
      }
    }
  }

  if (greedyToken) {
    if (!s.check(d.cuMemcpyDtoHAsync(greedyToken, s.greedy.ptr, sizeof(int64_t),
                                     s.stream),
                 "cuMemcpyDtoHAsync(token)", error) ||
        !s.check(d.cuStreamSynchronize(s.stream),
                 "the step (last launch: " + lastKernel +
                     "; KILN_CUDA_SYNC=1 names the failing kernel)",
                 error))
      return false;
    logits.clear();
    if (s.profile)
      s.collectProfile();
    if (s.checkSampler) {
      std::vector<float> row(static_cast<size_t>(plan.vocab));
      CUdeviceptr last = s.valuePtr[plan.logits] +
                         (rows[plan.logits] - 1) * plan.vocab * sizeof(float);
      if (!s.check(d.cuMemcpyDtoH(row.data(), last, row.size() * 4),
                   "cuMemcpyDtoH(logits for KILN_CHECK_SAMPLER)", error))
        return false;
      SamplingParams params; // temperature 0: the argmax
      double u = 0;
      if (sample) {
        params.temperature = sample[0];
        params.topK = static_cast<int64_t>(sample[1]);
        params.topP = sample[2];
        u = sample[3];
      }
      int64_t host = Sampler::pickWith(params, row.data(), plan.vocab, u);
      ++s.samplerChecks;
      if (host != *greedyToken) {
        ++s.samplerMismatches;
        std::fprintf(stderr,
                     "kiln: sampler check: step %zu: GPU picked %lld, the "
                     "host rule %lld (temperature %g, top_k %lld, top_p %g, "
                     "u %.17g)\n",
                     s.steps, static_cast<long long>(*greedyToken),
                     static_cast<long long>(host), params.temperature,
                     static_cast<long long>(params.topK), params.topP, u);
      }
    }
    return true;
  }
  int64_t logitRows = rows[plan.logits];
  logits.resize(static_cast<size_t>(logitRows * plan.vocab));
  // The last row only, when that is all the caller wants.
  CUdeviceptr from = s.valuePtr[plan.logits];
  if (lastOnly && logitRows > 1) {
    from += (logitRows - 1) * plan.vocab * sizeof(float);
    logits.resize(static_cast<size_t>(plan.vocab));
  }
  if (!s.check(d.cuMemcpyDtoHAsync(logits.data(), from,
                                   logits.size() * sizeof(float), s.stream),
               "cuMemcpyDtoHAsync(logits)", error) ||
      !s.check(d.cuStreamSynchronize(s.stream),
               "the step (last launch: " + lastKernel +
                   "; KILN_CUDA_SYNC=1 names the failing kernel)",
               error))
    return false;
  if (s.profile)
    s.collectProfile();
  return true;
}
