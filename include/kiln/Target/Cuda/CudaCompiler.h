//===- CudaCompiler.h - gpu.module to PTX and cubin -------------*- C++ -*-===//
//
// Lowers the generated kernel module through NVGPU/NVVM to PTX with LLVM's
// NVPTX backend (in process, sm_90a, PTX 8.0), then assembles it with
// `ptxas -arch=sm_90a` when the CUDA toolkit is present, keeping what ptxas
// reports per function (registers, spills, shared memory).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TARGET_CUDA_CUDACOMPILER_H
#define KILN_TARGET_CUDA_CUDACOMPILER_H

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/IR/MLIRContext.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <map>
#include <string>

namespace mlir::kiln::cuda {

struct FunctionResources {
  int64_t registers = -1;
  int64_t spillStores = 0, spillLoads = 0, stackBytes = 0;
  int64_t staticSharedBytes = 0;
};

struct CompiledModule {
  std::string ptx;
  /// Empty when no ptxas was found.
  std::string cubin;
  std::string ptxasPath;
  std::map<std::string, FunctionResources> resources;
};

/// The ptxas of $KILN_PTXAS, $CUDA_HOME/bin, /usr/local/cuda/bin or PATH;
/// empty if none (or if KILN_PTXAS is set to the empty string).
std::string findPtxas();

/// Lowers a copy of `kernels` to PTX for sm_90a and assembles it.
llvm::Expected<CompiledModule> compileGpuModule(gpu::GPUModuleOp kernels,
                                                llvm::StringRef workDir);

} // namespace mlir::kiln::cuda

#endif // KILN_TARGET_CUDA_CUDACOMPILER_H
