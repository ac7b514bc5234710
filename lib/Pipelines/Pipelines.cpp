//===- Pipelines.cpp - Kiln pass pipelines ---------------------------------===//

#include "kiln/Pipelines/Pipelines.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void mlir::kiln::buildGraphPipeline(OpPassManager &pm) {
  OpPassManager &func = pm.nest<func::FuncOp>();
  // QKV before its epilogue; both before the add + norm fusion, which does
  // not touch projections.
  func.addPass(createFuseQkv());
  func.addPass(createFuseQkvEpilogue());
  func.addPass(createFuseGateUp());
  func.addPass(createFuseAddRmsNorm());
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createPartitionKernels());
}

void mlir::kiln::registerGraphPipeline() {
  PassPipelineRegistration<>(
      "kiln-graph-pipeline",
      "Fuse the kiln graph and partition it into kernels",
      [](OpPassManager &pm) { buildGraphPipeline(pm); });
}
