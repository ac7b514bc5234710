//===- FuseQkv.cpp - One GEMM for the q, k and v projections --------------===//
//
// Attention reads three projections of the same normalised input. One GEMM
// over the concatenated weights reads that input once and gives the GPU one
// large launch instead of three (two of them narrow: 1024 of 7168 columns in
// Llama 4). RoPE and QK norm stay where they are; later passes move them into
// the GEMM's epilogue.
//
//===----------------------------------------------------------------------===//

#include "FusionUtils.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_FUSEQKV
#include "kiln/Transforms/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

/// The projection feeding an attention operand, looking through the
/// per-token position and norm ops that may sit between them.
static LinearOp findProjection(Value value) {
  while (Operation *def = value.getDefiningOp()) {
    if (auto rope = dyn_cast<RopeOp>(def))
      value = rope.getInput();
    else if (auto norm = dyn_cast<QkNormOp>(def))
      value = norm.getInput();
    else
      return dyn_cast<LinearOp>(def);
  }
  return nullptr;
}

namespace {

struct FuseQkvPass : mlir::kiln::impl::FuseQkvBase<FuseQkvPass> {
  void runOnOperation() override {
    SmallVector<AttentionOp> attentions;
    getOperation().walk([&](AttentionOp op) { attentions.push_back(op); });
    for (AttentionOp attention : attentions) {
      LinearOp q = findProjection(attention.getQuery());
      LinearOp k = findProjection(attention.getKey());
      LinearOp v = findProjection(attention.getValue());
      if (!q || !k || !v || q == k || k == v || q == v)
        continue;
      Value input = q.getInput();
      if (k.getInput() != input || v.getInput() != input ||
          q->getBlock() != k->getBlock() || q->getBlock() != v->getBlock())
        continue;
      // Insert before the first of the three so every user still follows.
      Operation *first = q;
      for (Operation *op : {k.getOperation(), v.getOperation()})
        if (op->isBeforeInBlock(first))
          first = op;
      OpBuilder builder(first);
      Location loc = builder.getFusedLoc({q.getLoc(), k.getLoc(), v.getLoc()});
      SmallVector<LinearOp> projections = {q, k, v};
      Value qkv =
          buildConcatenatedLinear(builder, loc, input, projections, first);
      if (!qkv)
        continue;
      auto split = SplitOp::create(
          builder, loc, TypeRange{q.getType(), k.getType(), v.getType()}, qkv);
      for (auto [projection, part] :
           llvm::zip(projections, split.getResults())) {
        projection.getResult().replaceAllUsesWith(part);
        projection.erase();
      }
    }
  }
};

} // namespace
