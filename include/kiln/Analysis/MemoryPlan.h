//===- MemoryPlan.h - Activation buffers by liveness -------------*- C++
//-*-===//
//
// Places the activation buffers of a partitioned graph in one arena. Every
// buffer with a dynamic token dimension scales with the step's token count,
// so offsets are planned per token: the arena of a T-token step is
// T * peakPerToken bytes and a buffer lives at T * offsetPerToken. A buffer
// is live from the launch that writes it to the last launch that reads it;
// offsets are assigned first-fit in program order.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_ANALYSIS_MEMORYPLAN_H
#define KILN_ANALYSIS_MEMORYPLAN_H

#include "mlir/Dialect/Func/IR/FuncOps.h"

#include <vector>

namespace mlir::kiln {

struct BufferPlacement {
  Value value;
  int64_t offsetPerToken = 0;
  int64_t bytesPerToken = 0;
};

struct ActivationPlan {
  std::vector<BufferPlacement> buffers;
  /// Arena bytes per token with reuse, and without (the sum of all buffers).
  int64_t peakPerToken = 0;
  int64_t totalPerToken = 0;
};

/// Plans the results of the `func.call`s in `graph` that have a dynamic
/// token dimension. `bytesPerToken` gives a buffer's size per token;
/// sizes are rounded up to `alignment` bytes.
ActivationPlan planActivations(func::FuncOp graph,
                               function_ref<int64_t(Value)> bytesPerToken,
                               int64_t alignment = 16);

} // namespace mlir::kiln

#endif // KILN_ANALYSIS_MEMORYPLAN_H
