//===- FuseAddRmsNorm.cpp - Residual add + RMS norm in one op
//--------------===//
//
// Every decoder block ends with x + f(x) and the next one starts with
// rms_norm(x + f(x)). Fused, the residual stream is read once and both the new
// residual and the normalised activations are written in the same pass: a
// memory-bound kernel fewer per block.
//
//===----------------------------------------------------------------------===//

#include "FusionUtils.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_FUSEADDRMSNORM
#include "kiln/Transforms/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

struct FuseAddRmsNormPass
    : mlir::kiln::impl::FuseAddRmsNormBase<FuseAddRmsNormPass> {
  void runOnOperation() override {
    SmallVector<RmsNormOp> norms;
    getOperation().walk([&](RmsNormOp op) { norms.push_back(op); });
    for (RmsNormOp norm : norms) {
      auto add = norm.getInput().getDefiningOp<AddOp>();
      // The fused op replaces the add, so the weight must exist there.
      if (!add || add->getBlock() != norm->getBlock() ||
          !isDefinedBefore(norm.getWeight(), add))
        continue;
      OpBuilder builder(add);
      auto fused = AddRmsNormOp::create(
          builder, builder.getFusedLoc({add.getLoc(), norm.getLoc()}),
          add.getType(), add.getType(), add.getLhs(), add.getRhs(),
          norm.getWeight(), norm.getEpsilonAttr());
      norm.getResult().replaceAllUsesWith(fused.getNormed());
      norm.erase();
      add.getResult().replaceAllUsesWith(fused.getSum());
      add.erase();
    }
  }
};

} // namespace
