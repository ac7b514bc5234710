//===- FuseQkvEpilogue.cpp - RoPE, QK norm, temperature as GEMM epilogue
//---===//
//
// RoPE, the QK norm (per head) and the attention temperature (per token) only
// need one output row of the QKV GEMM at a time, so they can run on the
// accumulators before they are stored: q and k are written once, final.
//
//===----------------------------------------------------------------------===//

#include "FusionUtils.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_FUSEQKVEPILOGUE
#include "kiln/Transforms/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// What sits between one split result and the attention operand.
struct Chain {
  Value source;  // the split result
  RopeOp rope;   // optional
  QkNormOp norm; // optional, after the rope
  SmallVector<Operation *> ops;
};

} // namespace

/// Walks from an attention operand back to its source: qk_norm(rope(x)),
/// rope(x), qk_norm(x) or x. Every op on the way must have one user.
static std::optional<Chain> traceChain(Value operand) {
  Chain chain;
  Value value = operand;
  if (auto norm = value.getDefiningOp<QkNormOp>()) {
    if (!norm->hasOneUse())
      return std::nullopt;
    chain.norm = norm;
    chain.ops.push_back(norm);
    value = norm.getInput();
  }
  if (auto rope = value.getDefiningOp<RopeOp>()) {
    if (!rope->hasOneUse())
      return std::nullopt;
    chain.rope = rope;
    chain.ops.push_back(rope);
    value = rope.getInput();
  }
  if (!value.hasOneUse())
    return std::nullopt;
  chain.source = value;
  return chain;
}

namespace {

struct FuseQkvEpiloguePass
    : mlir::kiln::impl::FuseQkvEpilogueBase<FuseQkvEpiloguePass> {
  void runOnOperation() override {
    SmallVector<AttentionOp> attentions;
    getOperation().walk([&](AttentionOp op) { attentions.push_back(op); });
    for (AttentionOp attention : attentions)
      fuse(attention);
  }

  void fuse(AttentionOp attention) {
    std::optional<Chain> q = traceChain(attention.getQuery());
    std::optional<Chain> k = traceChain(attention.getKey());
    Value v = attention.getValue();
    if (!q || !k || !v.hasOneUse())
      return;
    auto split = q->source.getDefiningOp<SplitOp>();
    if (!split || split.getNumResults() != 3 ||
        split.getResult(0) != q->source || split.getResult(1) != k->source ||
        split.getResult(2) != v)
      return;
    // q and k must be treated alike: one set of attributes describes both.
    if (!q->rope != !k->rope || !q->norm != !k->norm)
      return;
    if (q->rope && (q->rope.getInvFreq() != k->rope.getInvFreq() ||
                    q->rope.getPositions() != attention.getPositions() ||
                    k->rope.getPositions() != attention.getPositions()))
      return;
    if (q->norm && q->norm.getEpsilon() != k->norm.getEpsilon())
      return;
    if (!isDefinedBefore(attention.getPositions(), split))
      return;

    OpBuilder builder(split);
    Builder &b = builder;
    auto epilogue = QkvEpilogueOp::create(
        builder, split.getLoc(),
        TypeRange{attention.getQuery().getType(), attention.getKey().getType(),
                  v.getType()},
        split.getInput(), attention.getPositions(),
        b.getI64IntegerAttr(attention.getNumHeads()),
        b.getI64IntegerAttr(attention.getNumKvHeads()),
        q->rope ? q->rope.getInvFreqAttr() : DenseF64ArrayAttr(),
        q->norm ? q->norm.getEpsilonAttr() : FloatAttr(),
        attention.getAttnScaleAttr(), attention.getFloorScaleAttr());
    attention.getQueryMutable().assign(epilogue.getQuery());
    attention.getKeyMutable().assign(epilogue.getKey());
    attention.getValueMutable().assign(epilogue.getValue());
    // The temperature now acts in the epilogue.
    attention.removeAttnScaleAttr();
    attention.removeFloorScaleAttr();
    for (Operation *op : llvm::concat<Operation *>(q->ops, k->ops))
      op->erase();
    split.erase();
  }
};

} // namespace
