//===- MgpuRuntime.cpp - MLIR's mgpu* host functions over any driver ------===//
//
// The host functions that MLIR 22's lowering of gpu.launch_func, gpu.alloc,
// gpu.memcpy and nvgpu.tma.create.descriptor calls (ABI listed in
// shared/third_party/mlir-sm90-tests/README.md), implemented over the CUDA
// driver that KILN_LIBCUDA names (libcuda.so.1 by default): the Kiln
// emulator or a real GPU. A failing driver call prints one line and makes
// the runner exit non-zero; it never aborts mid-JIT.
//
//===----------------------------------------------------------------------===//

#include "MgpuRuntime.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>

namespace {

using CUresult = int;
using CUdeviceptr = unsigned long long;

struct Driver {
  void *library = nullptr;
  CUresult (*cuInit)(unsigned);
  CUresult (*cuDeviceGet)(int *, int);
  CUresult (*cuDevicePrimaryCtxRetain)(void **, int);
  CUresult (*cuCtxSetCurrent)(void *);
  CUresult (*cuModuleLoadData)(void **, const void *);
  CUresult (*cuModuleUnload)(void *);
  CUresult (*cuModuleGetFunction)(void **, void *, const char *);
  CUresult (*cuFuncSetAttribute)(void *, int, int);
  CUresult (*cuLaunchKernel)(void *, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, unsigned, void *, void **,
                             void **);
  CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
  CUresult (*cuMemFree)(CUdeviceptr);
  CUresult (*cuMemcpyAsync)(CUdeviceptr, CUdeviceptr, size_t, void *);
  CUresult (*cuMemsetD8Async)(CUdeviceptr, unsigned char, size_t, void *);
  CUresult (*cuStreamCreate)(void **, unsigned);
  CUresult (*cuStreamSynchronize)(void *);
  CUresult (*cuStreamDestroy)(void *);
  CUresult (*cuTensorMapEncodeTiled)(void *, int, unsigned, void *,
                                     const uint64_t *, const uint64_t *,
                                     const unsigned *, const unsigned *, int,
                                     int, int, int);
  CUresult (*cuGetErrorName)(CUresult, const char **);
};

Driver *driver = nullptr;
int failures = 0;

void report(const char *call, CUresult r) {
  const char *name = "?";
  if (driver && driver->cuGetErrorName)
    driver->cuGetErrorName(r, &name);
  std::fprintf(stderr, "kiln-mlir-runner: %s failed: %s (%d)\n", call, name, r);
  std::fflush(stderr);
  ++failures;
}

#define CHECK(call)                                                            \
  do {                                                                         \
    CUresult r_ = (call);                                                      \
    if (r_)                                                                    \
      report(#call, r_);                                                       \
  } while (0)

template <typename T> void resolve(void *lib, T &fn, const char *name) {
  fn = reinterpret_cast<T>(dlsym(lib, name));
}

Driver &get() {
  if (driver)
    return *driver;
  driver = new Driver();
  const char *path = std::getenv("KILN_LIBCUDA");
  if (!path || !*path)
    path = "libcuda.so.1";
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::fprintf(stderr,
                 "kiln-mlir-runner: cannot load the CUDA driver %s: %s\n", path,
                 dlerror());
    std::exit(2);
  }
  Driver &d = *driver;
  d.library = lib;
  resolve(lib, d.cuInit, "cuInit");
  resolve(lib, d.cuDeviceGet, "cuDeviceGet");
  resolve(lib, d.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
  resolve(lib, d.cuCtxSetCurrent, "cuCtxSetCurrent");
  resolve(lib, d.cuModuleLoadData, "cuModuleLoadData");
  resolve(lib, d.cuModuleUnload, "cuModuleUnload");
  resolve(lib, d.cuModuleGetFunction, "cuModuleGetFunction");
  resolve(lib, d.cuFuncSetAttribute, "cuFuncSetAttribute");
  resolve(lib, d.cuLaunchKernel, "cuLaunchKernel");
  resolve(lib, d.cuMemAlloc, "cuMemAlloc_v2");
  resolve(lib, d.cuMemFree, "cuMemFree_v2");
  resolve(lib, d.cuMemcpyAsync, "cuMemcpyAsync");
  resolve(lib, d.cuMemsetD8Async, "cuMemsetD8Async");
  resolve(lib, d.cuStreamCreate, "cuStreamCreate");
  resolve(lib, d.cuStreamSynchronize, "cuStreamSynchronize");
  resolve(lib, d.cuStreamDestroy, "cuStreamDestroy_v2");
  resolve(lib, d.cuTensorMapEncodeTiled, "cuTensorMapEncodeTiled");
  resolve(lib, d.cuGetErrorName, "cuGetErrorName");
  void **all[] = {reinterpret_cast<void **>(&d.cuInit),
                  reinterpret_cast<void **>(&d.cuModuleLoadData),
                  reinterpret_cast<void **>(&d.cuLaunchKernel),
                  reinterpret_cast<void **>(&d.cuMemAlloc),
                  reinterpret_cast<void **>(&d.cuMemcpyAsync),
                  reinterpret_cast<void **>(&d.cuTensorMapEncodeTiled)};
  for (void **p : all)
    if (!*p) {
      std::fprintf(stderr, "kiln-mlir-runner: %s lacks a driver entry point\n",
                   path);
      std::exit(2);
    }
  CHECK(d.cuInit(0));
  int dev = 0;
  void *ctx = nullptr;
  CHECK(d.cuDeviceGet(&dev, 0));
  CHECK(d.cuDevicePrimaryCtxRetain(&ctx, dev));
  CHECK(d.cuCtxSetCurrent(ctx));
  return d;
}

/// StridedMemRefType<char, Rank>: allocated and aligned pointers, offset,
/// then sizes and strides.
struct MemrefHeader {
  char *allocated;
  char *aligned;
  int64_t offset;
  int64_t sizesAndStrides[];
};

} // namespace

int kilnMgpuFailures() { return failures; }

extern "C" {

void *mgpuModuleLoad(void *data, size_t) {
  void *module = nullptr;
  CHECK(get().cuModuleLoadData(&module, data));
  return module;
}
void *mgpuModuleLoadJIT(void *data, int) {
  // PTX text: the driver JIT-compiles it (the emulator interprets it).
  void *module = nullptr;
  CHECK(get().cuModuleLoadData(&module, data));
  return module;
}
void mgpuModuleUnload(void *module) {
  if (module)
    CHECK(get().cuModuleUnload(module));
}
void *mgpuModuleGetFunction(void *module, const char *name) {
  void *f = nullptr;
  if (!module) {
    ++failures;
    return nullptr;
  }
  CHECK(get().cuModuleGetFunction(&f, module, name));
  return f;
}
void mgpuLaunchKernel(void *f, intptr_t gx, intptr_t gy, intptr_t gz,
                      intptr_t bx, intptr_t by, intptr_t bz, int32_t smem,
                      void *stream, void **params, void **extra, size_t) {
  if (!f) {
    ++failures;
    return;
  }
  Driver &d = get();
  if (smem > 48 * 1024)
    CHECK(d.cuFuncSetAttribute(f, 8 /*MAX_DYNAMIC_SHARED_SIZE_BYTES*/, smem));
  CHECK(
      d.cuLaunchKernel(f, gx, gy, gz, bx, by, bz, smem, stream, params, extra));
}
void *mgpuStreamCreate() {
  void *s = nullptr;
  CHECK(get().cuStreamCreate(&s, 1));
  return s;
}
void mgpuStreamDestroy(void *s) { CHECK(get().cuStreamDestroy(s)); }
void mgpuStreamSynchronize(void *s) { CHECK(get().cuStreamSynchronize(s)); }
void *mgpuMemAlloc(uint64_t bytes, void *, bool) {
  CUdeviceptr p = 0;
  if (bytes)
    CHECK(get().cuMemAlloc(&p, bytes));
  return reinterpret_cast<void *>(p);
}
void mgpuMemFree(void *p, void *) {
  CHECK(get().cuMemFree(reinterpret_cast<CUdeviceptr>(p)));
}
void mgpuMemcpy(void *dst, void *src, size_t bytes, void *stream) {
  CHECK(get().cuMemcpyAsync(reinterpret_cast<CUdeviceptr>(dst),
                            reinterpret_cast<CUdeviceptr>(src), bytes, stream));
}
void mgpuMemset8(void *dst, uint8_t value, size_t count, void *stream) {
  CHECK(get().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(dst), value, count,
                              stream));
}
void mgpuSetDefaultDevice(int32_t) {}

void *mgpuTensorMapEncodeTiledMemref(int64_t rank, void *descriptor,
                                     int64_t dataType, int64_t interleave,
                                     int64_t swizzle, int64_t l2Promotion,
                                     int64_t oobFill, int64_t *boxDims) {
  static const unsigned elementBytes[] = {1, 2, 4, 4, 8, 8, 2,
                                          4, 8, 2, 4, 4, 4};
  Driver &d = get();
  if (rank < 1 || rank > 5 || dataType < 0 || dataType > 12) {
    std::fprintf(stderr,
                 "kiln-mlir-runner: tensor map of rank %lld, type "
                 "%lld\n",
                 static_cast<long long>(rank),
                 static_cast<long long>(dataType));
    ++failures;
    return nullptr;
  }
  auto *m = static_cast<MemrefHeader *>(descriptor);
  const int64_t *sizes = m->sizesAndStrides;
  const int64_t *strides = m->sizesAndStrides + rank;
  unsigned elem = elementBytes[dataType];
  // The driver counts dimensions innermost first; memrefs outermost first.
  uint64_t dims[5] = {1, 1, 1, 1, 1}, byteStrides[5] = {0};
  unsigned box[5] = {1, 1, 1, 1, 1}, elementStrides[5] = {1, 1, 1, 1, 1};
  for (int64_t i = 0; i < rank; ++i) {
    dims[i] = static_cast<uint64_t>(sizes[rank - 1 - i]);
    box[i] = static_cast<unsigned>(boxDims[rank - 1 - i]);
  }
  for (int64_t i = 0; i + 1 < rank; ++i)
    byteStrides[i] = static_cast<uint64_t>(strides[rank - 2 - i]) * elem;
  alignas(64) unsigned char map[128];
  CHECK(d.cuTensorMapEncodeTiled(
      map, static_cast<int>(dataType), static_cast<unsigned>(rank),
      m->aligned + m->offset * elem, dims, byteStrides, box, elementStrides,
      static_cast<int>(interleave), static_cast<int>(swizzle),
      static_cast<int>(l2Promotion), static_cast<int>(oobFill)));
  CUdeviceptr device = 0;
  CHECK(d.cuMemAlloc(&device, sizeof map));
  CHECK(d.cuMemcpyAsync(device, reinterpret_cast<CUdeviceptr>(map), sizeof map,
                        nullptr));
  return reinterpret_cast<void *>(device);
}

} // extern "C"

