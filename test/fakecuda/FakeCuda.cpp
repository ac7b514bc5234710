//===- FakeCuda.cpp - A CUDA driver without a GPU, for tests --------------===//
//
// Exports the driver entry points the runtime resolves, so `KILN_LIBCUDA=
// libkiln-fake-cuda.so kiln-run model.kiln ...` drives the whole CUDA
// backend on a machine without a GPU: device memory is host memory, copies
// are memcpy, and kernels do not run. What it checks is what the real
// driver would refuse or what would crash on a GPU:
// - cuModuleLoadData reads the PTX's entries, their parameter counts and
//   .reqntid; cuModuleGetFunction fails for unknown names;
// - cuLaunchKernel requires the block size to equal .reqntid, the dynamic
//   shared memory to be within what cuFuncSetAttribute allowed (48 KB
//   without it), a non-zero grid, and exactly the PTX's parameter count
//   (the runtime ends its parameter array with a null for this check);
// - cuTensorMapEncodeTiled applies the driver's rules (16-byte aligned
//   address and strides, box extents 1..256, a 128-byte-swizzle inner box
//   of at most 128 bytes, the 64-byte-aligned map);
// - copies must stay inside one allocation.
// - while a stream is being captured into a graph, copies, allocations and
//   synchronizations are refused (the rule that keeps real captures valid),
//   and launches are recorded; cuGraphLaunch replays the record.
// With KILN_FAKE_CUDA_LOG=FILE each launch, tensor map, capture and graph
// launch is logged (one line each); KILN_FAKE_CUDA_FAIL=FUNCTION makes launches
// of that function fail, to test the runtime's error reporting.
//
//===----------------------------------------------------------------------===//

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

using CUresult = int;
constexpr CUresult kSuccess = 0, kInvalidValue = 1, kNotFound = 500,
                   kInvalidImage = 200, kLaunchFailed = 719;

struct Function {
  std::string name;
  int params = 0;
  int reqntid = 0;
  int maxDynamicShared = 48 * 1024;
};

struct Module {
  std::map<std::string, Function> functions;
};

bool capturing = false;
struct Graph {
  std::vector<std::string> launches;
};
Graph *captured = nullptr;

std::map<uintptr_t, size_t> &allocations() {
  static std::map<uintptr_t, size_t> a;
  return a;
}

void logLine(const char *format, ...) {
  const char *path = std::getenv("KILN_FAKE_CUDA_LOG");
  if (!path || !*path)
    return;
  FILE *f = std::fopen(path, "a");
  if (!f)
    return;
  va_list args;
  va_start(args, format);
  std::vfprintf(f, format, args);
  va_end(args);
  std::fputc('\n', f);
  std::fclose(f);
}

/// Whether [p, p + n) lies inside one allocation.
bool inside(uintptr_t p, size_t n) {
  auto &a = allocations();
  auto it = a.upper_bound(p);
  if (it == a.begin())
    return false;
  --it;
  return p >= it->first && p + n <= it->first + it->second;
}

/// Entries of a PTX module: name, parameter count, .reqntid.
bool parsePtx(const char *text, Module &m) {
  std::string ptx(text);
  size_t at = 0;
  while ((at = ptx.find(".entry ", at)) != std::string::npos) {
    size_t nameBegin = at + 7;
    size_t nameEnd = ptx.find('(', nameBegin);
    if (nameEnd == std::string::npos)
      return false;
    Function f;
    f.name = ptx.substr(nameBegin, nameEnd - nameBegin);
    size_t close = ptx.find(')', nameEnd);
    std::string params = ptx.substr(nameEnd, close - nameEnd);
    for (size_t p = 0; (p = params.find(".param", p)) != std::string::npos; ++p)
      ++f.params;
    size_t body = ptx.find('{', close);
    std::string header = ptx.substr(close, body - close);
    size_t r = header.find(".reqntid");
    if (r != std::string::npos)
      f.reqntid = std::atoi(header.c_str() + r + 8);
    m.functions[f.name] = f;
    at = close;
  }
  return !m.functions.empty();
}

} // namespace

