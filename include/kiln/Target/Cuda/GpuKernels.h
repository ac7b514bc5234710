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

#ifndef KILN_TARGET_CUDA_GPUKERNELS_H
#define KILN_TARGET_CUDA_GPUKERNELS_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Support/LLVM.h"
#include "llvm/ADT/DenseMap.h"

#include <string>
#include <vector>

namespace mlir::kiln::cuda {

/// One grid extent: ceil((rows(operand) * perRow + constant) / divisor), or
/// constant / divisor (rounded up) when `rowsOf` is negative; with
/// `perSm`, that many blocks per SM of the GPU (persistent kernels).
struct GridExtent {
  int rowsOf = -1;
  int64_t perRow = 0;
  int64_t constant = 1;
  int64_t divisor = 1;
  int64_t perSm = 0;
};

/// How the runtime fills one parameter of a GPU function. Operands are
/// numbered like the launch's values: the kernel's arguments, then its
/// results.
struct GpuParam {
  enum class Kind {
    /// A memref descriptor (allocated, aligned, offset, sizes, strides).
    Memref,
    /// A pointer to a 128-byte CUtensorMap for a bf16 operand viewed as a
    /// 2-D row-major matrix [rows, cols] (3-D weights: [d0 * d1, d2]), box
    /// {boxCols, boxRows}, 128-byte swizzle, zero fill out of bounds.
    TensorMap,
    /// The positions (i64 [keys]) of the KV slot bound to operand `operand`
    /// (an attention key argument), as a memref descriptor.
    KeyPositions,
    /// The KV pool bound to `operand` (an attention key or value argument):
    /// a memref descriptor over the pool's capacity; rows past the key
    /// count are not read.
    KvPool,
    /// The key count (memref<1xi64>, in device memory) of the KV slot bound
    /// to `operand` (an attention key argument), counting this step's rows.
    /// Read on the device so a decode step's parameters do not change from
    /// step to step (CUDA graphs replay them).
    KeyCount,
    /// Device scratch memory (i64 [rows(operand) * perRow]) private to the
    /// launch sequence of one kernel call.
    Scratch,
  };
  Kind kind;
  unsigned operand;
  int64_t boxCols = 0, boxRows = 0;
  /// TensorMap of a 3-D tensor [d0, d1, d2] kept 3-D (dims {d2, d1, d0},
  /// box {boxCols, boxRows, 1}), so boxes never run into the next d0 slice.
  bool box3 = false;
  /// TensorMap over the KV pool bound to `operand` (an attention key or
  /// value argument) rather than the operand's own buffer.
  bool pool = false;
  /// Scratch: elements per row of `operand`, i64 or (floatScratch) f32.
  int64_t perRow = 0;
  bool floatScratch = false;
};

struct GpuLaunch {
  /// Empty: the variant launches nothing (a step only some variants need).
  std::string function;
  int64_t blockThreads = 0;
  int64_t dynamicSharedBytes = 0;
  GridExtent grid[3];
  std::vector<GpuParam> params;
  /// A variant applies when rows(selectOperand) <= maxRows (the last
  /// variant of a step applies otherwise).
  int selectOperand = -1;
  int64_t maxRows = -1;
};

struct GpuStep {
  std::vector<GpuLaunch> variants;
};

struct GpuKernel {
  std::string name;
  std::vector<GpuStep> steps;
};

struct GpuProgram {
  /// The gpu.module, as MLIR text, before lowering.
  std::string moduleText;
  std::vector<GpuKernel> kernels;
  /// Storage element type of every graph value produced by a kernel call
  /// (activations feeding GEMMs and attention are kept in bf16 on the GPU).
  llvm::DenseMap<Value, Type> storage;
  /// Greedy sampling on the GPU: the index of the largest logit of the last
  /// row (ties to the lower index, NaN as -inf), one block.
  GpuLaunch argmax;
  /// Sampling on the GPU (temperature, top-k, top-p) by the host sampler's
  /// rule, with the uniform draw passed in; one block.
  GpuLaunch sample;
};

/// Generates the GPU functions of every kernel in `module`.
FailureOr<GpuProgram> generateGpuKernels(ModuleOp module);

} // namespace mlir::kiln::cuda

#endif // KILN_TARGET_CUDA_GPUKERNELS_H