void kilnMgpuSymbols(std::vector<std::pair<const char *, void *>> &symbols) {
  symbols = {
      {"mgpuModuleLoad", reinterpret_cast<void *>(&mgpuModuleLoad)},
      {"mgpuModuleLoadJIT", reinterpret_cast<void *>(&mgpuModuleLoadJIT)},
      {"mgpuModuleUnload", reinterpret_cast<void *>(&mgpuModuleUnload)},
      {"mgpuModuleGetFunction",
       reinterpret_cast<void *>(&mgpuModuleGetFunction)},
      {"mgpuLaunchKernel", reinterpret_cast<void *>(&mgpuLaunchKernel)},
      {"mgpuStreamCreate", reinterpret_cast<void *>(&mgpuStreamCreate)},
      {"mgpuStreamDestroy", reinterpret_cast<void *>(&mgpuStreamDestroy)},
      {"mgpuStreamSynchronize",
       reinterpret_cast<void *>(&mgpuStreamSynchronize)},
      {"mgpuMemAlloc", reinterpret_cast<void *>(&mgpuMemAlloc)},
      {"mgpuMemFree", reinterpret_cast<void *>(&mgpuMemFree)},
      {"mgpuMemcpy", reinterpret_cast<void *>(&mgpuMemcpy)},
      {"mgpuMemset8", reinterpret_cast<void *>(&mgpuMemset8)},
      {"mgpuSetDefaultDevice", reinterpret_cast<void *>(&mgpuSetDefaultDevice)},
      {"mgpuTensorMapEncodeTiledMemref",
       reinterpret_cast<void *>(&mgpuTensorMapEncodeTiledMemref)},
  };
}
