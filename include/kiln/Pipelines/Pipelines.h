//===- Pipelines.h - Kiln pass pipelines ------------------------*- C++ -*-===//
//
// The graph pipeline from an imported kiln module to the partitioned kernel
// graph that code generators consume.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_PIPELINES_PIPELINES_H
#define KILN_PIPELINES_PIPELINES_H

#include "mlir/Pass/PassManager.h"

namespace mlir::kiln {

struct GraphPipelineOptions {
  /// kiln-fuse-all-reduce-norm's max-rows: -1 for the cost model's limit.
  int64_t fusedAllReduceMaxRows = -1;
};

/// Fusion (QKV, QKV epilogue, gate/up, add + RMS norm, all-reduce into the
/// norm), canonicalization and dead-code removal, then the kernel
/// partition.
void buildGraphPipeline(OpPassManager &pm,
                        const GraphPipelineOptions &options = {});

/// Registers `kiln-graph-pipeline` for kiln-opt.
void registerGraphPipeline();

} // namespace mlir::kiln

#endif // KILN_PIPELINES_PIPELINES_H
