//===- CudaDriver.h - The CUDA driver, loaded at run time -------*- C++ -*-===//
//
// The runtime never links libcuda: it dlopen()s `libcuda.so.1` (or the file
// named by KILN_LIBCUDA) and resolves every entry point it uses from one
// table, so one binary runs on machines with and without GPUs and says
// plainly what is missing. The types are declared here, with the ABI of the
// driver API, so that building needs no CUDA toolkit.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_CUDADRIVER_H
#define KILN_RUNTIME_CUDADRIVER_H

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace kiln::cuda {

using CUresult = int;
using CUdevice = int;
using CUcontext = struct CUctx_st *;
using CUmodule = struct CUmod_st *;
using CUfunction = struct CUfunc_st *;
using CUstream = struct CUstream_st *;
using CUdeviceptr = unsigned long long;
using CUevent = struct CUevent_st *;
using CUgraph = void *;
using CUgraphExec = void *;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr CUresult CUDA_ERROR_STUB_LIBRARY = 34;
constexpr CUresult CUDA_ERROR_NOT_READY = 600;
constexpr int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
constexpr int CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
constexpr int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
constexpr int CU_STREAM_CAPTURE_MODE_RELAXED = 2;
// cuTensorMapEncodeTiled enums (cuda.h).
constexpr int CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9;
constexpr int CU_TENSOR_MAP_INTERLEAVE_NONE = 0;
constexpr int CU_TENSOR_MAP_SWIZZLE_128B = 3;
constexpr int CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3;
constexpr int CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0; // zeros

// One line per entry point: name, versioned symbol, signature.
#define KILN_CUDA_ENTRY_POINTS(X)                                              \
  X(cuInit, "cuInit", CUresult (*)(unsigned))                                  \
  X(cuDriverGetVersion, "cuDriverGetVersion", CUresult (*)(int *))             \
  X(cuDeviceGetCount, "cuDeviceGetCount", CUresult (*)(int *))                 \
  X(cuDeviceGet, "cuDeviceGet", CUresult (*)(CUdevice *, int))                 \
  X(cuDeviceGetName, "cuDeviceGetName", CUresult (*)(char *, int, CUdevice))   \
  X(cuDeviceGetAttribute, "cuDeviceGetAttribute",                              \
    CUresult (*)(int *, int, CUdevice))                                        \
  X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain",                      \
    CUresult (*)(CUcontext *, CUdevice))                                       \
  X(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2",                 \
    CUresult (*)(CUdevice))                                                    \
  X(cuCtxSetCurrent, "cuCtxSetCurrent", CUresult (*)(CUcontext))               \
  X(cuModuleLoadData, "cuModuleLoadData",                                      \
    CUresult (*)(CUmodule *, const void *))                                    \
  X(cuModuleUnload, "cuModuleUnload", CUresult (*)(CUmodule))                  \
  X(cuModuleGetFunction, "cuModuleGetFunction",                                \
    CUresult (*)(CUfunction *, CUmodule, const char *))                        \
  X(cuFuncSetAttribute, "cuFuncSetAttribute",                                  \
    CUresult (*)(CUfunction, int, int))                                        \
  X(cuLaunchKernel, "cuLaunchKernel",                                          \
    CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, \
                 unsigned, unsigned, CUstream, void **, void **))              \
  X(cuMemAlloc, "cuMemAlloc_v2", CUresult (*)(CUdeviceptr *, size_t))          \
  X(cuMemFree, "cuMemFree_v2", CUresult (*)(CUdeviceptr))                      \
  X(cuMemsetD8, "cuMemsetD8_v2",                                               \
    CUresult (*)(CUdeviceptr, unsigned char, size_t))                          \
  X(cuMemcpyHtoD, "cuMemcpyHtoD_v2",                                           \
    CUresult (*)(CUdeviceptr, const void *, size_t))                           \
  X(cuMemcpyDtoH, "cuMemcpyDtoH_v2",                                           \
    CUresult (*)(void *, CUdeviceptr, size_t))                                 \
  X(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2",                                 \
    CUresult (*)(CUdeviceptr, const void *, size_t, CUstream))                 \
  X(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2",                                 \
    CUresult (*)(void *, CUdeviceptr, size_t, CUstream))                       \
  X(cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2",                                 \
    CUresult (*)(CUdeviceptr, CUdeviceptr, size_t, CUstream))                  \
  X(cuTensorMapEncodeTiled, "cuTensorMapEncodeTiled",                          \
    CUresult (*)(void *, int, unsigned, void *, const uint64_t *,              \
                 const uint64_t *, const unsigned *, const unsigned *, int,    \
                 int, int, int))                                               \
  X(cuStreamCreate, "cuStreamCreate", CUresult (*)(CUstream *, unsigned))      \
  X(cuStreamSynchronize, "cuStreamSynchronize", CUresult (*)(CUstream))        \
  X(cuStreamQuery, "cuStreamQuery", CUresult (*)(CUstream))                    \
  X(cuStreamDestroy, "cuStreamDestroy_v2", CUresult (*)(CUstream))             \
  X(cuStreamBeginCapture, "cuStreamBeginCapture_v2",                           \
    CUresult (*)(CUstream, int))                                               \
  X(cuStreamEndCapture, "cuStreamEndCapture",                                  \
    CUresult (*)(CUstream, CUgraph *))                                         \
  X(cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags",                \
    CUresult (*)(CUgraphExec *, CUgraph, unsigned long long))                  \
  X(cuGraphLaunch, "cuGraphLaunch", CUresult (*)(CUgraphExec, CUstream))       \
  X(cuGraphExecDestroy, "cuGraphExecDestroy", CUresult (*)(CUgraphExec))       \
  X(cuGraphDestroy, "cuGraphDestroy", CUresult (*)(CUgraph))                   \
  X(cuEventCreate, "cuEventCreate", CUresult (*)(CUevent *, unsigned))         \
  X(cuEventRecord, "cuEventRecord", CUresult (*)(CUevent, CUstream))           \
  X(cuEventElapsedTime, "cuEventElapsedTime",                                  \
    CUresult (*)(float *, CUevent, CUevent))                                   \
  X(cuEventDestroy, "cuEventDestroy_v2", CUresult (*)(CUevent))                \
  X(cuGetErrorName, "cuGetErrorName", CUresult (*)(CUresult, const char **))   \
  X(cuGetErrorString, "cuGetErrorString", CUresult (*)(CUresult, const char **))

class Driver {
public:
  ~Driver();
  Driver(const Driver &) = delete;
  Driver &operator=(const Driver &) = delete;

  /// Loads the driver and calls cuInit. Null with a one-line `error` when
  /// there is no driver, only the toolkit's stub, or no GPU.
  /// Loads `path`; empty: $KILN_LIBCUDA, else libcuda.so.1.
  static std::unique_ptr<Driver> load(std::string &error,
                                      const std::string &path = "");

  /// "cuInit failed: CUDA_ERROR_... (text)" for a failed call.
  std::string describe(const char *call, CUresult result) const;

  int version() const { return driverVersion; }
  int deviceCount() const { return devices; }

#define KILN_CUDA_MEMBER(name, symbol, type)                                   \
  using name##Fn = type;                                                       \
  name##Fn name = nullptr;
  KILN_CUDA_ENTRY_POINTS(KILN_CUDA_MEMBER)
#undef KILN_CUDA_MEMBER

private:
  Driver() = default;
  void *library = nullptr;
  int driverVersion = 0;
  int devices = 0;
};

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDADRIVER_H