extern "C" {

CUresult cuInit(unsigned) { return kSuccess; }
CUresult cuDriverGetVersion(int *v) {
  *v = 13000;
  return kSuccess;
}
CUresult cuDeviceGetCount(int *n) {
  *n = 1;
  return kSuccess;
}
CUresult cuDeviceGet(int *d, int ordinal) {
  *d = ordinal;
  return ordinal == 0 ? kSuccess : kInvalidValue;
}
CUresult cuDeviceGetName(char *name, int len, int) {
  std::snprintf(name, len, "Fake H200 (no GPU)");
  return kSuccess;
}
CUresult cuDeviceGetAttribute(int *v, int attribute, int) {
  switch (attribute) {
  case 16:
    *v = 132;
    break; // SMs
  case 75:
    *v = 9;
    break; // compute capability major
  case 76:
    *v = 0;
    break; // minor
  case 97:
    *v = 232448;
    break; // opt-in shared memory per block
  default:
    *v = 0;
  }
  return kSuccess;
}
CUresult cuDevicePrimaryCtxRetain(void **ctx, int) {
  static int context;
  *ctx = &context;
  return kSuccess;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return kSuccess; }
CUresult cuCtxSetCurrent(void *) { return kSuccess; }

CUresult cuModuleLoadData(void **module, const void *image) {
  auto *m = new Module();
  const char *text = static_cast<const char *>(image);
  if (std::strncmp(text,
                   "\x7f"
                   "ELF",
                   4) == 0 ||
      !parsePtx(text, *m)) {
    delete m;
    return kInvalidImage; // the fake reads PTX only
  }
  *module = m;
  return kSuccess;
}
CUresult cuModuleUnload(void *module) {
  delete static_cast<Module *>(module);
  return kSuccess;
}
CUresult cuModuleGetFunction(void **f, void *module, const char *name) {
  auto *m = static_cast<Module *>(module);
  auto it = m->functions.find(name);
  if (it == m->functions.end())
    return kNotFound;
  *f = &it->second;
  return kSuccess;
}
CUresult cuFuncSetAttribute(void *f, int attribute, int value) {
  if (attribute == 8) {
    if (value > 232448)
      return kInvalidValue;
    static_cast<Function *>(f)->maxDynamicShared = value;
  }
  return kSuccess;
}
CUresult cuLaunchKernel(void *fn, unsigned gx, unsigned gy, unsigned gz,
                        unsigned bx, unsigned by, unsigned bz, unsigned shared,
                        void *, void **params, void **extra) {
  auto *f = static_cast<Function *>(fn);
  const char *fail = std::getenv("KILN_FAKE_CUDA_FAIL");
  if (fail && f->name == fail)
    return kLaunchFailed;
  if (extra || !params || gx == 0 || gy == 0 || gz == 0 || by != 1 || bz != 1 ||
      (f->reqntid && static_cast<int>(bx) != f->reqntid) ||
      static_cast<int>(shared) > f->maxDynamicShared) {
    logLine("REFUSED %s grid=%u,%u,%u block=%u shared=%u", f->name.c_str(), gx,
            gy, gz, bx, shared);
    return kInvalidValue;
  }
  // The runtime ends its parameter array with a null: the count must match
  // the PTX exactly (a real driver would read garbage or miss parameters).
  for (int i = 0; i < f->params; ++i)
    if (!params[i]) {
      logLine("REFUSED %s: %d parameters given, the PTX declares %d",
              f->name.c_str(), i, f->params);
      return kInvalidValue;
    }
  if (params[f->params]) {
    logLine("REFUSED %s: more parameters than the PTX's %d", f->name.c_str(),
            f->params);
    return kInvalidValue;
  }
  if (capturing) {
    captured->launches.push_back(f->name);
    return kSuccess;
  }
  logLine("launch %s grid=%u,%u,%u block=%u shared=%u params=%d",
          f->name.c_str(), gx, gy, gz, bx, shared, f->params);
  return kSuccess;
}

CUresult cuMemAlloc_v2(unsigned long long *p, size_t n) {
  if (capturing) {
    logLine("REFUSED a copy or allocation during stream capture");
    return 900; // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
  }
  // KILN_FAKE_CUDA_MEMORY: the device's size in bytes (default: unlimited).
  if (const char *limit = std::getenv("KILN_FAKE_CUDA_MEMORY")) {
    size_t used = 0;
    for (const auto &[ptr, bytes] : allocations())
      used += bytes;
    if (used + n > std::strtoull(limit, nullptr, 10))
      return 2; // CUDA_ERROR_OUT_OF_MEMORY
  }
  void *m = std::calloc(1, n);
  if (!m)
    return 2; // out of memory
  *p = reinterpret_cast<uintptr_t>(m);
  allocations()[*p] = n;
  return kSuccess;
}
CUresult cuMemFree_v2(unsigned long long p) {
  if (capturing) {
    logLine("REFUSED a copy or allocation during stream capture");
    return 900; // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
  }
  if (!allocations().erase(p))
    return kInvalidValue;
  std::free(reinterpret_cast<void *>(p));
  return kSuccess;
}
CUresult cuMemsetD8_v2(unsigned long long dst, unsigned char v, size_t n) {
  if (capturing) {
    logLine("REFUSED a memset during stream capture");
    return 900; // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
  }
  if (!inside(dst, n))
    return kInvalidValue;
  std::memset(reinterpret_cast<void *>(dst), v, n);
  return kSuccess;
}
CUresult cuMemcpyHtoD_v2(unsigned long long dst, const void *src, size_t n) {
  if (capturing) {
    logLine("REFUSED a copy or allocation during stream capture");
    return 900; // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
  }
  if (!inside(dst, n))
    return kInvalidValue;
  std::memcpy(reinterpret_cast<void *>(dst), src, n);
  return kSuccess;
}
CUresult cuMemcpyDtoH_v2(void *dst, unsigned long long src, size_t n) {
  if (capturing) {
    logLine("REFUSED a copy or allocation during stream capture");
    return 900; // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
  }
  if (!inside(src, n))
    return kInvalidValue;
  // KILN_FAKE_CUDA_LOG_COPIES: what comes back to the host, and how much.
  if (std::getenv("KILN_FAKE_CUDA_LOG_COPIES"))
    logLine("copy to host %zu bytes", n);
  std::memcpy(dst, reinterpret_cast<void *>(src), n);
  return kSuccess;
}
CUresult cuMemcpyHtoDAsync_v2(unsigned long long dst, const void *src, size_t n,
                              void *) {
  return cuMemcpyHtoD_v2(dst, src, n);
}
CUresult cuMemcpyDtoHAsync_v2(void *dst, unsigned long long src, size_t n,
                              void *) {
  return cuMemcpyDtoH_v2(dst, src, n);
}
CUresult cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src,
                              size_t n, void *) {
  if (capturing) {
    logLine("REFUSED a copy or allocation during stream capture");
    return 900; // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
  }
  if (!inside(dst, n) || !inside(src, n))
    return kInvalidValue;
  std::memmove(reinterpret_cast<void *>(dst), reinterpret_cast<void *>(src), n);
  return kSuccess;
}

