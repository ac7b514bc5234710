//===- GpuKernels.h - sm_90a kernels for a partitioned graph ----*- C++ -*-===//
//
// Every kernel function of a partitioned graph (kiln-graph-pipeline) gets
// one or more GPU functions in one gpu.module, and a description of how the
// runtime launches them: the grid as a function of the step's row counts,
// the block size, the dynamic shared memory, and how each kernel parameter
// is filled (a memref descriptor of a kernel operand, a TMA descriptor, a
// row count). A kernel is a sequence of steps; a step may have variants
// (decode vs prefill tiles) chosen by a row count at run time.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CONVERSION_KILNTOGPU_GPUKERNELS_H
#define KILN_CONVERSION_KILNTOGPU_GPUKERNELS_H

#include "kiln/runtime/EnginePlan.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "mlir/Support/LLVM.h"
#include "llvm/ADT/DenseMap.h"

#include <string>
#include <vector>

namespace mlir::kiln::cuda {

// The launch description is the engine plan's own schema.
using GridExtent = ::kiln::plan::GridExtent;
using GpuParam = ::kiln::plan::GpuParam;
using GpuLaunch = ::kiln::plan::GpuLaunch;
using GpuStep = ::kiln::plan::GpuStep;

struct GpuKernel {
  std::string name;
  std::vector<GpuStep> steps;
};

struct GpuProgram {
  /// Holds `gpuModule`, where the kernels are built.
  OwningOpRef<ModuleOp> container;
  gpu::GPUModuleOp gpuModule;
  std::vector<GpuKernel> kernels;
  /// Storage element type of every graph value produced by a kernel call
  /// (activations feeding GEMMs and attention are kept in bf16 on the GPU).
  llvm::DenseMap<Value, Type> storage;
  /// Each token dispatch and combine of the graph with its row gather-sum
  /// function (the runtime fills its parameters).
  std::vector<std::pair<Operation *, GpuLaunch>> exchanges;
  /// Greedy sampling on the GPU: the index of the largest logit of the last
  /// row (ties to the lower index, NaN as -inf), one block; built on
  /// OpBuilder by kiln-convert-kernels-to-gpu once the text is parsed.
  GpuLaunch argmax;
  /// The logits' vocabulary (0: the graph returns no logits).
  int64_t vocab = 0;
  /// Sampling on the GPU (temperature, top-k, top-p) by the host sampler's
  /// rule, with the uniform draw passed in; one block.
  GpuLaunch sample;
};

/// Generates the GPU functions of every kernel in `module`.
/// The generators' output before it is parsed: kiln-convert-kernels-to-gpu
/// (convertKernelsToGpu) is the way in.
FailureOr<GpuProgram> generateGpuKernels(ModuleOp module);

} // namespace mlir::kiln::cuda

namespace mlir::kiln {

/// The gpu.module that holds every generated GPU function.
constexpr llvm::StringLiteral kKernelModuleName = "kiln_kernels";

/// What kiln-convert-kernels-to-gpu does, for drivers that run it directly.
LogicalResult convertKernelsToGpu(ModuleOp module);

} // namespace mlir::kiln

#endif // KILN_CONVERSION_KILNTOGPU_GPUKERNELS_H
