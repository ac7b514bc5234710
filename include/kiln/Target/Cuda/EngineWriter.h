//===- EngineWriter.h - sm_90a engines from kernel graphs -------*- C++ -*-===//
//
// The sm_90a engine: the target-independent plan (values in their GPU
// storage types) with each launch's GPU steps, the cubin of all GPU
// functions (when ptxas is available) and their PTX.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TARGET_CUDA_ENGINEWRITER_H
#define KILN_TARGET_CUDA_ENGINEWRITER_H

#include "kiln/Target/Cuda/CudaCompiler.h"
#include "kiln/runtime/EnginePlan.h"

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/raw_ostream.h"

namespace mlir::kiln::cuda {

struct CudaEngine {
  ::kiln::plan::Plan plan;
  CompiledModule code;
  /// GPU function name -> (block threads, dynamic shared bytes).
  std::map<std::string, std::pair<int64_t, int64_t>> launchShapes;
};

/// Generates, lowers and assembles the kernels of `module` (after
/// kiln-graph-pipeline) and builds the plan.
llvm::Expected<CudaEngine> buildCudaEngine(ModuleOp module,
                                           llvm::StringRef workDir);

llvm::Error writeCudaEngine(const CudaEngine &engine, llvm::StringRef path);

/// One line per GPU function: registers, spills, shared memory, block size.
void printKernelResources(const CudaEngine &engine, llvm::raw_ostream &os);

} // namespace mlir::kiln::cuda

#endif // KILN_TARGET_CUDA_ENGINEWRITER_H