CUresult cuTensorMapEncodeTiled(void *map, int dtype, unsigned rank,
                                void *address, const uint64_t *dims,
                                const uint64_t *strides, const unsigned *box,
                                const unsigned *elementStrides, int interleave,
                                int swizzle, int, int) {
  auto bad = [&](const char *why) {
    logLine("REFUSED tensor map: %s", why);
    return kInvalidValue;
  };
  uintptr_t a = reinterpret_cast<uintptr_t>(address);
  if (reinterpret_cast<uintptr_t>(map) % 64)
    return bad("map not 64-byte aligned");
  if (rank < 1 || rank > 5)
    return bad("rank");
  if (a % 16)
    return bad("address not 16-byte aligned");
  size_t element = dtype == 9 || dtype == 6 ? 2 : 4;
  uint64_t extent = element;
  for (unsigned i = 0; i < rank; ++i) {
    if (dims[i] == 0 || box[i] == 0 || box[i] > 256 || elementStrides[i] != 1)
      return bad("dims or box");
    if (i > 0) {
      if (strides[i - 1] % 16)
        return bad("stride not a multiple of 16");
      extent = strides[i - 1] * dims[i];
    } else {
      extent = dims[0] * element;
    }
  }
  if (interleave == 0 && swizzle == 3 && box[0] * element > 128)
    return bad("128-byte swizzle with an inner box over 128 bytes");
  if (!inside(a, extent))
    return bad("tensor outside its allocation");
  std::memset(map, 0, 128);
  if (rank == 3)
    logLine("tensor_map dims=%llu,%llu,%llu box=%u,%u,%u",
            (unsigned long long)dims[0], (unsigned long long)dims[1],
            (unsigned long long)dims[2], box[0], box[1], box[2]);
  else
    logLine("tensor_map dims=%llu,%llu box=%u,%u", (unsigned long long)dims[0],
            (unsigned long long)(rank > 1 ? dims[1] : 1), box[0],
            rank > 1 ? box[1] : 1);
  return kSuccess;
}

