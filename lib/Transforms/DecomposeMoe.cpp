//===- DecomposeMoe.cpp - Routing, grouped expert GEMMs, shared expert
//-----===//
//
// A Llama 4 MoE block is three different kinds of work: a small GEMM plus a
// sort (routing), two GEMMs over token rows grouped by expert, and a dense
// shared expert. Making them separate ops lets each become the kernel that
// suits it, and lets the shared expert reuse the dense gate/up GEMM.
//
//===----------------------------------------------------------------------===//

#include "dialects/kiln/KilnOps.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_DECOMPOSEMOE
#include "kiln/Transforms/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

struct DecomposeMoePass : mlir::kiln::impl::DecomposeMoeBase<DecomposeMoePass> {
  void runOnOperation() override {
    SmallVector<MoeOp> blocks;
    getOperation().walk([&](MoeOp op) { blocks.push_back(op); });
    for (MoeOp moe : blocks)
      if (moe.getSharedGate())
        decompose(moe);
  }

  void decompose(MoeOp moe) {
    OpBuilder b(moe);
    Location loc = moe.getLoc();
    Value input = moe.getInput();
    auto inputType = cast<RankedTensorType>(input.getType());
    Type element = inputType.getElementType();
    auto down = cast<RankedTensorType>(moe.getDown().getType());
    // The experts this rank holds (a share of the router's when
    // expert-parallel).
    int64_t experts = down.getDimSize(0), ffn = down.getDimSize(1);
    int64_t dyn = ShapedType::kDynamic;

    auto route =
        MoeRouteOp::create(b, loc, RankedTensorType::get({dyn}, b.getI64Type()),
                           RankedTensorType::get({experts + 1}, b.getI64Type()),
                           RankedTensorType::get({dyn}, element), input,
                           moe.getRouter(), moe.getRank(), moe.getTopKAttr(),
                           moe.getExpertGroupsAttr(), moe.getRanksAttr());
    Value hidden = ExpertGateUpOp::create(
        b, loc, RankedTensorType::get({dyn, ffn}, element), input,
        route.getTokenIndices(), route.getExpertOffsets(), route.getGates(),
        moe.getGateUp());

    // The shared expert, already in the fused gate/up form.
    auto sharedGate = cast<RankedTensorType>(moe.getSharedGate().getType());
    int64_t sharedFfn = sharedGate.getDimSize(0),
            hiddenSize = sharedGate.getDimSize(1);
    Value packedWeight =
        ConcatOp::create(b, loc,
                         RankedTensorType::get({2 * sharedFfn, hiddenSize},
                                               sharedGate.getElementType()),
                         ValueRange{moe.getSharedGate(), moe.getSharedUp()},
                         b.getI64IntegerAttr(0));
    Value gateUp = LinearOp::create(
        b, loc, RankedTensorType::get({dyn, 2 * sharedFfn}, element), input,
        packedWeight);
    Value activated = PackedSwiGluOp::create(
        b, loc, RankedTensorType::get({dyn, sharedFfn}, element), gateUp);
    Value shared =
        LinearOp::create(b, loc, moe.getType(), activated, moe.getSharedDown());

    Value result = ExpertDownOp::create(
        b, loc, moe.getType(), hidden, route.getTokenIndices(),
        route.getExpertOffsets(), moe.getDown(), shared);
    moe.getResult().replaceAllUsesWith(result);
    moe.erase();
  }
};

} // namespace
