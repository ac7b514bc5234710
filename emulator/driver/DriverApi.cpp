//===- DriverApi.cpp - The CUDA driver API over the emulated H100 ---------===//
//
// Exports the driver entry points the runtime resolves (CudaDriver.h) and
// those MLIR's mgpu* wrappers need, with the real driver's status codes.
// Launches run to completion inside cuLaunchKernel (a stream is a queue of
// length zero), so a synchronization returns the sticky error of a failed
// launch, as on a GPU. Graph capture records launches and async copies;
// cuGraphLaunch replays them.
//
//===----------------------------------------------------------------------===//

#include "kiln/emu/Device.h"
#include "kiln/emu/Hopper.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace kiln::emu;

namespace {

using CUresult = int;
constexpr CUresult kSuccess = 0, kInvalidValue = 1, kOutOfMemory = 2,
                   kNotInitialized = 3, kInvalidImage = 200,
                   kInvalidContext = 201, kNoBinaryForGpu = 209,
                   kInvalidPtx = 218, kInvalidHandle = 400, kNotFound = 500,
                   kLaunchOutOfResources = 701, kLaunchFailed = 719,
                   kCaptureUnsupported = 900, kCaptureInvalidated = 901;

bool initialized = false;
CUresult sticky = kSuccess; // a failed launch poisons the context
std::string lastError;

struct KernelHandle {
  std::string name;
  const kiln::emu::Function *fn = nullptr;
  const LoadedModule *module = nullptr;
  int maxDynamicShared = 48 * 1024;
};

struct ModuleHandle {
  std::unique_ptr<LoadedModule> loaded;
  std::map<std::string, KernelHandle> functions;
};

struct Launch {
  KernelHandle *f;
  unsigned grid[3], block[3], shared;
  std::vector<std::vector<uint8_t>> params;
};
struct Copy {
  uint64_t dst, src;
  size_t n;
};
/// cuLaunchHostFunc: a host function run in stream order (test support such
/// as the stand-in NCCL enqueues its collectives this way).
struct HostCall {
  void (*fn)(void *) = nullptr;
  void *data = nullptr;
};
struct Node {
  bool isLaunch;
  Launch launch;
  Copy copy;
  HostCall host;
};
struct Graph {
  std::vector<Node> nodes;
};

Graph *capturing = nullptr;
bool captureBroken = false;

struct Event {
  double seconds = 0;
};

double now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void report(const std::string &line) {
  lastError = line;
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

CUresult runLaunch(const Launch &l) {
  std::vector<void *> ptrs;
  for (const auto &p : l.params)
    ptrs.push_back(const_cast<uint8_t *>(p.data()));
  std::string error;
  if (!Device::get().launch(*l.f->module, *l.f->fn, l.grid, l.block, l.shared,
                            ptrs.data(), error)) {
    report(error);
    sticky = kLaunchFailed;
    return kLaunchFailed;
  }
  return kSuccess;
}

/// A copy between any two of: host memory, device allocations (device
/// pointers are host addresses here). Device sides must be inside one
/// allocation.
CUresult copyChecked(uint64_t dst, bool dstDevice, uint64_t src, bool srcDevice,
                     size_t n) {
  Device &d = Device::get();
  if ((dstDevice && !d.contains(dst, n)) || (srcDevice && !d.contains(src, n)))
    return kInvalidValue;
  std::memmove(reinterpret_cast<void *>(dst), reinterpret_cast<void *>(src), n);
  return kSuccess;
}

#define REQUIRE_INIT()                                                         \
  do {                                                                         \
    if (!initialized)                                                          \
      return kNotInitialized;                                                  \
    if (sticky)                                                                \
      return sticky;                                                           \
  } while (0)

} // namespace

extern "C" {

/// KILN_EMU_STATS=1: totals on stderr when the driver is unloaded or the
/// process exits.
__attribute__((destructor)) void printStats() {
  // KILN_EMU_KERNEL_LOG=FILE: the kernels this process launched, one name
  // per line, appended (coverage of a test suite).
  if (const char *log = std::getenv("KILN_EMU_KERNEL_LOG"))
    if (FILE *f = *log ? std::fopen(log, "a") : nullptr) {
      for (const auto &[name, k] : Device::get().perKernel)
        std::fprintf(f, "%s\n", name.c_str());
      std::fclose(f);
    }
  const char *stats = std::getenv("KILN_EMU_STATS");
  if (!stats || !*stats || std::strcmp(stats, "0") == 0)
    return;
  const LaunchStats &t = Device::get().totals;
  std::fprintf(stderr,
               "kiln-emu: %llu launches, %llu blocks, %llu warp instructions "
               "(%llu thread instructions) in %.3f s: %.2f M warp "
               "instructions/s\n",
               static_cast<unsigned long long>(t.launches),
               static_cast<unsigned long long>(t.blocks),
               static_cast<unsigned long long>(t.warpInstructions),
               static_cast<unsigned long long>(t.threadInstructions), t.seconds,
               t.seconds > 0 ? t.warpInstructions / t.seconds / 1e6 : 0.0);
  if (std::strcmp(stats, "kernels") != 0)
    return;
  // KILN_EMU_STATS=kernels: one line per kernel as well.
  for (const auto &[name, k] : Device::get().perKernel)
    std::fprintf(stderr,
                 "kiln-emu: kernel %-32s %5llu launches %8llu blocks %12llu "
                 "warp instructions %8.3f s %7.2f M/s\n",
                 name.c_str(), static_cast<unsigned long long>(k.launches),
                 static_cast<unsigned long long>(k.blocks),
                 static_cast<unsigned long long>(k.warpInstructions), k.seconds,
                 k.seconds > 0 ? k.warpInstructions / k.seconds / 1e6 : 0.0);
}

__attribute__((visibility("default"))) CUresult cuInit(unsigned flags) {
  if (flags)
    return kInvalidValue;
  initialized = true;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuDriverGetVersion(int *v) {
  if (!v)
    return kInvalidValue;
  *v = 13000;
  return kSuccess;
}
/// KILN_EMU_DEVICES=N: that many H100s (default 1), for one process per
/// rank under mpirun; each process emulates the one it picks.
int deviceCount() {
  const char *n = std::getenv("KILN_EMU_DEVICES");
  int count = n && *n ? std::atoi(n) : 1;
  return count >= 1 && count <= 64 ? count : 1;
}
__attribute__((visibility("default"))) CUresult cuDeviceGetCount(int *n) {
  if (!initialized)
    return kNotInitialized;
  *n = deviceCount();
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuDeviceGet(int *d,
                                                            int ordinal) {
  if (!initialized)
    return kNotInitialized;
  if (ordinal < 0 || ordinal >= deviceCount())
    return kInvalidValue;
  *d = ordinal;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuDeviceGetName(char *name,
                                                                int len, int) {
  std::snprintf(name, len, "Kiln emulated H100 (sm_90a, no GPU)");
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuDeviceTotalMem_v2(size_t *bytes, int) {
  *bytes = Device::get().options.memoryBytes;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuDeviceGetAttribute(int *v, int attribute, int) {
  const DeviceProperties &p = Device::get().properties;
  switch (attribute) {
  case 1:
    *v = p.maxThreadsPerBlock;
    break; // max threads per block
  case 2:
    *v = 1024;
    break; // max block dim x
  case 3:
    *v = 1024;
    break;
  case 4:
    *v = 64;
    break;
  case 5:
    *v = 2147483647;
    break; // max grid dim x
  case 6:
  case 7:
    *v = 65535;
    break;
  case 8:
    *v = p.sharedPerBlock;
    break; // shared per block
  case 10:
    *v = p.warpSize;
    break;
  case 12:
    *v = p.registersPerSm;
    break; // registers per block
  case 16:
    *v = p.multiprocessors;
    break;
  case 39:
    *v = 2048;
    break; // max threads per SM
  case 75:
    *v = 9;
    break;
  case 76:
    *v = 0;
    break;
  case 81:
    *v = 233472;
    break; // shared per SM
  case 82:
    *v = p.registersPerSm;
    break;
  case 97:
    *v = p.sharedPerBlockOptin;
    break;
  default:
    *v = 0;
  }
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuDevicePrimaryCtxRetain(void **ctx, int) {
  if (!initialized)
    return kNotInitialized;
  static int context;
  *ctx = &context;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuDevicePrimaryCtxRelease_v2(int) {
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuCtxSetCurrent(void *) {
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuCtxSynchronize() {
  REQUIRE_INIT();
  return kSuccess;
}

__attribute__((visibility("default"))) CUresult
cuModuleLoadData(void **module, const void *image) {
  REQUIRE_INIT();
  const char *text = static_cast<const char *>(image);
  if (!text)
    return kInvalidValue;
  // A cubin (or fatbin) holds SASS, which the emulator cannot run: refused
  // like a binary for another GPU, so callers fall back to PTX.
  if (std::strncmp(text,
                   "\x7f"
                   "ELF",
                   4) == 0 ||
      std::memcmp(text, "\x50\xed\x55\xba", 4) == 0)
    return kNoBinaryForGpu;
  std::string ptx(text);
  // KILN_EMU_PTX_REPLACE="OLD=>NEW": a test-only edit of the PTX (every
  // occurrence), to build broken variants of a kernel for mutation tests. An
  // edit that matches nothing is refused, so such a test cannot pass by
  // testing the unbroken kernel.
  if (const char *edit = std::getenv("KILN_EMU_PTX_REPLACE")) {
    std::string e(edit);
    size_t arrow = e.find("=>");
    if (arrow == std::string::npos || arrow == 0) {
      report("kiln-emu: KILN_EMU_PTX_REPLACE must read OLD=>NEW");
      return kInvalidPtx;
    }
    std::string from = e.substr(0, arrow), to = e.substr(arrow + 2);
    size_t count = 0;
    for (size_t at = 0; (at = ptx.find(from, at)) != std::string::npos;
         at += to.size(), ++count)
      ptx.replace(at, from.size(), to);
    if (!count) {
      report("kiln-emu: KILN_EMU_PTX_REPLACE: '" + from +
             "' does not occur in the PTX");
      return kInvalidPtx;
    }
  }
  std::string error;
  auto loaded = Device::get().load(ptx, error);
  if (!loaded) {
    report("kiln-emu: cuModuleLoadData: " + error);
    return kInvalidPtx;
  }
  auto *m = new ModuleHandle();
  m->loaded = std::move(loaded);
  for (const auto &f : m->loaded->ptx->functions) {
    KernelHandle h;
    h.name = f.name;
    h.fn = &f;
    h.module = m->loaded.get();
    m->functions[f.name] = h;
  }
  *module = m;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuModuleLoadDataEx(void **module, const void *image, unsigned, void *,
                   void **) {
  return cuModuleLoadData(module, image);
}
__attribute__((visibility("default"))) CUresult cuModuleUnload(void *module) {
  delete static_cast<ModuleHandle *>(module);
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuModuleGetFunction(void **f, void *module, const char *name) {
  REQUIRE_INIT();
  auto *m = static_cast<ModuleHandle *>(module);
  if (!m || !name)
    return kInvalidHandle;
  auto it = m->functions.find(name);
  if (it == m->functions.end())
    return kNotFound;
  *f = &it->second;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuFuncSetAttribute(void *fp, int attribute, int value) {
  REQUIRE_INIT();
  auto *f = static_cast<KernelHandle *>(fp);
  if (attribute == 8) { // MAX_DYNAMIC_SHARED_SIZE_BYTES
    int limit = Device::get().properties.sharedPerBlockOptin -
                static_cast<int>(f->fn->staticShared);
    if (value < 0 || value > limit)
      return kInvalidValue;
    f->maxDynamicShared = value;
  }
  return kSuccess;
}

__attribute__((visibility("default"))) CUresult
cuLaunchKernel(void *fp, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
               unsigned by, unsigned bz, unsigned shared, void *, void **params,
               void **extra) {
  REQUIRE_INIT();
  auto *f = static_cast<KernelHandle *>(fp);
  if (!f)
    return kInvalidHandle;
  const kiln::emu::Function &fn = *f->fn;
  auto refuse = [&](CUresult r, const std::string &why) {
    report("kiln-emu: cuLaunchKernel(" + f->name + "): " + why);
    return r;
  };
  if (extra)
    return refuse(kInvalidValue, "the `extra` parameter form is not modeled");
  if (!gx || !gy || !gz || !bx || !by || !bz)
    return refuse(kInvalidValue, "a zero grid or block dimension");
  if (uint64_t(bx) * by * bz > 1024 || bz > 64)
    return refuse(kInvalidValue, "more than 1024 threads per block");
  if (gy > 65535 || gz > 65535)
    return refuse(kInvalidValue, "grid y/z above 65535");
  if (fn.reqntid[0] &&
      (int(bx) != fn.reqntid[0] || int(by) != std::max(fn.reqntid[1], 1) ||
       int(bz) != std::max(fn.reqntid[2], 1)))
    return refuse(kInvalidValue,
                  "block " + std::to_string(bx) + "x" + std::to_string(by) +
                      "x" + std::to_string(bz) + " differs from .reqntid " +
                      std::to_string(fn.reqntid[0]));
  if (fn.maxntid[0] && uint64_t(bx) * by * bz > uint64_t(fn.maxntid[0]) *
                                                    std::max(fn.maxntid[1], 1) *
                                                    std::max(fn.maxntid[2], 1))
    return refuse(kInvalidValue, "block larger than .maxntid");
  if (static_cast<int>(shared) > f->maxDynamicShared)
    return refuse(kInvalidValue,
                  std::to_string(shared) +
                      " bytes of dynamic shared memory, above the " +
                      std::to_string(f->maxDynamicShared) +
                      " allowed (cuFuncSetAttribute raises the limit)");
  if (fn.staticShared + shared >
      uint64_t(Device::get().properties.sharedPerBlockOptin))
    return refuse(kLaunchOutOfResources, "static + dynamic shared memory "
                                         "above 227 KB");
  if (!fn.params.empty() && !params)
    return refuse(kInvalidValue, "no kernel parameters given");
  Launch l;
  l.f = f;
  l.grid[0] = gx, l.grid[1] = gy, l.grid[2] = gz;
  l.block[0] = bx, l.block[1] = by, l.block[2] = bz;
  l.shared = shared;
  for (size_t i = 0; i < fn.params.size(); ++i) {
    if (!params[i])
      return refuse(kInvalidValue, "parameter " + std::to_string(i) +
                                       " is null (the PTX declares " +
                                       std::to_string(fn.params.size()) + ")");
    const uint8_t *p = static_cast<const uint8_t *>(params[i]);
    l.params.emplace_back(p, p + fn.params[i].size);
  }
  if (capturing) {
    capturing->nodes.push_back({true, l, {}});
    return kSuccess;
  }
  return runLaunch(l);
}

__attribute__((visibility("default"))) CUresult
cuMemAlloc_v2(unsigned long long *p, size_t n) {
  REQUIRE_INIT();
  if (capturing) {
    captureBroken = true;
    return kCaptureUnsupported;
  }
  if (!p || !n)
    return kInvalidValue;
  uint64_t a;
  std::string error;
  if (!Device::get().allocate(a, n, error))
    return kOutOfMemory;
  *p = a;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuMemFree_v2(unsigned long long p) {
  if (capturing) {
    captureBroken = true;
    return kCaptureUnsupported;
  }
  if (!p)
    return kSuccess;
  return Device::get().release(p) ? kSuccess : kInvalidValue;
}
__attribute__((visibility("default"))) CUresult cuMemGetInfo_v2(size_t *free,
                                                                size_t *total) {
  Device &d = Device::get();
  *total = d.options.memoryBytes;
  *free = d.options.memoryBytes - d.bytesInUse();
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuMemcpyHtoD_v2(unsigned long long dst, const void *src, size_t n) {
  REQUIRE_INIT();
  if (capturing) {
    captureBroken = true;
    return kCaptureUnsupported;
  }
  return copyChecked(dst, true, reinterpret_cast<uint64_t>(src), false, n);
}
__attribute__((visibility("default"))) CUresult
cuMemcpyDtoH_v2(void *dst, unsigned long long src, size_t n) {
  REQUIRE_INIT();
  if (capturing) {
    captureBroken = true;
    return kCaptureUnsupported;
  }
  return copyChecked(reinterpret_cast<uint64_t>(dst), false, src, true, n);
}
__attribute__((visibility("default"))) CUresult
cuMemcpyHtoDAsync_v2(unsigned long long dst, const void *src, size_t n,
                     void *) {
  REQUIRE_INIT();
  if (!Device::get().contains(dst, n))
    return kInvalidValue;
  if (capturing) { // captured as a copy node, read at replay
    capturing->nodes.push_back(
        {false, {}, {dst, reinterpret_cast<uint64_t>(src), n}, {}});
    return kSuccess;
  }
  return copyChecked(dst, true, reinterpret_cast<uint64_t>(src), false, n);
}
__attribute__((visibility("default"))) CUresult
cuMemcpyDtoHAsync_v2(void *dst, unsigned long long src, size_t n, void *) {
  REQUIRE_INIT();
  if (!Device::get().contains(src, n))
    return kInvalidValue;
  if (capturing) {
    capturing->nodes.push_back(
        {false, {}, {reinterpret_cast<uint64_t>(dst), src, n}});
    return kSuccess;
  }
  return copyChecked(reinterpret_cast<uint64_t>(dst), false, src, true, n);
}
__attribute__((visibility("default"))) CUresult
cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t n,
                     void *) {
  REQUIRE_INIT();
  if (!Device::get().contains(dst, n) || !Device::get().contains(src, n))
    return kInvalidValue;
  if (capturing) {
    capturing->nodes.push_back({false, {}, {dst, src, n}});
    return kSuccess;
  }
  return copyChecked(dst, true, src, true, n);
}
/// Unified addressing: either side may be host or device memory.
__attribute__((visibility("default"))) CUresult
cuMemcpyAsync(unsigned long long dst, unsigned long long src, size_t n,
              void *) {
  REQUIRE_INIT();
  Device &d = Device::get();
  if (capturing) {
    capturing->nodes.push_back({false, {}, {dst, src, n}});
    return kSuccess;
  }
  return copyChecked(dst, d.contains(dst, 1), src, d.contains(src, 1), n);
}
__attribute__((visibility("default"))) CUresult
cuMemcpy(unsigned long long dst, unsigned long long src, size_t n) {
  return cuMemcpyAsync(dst, src, n, nullptr);
}
__attribute__((visibility("default"))) CUresult
cuMemsetD8_v2(unsigned long long dst, unsigned char v, size_t n) {
  REQUIRE_INIT();
  if (capturing) {
    captureBroken = true;
    return kCaptureUnsupported;
  }
  if (!Device::get().contains(dst, n))
    return kInvalidValue;
  std::memset(reinterpret_cast<void *>(dst), v, n);
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuMemsetD8Async(unsigned long long dst, unsigned char v, size_t n, void *) {
  REQUIRE_INIT();
  if (!Device::get().contains(dst, n))
    return kInvalidValue;
  std::memset(reinterpret_cast<void *>(dst), v, n);
  return kSuccess;
}

__attribute__((visibility("default"))) CUresult
cuTensorMapEncodeTiled(void *map, int dtype, unsigned rank, void *address,
                       const uint64_t *dims, const uint64_t *strides,
                       const unsigned *box, const unsigned *elementStrides,
                       int interleave, int swizzle, int l2, int oob) {
  if (!map || !dims || !box || !elementStrides || (rank > 1 && !strides))
    return kInvalidValue;
  auto refuse = [&](const std::string &why) {
    report("kiln-emu: cuTensorMapEncodeTiled: " + why);
    return kInvalidValue;
  };
  if (reinterpret_cast<uintptr_t>(map) % 64)
    return refuse("the CUtensorMap is not 64-byte aligned");
  TensorMap m;
  std::string why = encodeTensorMap(
      m, dtype, rank, reinterpret_cast<uint64_t>(address), dims, strides, box,
      elementStrides, interleave, swizzle, l2, oob);
  if (!why.empty())
    return refuse(why);
  // The whole tensor must lie inside one allocation.
  uint64_t last = m.address;
  for (unsigned i = 0; i < rank; ++i)
    last += (dims[i] - 1) * m.strides[i];
  if (!Device::get().contains(m.address, last - m.address + m.elementBytes))
    return refuse("the tensor (address, dims, strides) is not inside one "
                  "device allocation");
  std::memset(map, 0, 128);
  std::memcpy(map, &m, sizeof m);
  return kSuccess;
}

__attribute__((visibility("default"))) CUresult cuStreamCreate(void **s,
                                                               unsigned) {
  REQUIRE_INIT();
  static int stream;
  *s = &stream;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuStreamSynchronize(void *) {
  if (!initialized)
    return kNotInitialized;
  if (capturing) {
    captureBroken = true;
    return kCaptureUnsupported;
  }
  return sticky;
}
__attribute__((visibility("default"))) CUresult cuStreamQuery(void *) {
  if (!initialized)
    return kNotInitialized;
  if (capturing) {
    captureBroken = true;
    return kCaptureUnsupported;
  }
  return sticky; // work completes when it is enqueued
}
__attribute__((visibility("default"))) CUresult
cuLaunchHostFunc(void *, void (*fn)(void *), void *data) {
  REQUIRE_INIT();
  if (!fn)
    return kInvalidValue;
  if (capturing) {
    capturing->nodes.push_back({false, {}, {0, 0, 0}, {fn, data}});
    return kSuccess;
  }
  if (sticky)
    return sticky;
  fn(data);
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuStreamDestroy_v2(void *) {
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuStreamBeginCapture_v2(void *,
                                                                        int) {
  REQUIRE_INIT();
  if (capturing)
    return kInvalidValue;
  capturing = new Graph();
  captureBroken = false;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuStreamEndCapture(void *,
                                                                   void **g) {
  if (!capturing)
    return kInvalidValue;
  Graph *graph = capturing;
  capturing = nullptr;
  if (captureBroken) {
    delete graph;
    *g = nullptr;
    return kCaptureInvalidated;
  }
  *g = graph;
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuGraphInstantiateWithFlags(void **exec, void *graph, unsigned long long) {
  REQUIRE_INIT();
  if (!graph)
    return kInvalidValue;
  *exec = new Graph(*static_cast<Graph *>(graph));
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuGraphLaunch(void *exec,
                                                              void *) {
  REQUIRE_INIT();
  if (capturing || !exec)
    return kInvalidValue;
  for (const Node &n : static_cast<Graph *>(exec)->nodes) {
    if (n.host.fn) {
      n.host.fn(n.host.data);
      continue;
    }
    CUresult r =
        n.isLaunch
            ? runLaunch(n.launch)
            : copyChecked(n.copy.dst, Device::get().contains(n.copy.dst, 1),
                          n.copy.src, Device::get().contains(n.copy.src, 1),
                          n.copy.n);
    if (r)
      return r;
  }
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuGraphExecDestroy(void *e) {
  delete static_cast<Graph *>(e);
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuGraphDestroy(void *g) {
  delete static_cast<Graph *>(g);
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuEventCreate(void **e,
                                                              unsigned) {
  *e = new Event();
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuEventRecord(void *e, void *) {
  // Launches are synchronous, so host time is the emulation time.
  static_cast<Event *>(e)->seconds = now();
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuEventSynchronize(void *) {
  return sticky;
}
__attribute__((visibility("default"))) CUresult
cuEventElapsedTime(float *ms, void *a, void *b) {
  *ms = static_cast<float>(
      (static_cast<Event *>(b)->seconds - static_cast<Event *>(a)->seconds) *
      1e3);
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult cuEventDestroy_v2(void *e) {
  delete static_cast<Event *>(e);
  return kSuccess;
}

__attribute__((visibility("default"))) CUresult
cuGetErrorName(CUresult r, const char **name) {
  switch (r) {
  case kSuccess:
    *name = "CUDA_SUCCESS";
    break;
  case kInvalidValue:
    *name = "CUDA_ERROR_INVALID_VALUE";
    break;
  case kOutOfMemory:
    *name = "CUDA_ERROR_OUT_OF_MEMORY";
    break;
  case kNotInitialized:
    *name = "CUDA_ERROR_NOT_INITIALIZED";
    break;
  case kInvalidImage:
    *name = "CUDA_ERROR_INVALID_IMAGE";
    break;
  case kInvalidContext:
    *name = "CUDA_ERROR_INVALID_CONTEXT";
    break;
  case kNoBinaryForGpu:
    *name = "CUDA_ERROR_NO_BINARY_FOR_GPU";
    break;
  case kInvalidPtx:
    *name = "CUDA_ERROR_INVALID_PTX";
    break;
  case kInvalidHandle:
    *name = "CUDA_ERROR_INVALID_HANDLE";
    break;
  case kNotFound:
    *name = "CUDA_ERROR_NOT_FOUND";
    break;
  case kLaunchOutOfResources:
    *name = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
    break;
  case kLaunchFailed:
    *name = "CUDA_ERROR_LAUNCH_FAILED";
    break;
  case kCaptureUnsupported:
    *name = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
    break;
  case kCaptureInvalidated:
    *name = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
    break;
  default:
    *name = "CUDA_ERROR_UNKNOWN";
    return kInvalidValue;
  }
  return kSuccess;
}
__attribute__((visibility("default"))) CUresult
cuGetErrorString(CUresult r, const char **text) {
  if (r == kLaunchFailed && !lastError.empty()) {
    *text = lastError.c_str();
    return kSuccess;
  }
  *text = r == kSuccess ? "no error" : "reported by the Kiln emulator";
  return kSuccess;
}

} // extern "C"