CUresult cuStreamCreate(void **s, unsigned) {
  static int stream;
  *s = &stream;
  return kSuccess;
}
CUresult cuStreamSynchronize(void *) {
  if (capturing) {
    logLine("REFUSED a synchronization during stream capture");
    return 900;
  }
  return kSuccess;
}
CUresult cuStreamQuery(void *) {
  if (capturing) {
    logLine("REFUSED a stream query during stream capture");
    return 900;
  }
  return kSuccess;
}
CUresult cuStreamBeginCapture_v2(void *, int) {
  if (capturing)
    return kInvalidValue;
  capturing = true;
  captured = new Graph();
  return kSuccess;
}
CUresult cuStreamEndCapture(void *, void **graph) {
  if (!capturing)
    return kInvalidValue;
  capturing = false;
  logLine("captured %zu launches", captured->launches.size());
  *graph = captured;
  captured = nullptr;
  return kSuccess;
}
CUresult cuGraphInstantiateWithFlags(void **exec, void *graph,
                                     unsigned long long) {
  *exec = new Graph(*static_cast<Graph *>(graph));
  return kSuccess;
}
CUresult cuGraphLaunch(void *exec, void *) {
  if (capturing)
    return kInvalidValue;
  logLine("graph launch of %zu kernels",
          static_cast<Graph *>(exec)->launches.size());
  return kSuccess;
}
CUresult cuGraphExecDestroy(void *exec) {
  delete static_cast<Graph *>(exec);
  return kSuccess;
}
CUresult cuGraphDestroy(void *graph) {
  delete static_cast<Graph *>(graph);
  return kSuccess;
}
CUresult cuStreamDestroy_v2(void *) { return kSuccess; }
CUresult cuEventCreate(void **e, unsigned) {
  *e = new int(0);
  return kSuccess;
}
CUresult cuEventRecord(void *, void *) { return kSuccess; }
CUresult cuEventElapsedTime(float *ms, void *, void *) {
  *ms = 0.001f;
  return kSuccess;
}
CUresult cuEventDestroy_v2(void *e) {
  delete static_cast<int *>(e);
  return kSuccess;
}
CUresult cuGetErrorName(CUresult r, const char **name) {
  switch (r) {
  case kInvalidValue:
    *name = "CUDA_ERROR_INVALID_VALUE";
    break;
  case kNotFound:
    *name = "CUDA_ERROR_NOT_FOUND";
    break;
  case kInvalidImage:
    *name = "CUDA_ERROR_INVALID_IMAGE";
    break;
  case kLaunchFailed:
    *name = "CUDA_ERROR_LAUNCH_FAILED";
    break;
  case 2:
    *name = "CUDA_ERROR_OUT_OF_MEMORY";
    break;
  default:
    *name = "CUDA_ERROR_UNKNOWN";
  }
  return kSuccess;
}
CUresult cuGetErrorString(CUresult, const char **text) {
  *text = "reported by the fake driver";
  return kSuccess;
}

} // extern "C"
