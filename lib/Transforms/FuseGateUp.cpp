//===- FuseGateUp.cpp - One GEMM with a SwiGLU epilogue
//--------------------===//
//
// silu(u Wg^T) * (u Wu^T) reads u twice and writes two [T, F] intermediates.
// With Wg and Wu stacked into one [2F, D] weight it is one GEMM whose epilogue
// combines the two halves of each output row: the intermediates never reach
// memory on the GPU.
//
//===----------------------------------------------------------------------===//

#include "FusionUtils.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_FUSEGATEUP
#include "kiln/Transforms/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

struct FuseGateUpPass : mlir::kiln::impl::FuseGateUpBase<FuseGateUpPass> {
  void runOnOperation() override {
    SmallVector<SwiGluOp> candidates;
    getOperation().walk([&](SwiGluOp op) { candidates.push_back(op); });
    for (SwiGluOp swiglu : candidates) {
      auto gate = swiglu.getGate().getDefiningOp<LinearOp>();
      auto up = swiglu.getUp().getDefiningOp<LinearOp>();
      if (!gate || !up || gate == up || gate.getInput() != up.getInput() ||
          !gate->hasOneUse() || !up->hasOneUse() ||
          gate->getBlock() != up->getBlock())
        continue;
      Operation *first =
          gate->isBeforeInBlock(up) ? gate.getOperation() : up.getOperation();
      OpBuilder builder(first);
      Location loc = builder.getFusedLoc({gate.getLoc(), up.getLoc()});
      SmallVector<LinearOp> projections = {gate, up};
      Value packed = buildConcatenatedLinear(builder, loc, gate.getInput(),
                                             projections, first);
      if (!packed)
        continue;
      builder.setInsertionPoint(swiglu);
      Value result = PackedSwiGluOp::create(builder, swiglu.getLoc(),
                                            swiglu.getType(), packed);
      swiglu.getResult().replaceAllUsesWith(result);
      swiglu.erase();
      gate.erase();
      up.erase();
    }
  }
};

} // namespace
