//===- Pipelines.cpp - Kiln pass pipelines
//---------------------------------===//

#include "kiln/Pipelines/Pipelines.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void mlir::kiln::buildGraphPipeline(OpPassManager &pm,
                                    const GraphPipelineOptions &options) {
  OpPassManager &func = pm.nest<func::FuncOp>();
  // MoE first (its shared expert comes out already fused); QKV before its
  // epilogue; the add + norm fusion does not touch projections.
  func.addPass(createDecomposeMoe());
  func.addPass(createFuseQkv());
  func.addPass(createFuseQkvEpilogue());
  func.addPass(createFuseGateUp());
  func.addPass(createFuseAddRmsNorm());
  func.addPass(createFuseAllReduceNorm(
      FuseAllReduceNormOptions{options.fusedAllReduceMaxRows}));
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createPartitionKernels());
}

void mlir::kiln::registerGraphPipeline() {
  PassPipelineRegistration<>(
      "kiln-graph-pipeline",
      "Fuse the kiln graph and partition it into kernels",
      [](OpPassManager &pm) { buildGraphPipeline(pm); });
}
