//===- FuseAllReduceNorm.cpp - An all-reduce's sum formed by its reader ---===//
//
// A tensor-parallel block ends with all_reduce(partial) read by the next
// block's add_rms_norm. A ring all-reduce is two communication steps (reduce-
// scatter, all-gather) and writes the sum that the norm then reads back.
// Gathering the partials instead is one step, and the norm, which reads the
// row anyway, sums them in the same pass. The gather moves more bytes at
// more than two ranks, so the cost model bounds the step size it is used
// for and backends all-reduce above it (TensorRT-LLM's fused all-reduce
// makes the same choice by message size).
//
//===----------------------------------------------------------------------===//

#include "dialects/kiln/KilnOps.h"
#include "kiln/Analysis/ParallelPlan.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_FUSEALLREDUCENORM
#include "kiln/Transforms/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

struct FuseAllReduceNormPass
    : mlir::kiln::impl::FuseAllReduceNormBase<FuseAllReduceNormPass> {
  using Base::Base;

  void runOnOperation() override {
    if (maxRows < -1) {
      getOperation().emitError()
          << "kiln-fuse-all-reduce-norm: max-rows must be -1 (from the cost "
             "model) or >= 0, got "
          << static_cast<int64_t>(maxRows);
      return signalPassFailure();
    }
    SmallVector<AllReduceOp> reduces;
    getOperation().walk([&](AllReduceOp op) { reduces.push_back(op); });
    for (AllReduceOp reduce : reduces) {
      if (!reduce->hasOneUse())
        continue;
      auto norm = dyn_cast<AddRmsNormOp>(*reduce->user_begin());
      if (!norm || norm.getPartials() != 1)
        continue;
      // The sum may be either addend; the partials become the input.
      Value residual = norm.getResidual() == reduce.getResult()
                           ? norm.getInput()
                           : norm.getResidual();
      if (residual == reduce.getResult())
        continue; // x + x: both operands are the sum
      auto type = reduce.getType();
      // The gathered rows are ranks x the step's: a static count cannot say
      // so (kiln graphs have dynamic ones).
      if (type.getRank() != 2 || !type.isDynamicDim(0))
        continue;
      int64_t ranks = static_cast<int64_t>(reduce.getRanks());
      OpBuilder builder(reduce);
      auto gathered = GatherPartialsOp::create(
          builder, reduce.getLoc(), type, reduce.getInput(),
          builder.getI64IntegerAttr(ranks), limitFor(builder, ranks, type));
      norm.getInputMutable().assign(gathered.getResult());
      norm.getResidualMutable().assign(residual);
      norm.setPartials(ranks);
      reduce.erase();
    }
  }

  IntegerAttr limitFor(OpBuilder &builder, int64_t ranks,
                       RankedTensorType type) {
    if (maxRows >= 0)
      return builder.getI64IntegerAttr(maxRows);
    double rowBytes = type.getElementTypeBitWidth() / 8.0 * type.getDimSize(1);
    std::optional<int64_t> most = partialGatherMaxRows(ranks, rowBytes);
    return most ? builder.getI64IntegerAttr(*most) : IntegerAttr();
  }
};

} // namespace
