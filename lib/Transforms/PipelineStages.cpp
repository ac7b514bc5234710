//===- PipelineStages.cpp - Layers split into pipeline stages -------------===//
//
// A pipeline stage is a contiguous run of layers, placed on its own ranks
// (a tensor-parallel group each). The graph stays one SPMD graph: a rank
// runs the ops of its stage, and a kiln.stage_send hands the residual
// stream to the next stage. Stages are cut in program order at the RMSNorm
// that opens a layer, so the only values that cross a cut are the
// residual stream (and, in general, whatever else an op after the cut
// reads from before it: each gets its sends).
//
//===----------------------------------------------------------------------===//

#include "dialects/kiln/KilnOps.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_PIPELINESTAGES
#include "kiln/Transforms/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// The RMSNorm a layer's attention reads its input through: back from the
/// query through rope, qk_norm and the projection.
RmsNormOp layerInputNorm(AttentionOp attention) {
  Operation *def = attention.getQuery().getDefiningOp();
  while (def && isa<RopeOp, QkNormOp, LinearOp>(def))
    def = def->getOperand(0).getDefiningOp();
  return dyn_cast_or_null<RmsNormOp>(def);
}

struct PipelineStagesPass
    : mlir::kiln::impl::PipelineStagesBase<PipelineStagesPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    int64_t p = stages;
    if (p < 2) {
      module.emitError() << "kiln-pipeline-stages needs at least 2 stages, "
                            "got "
                         << p;
      return signalPassFailure();
    }
    if (module->hasAttr(KilnDialect::getPipelineStagesAttrName())) {
      module.emitError() << "the graph is already split into pipeline stages";
      return signalPassFailure();
    }
    func::FuncOp graph = graphFunctionOf(module);
    if (!graph) {
      module.emitError() << "kiln-pipeline-stages: no graph function";
      return signalPassFailure();
    }
    module->setAttr(KilnDialect::getPipelineStagesAttrName(),
                    Builder(module).getI64IntegerAttr(p));
    if (failed(split(graph, p)) || failed(assignStages(graph)))
      return signalPassFailure();
  }

  LogicalResult split(func::FuncOp graph, int64_t p) {
    Block &body = graph.getBody().front();
    SmallVector<Operation *> layerStarts;
    for (Operation &op : body)
      if (auto a = dyn_cast<AttentionOp>(op)) {
        RmsNormOp norm = layerInputNorm(a);
        if (!norm)
          return a.emitOpError()
                 << "does not read a projection of an RMSNorm; "
                    "kiln-pipeline-stages cannot tell where its layer starts";
        layerStarts.push_back(norm);
      }
    int64_t layers = static_cast<int64_t>(layerStarts.size());
    if (layers < p)
      return graph.emitOpError()
             << "has " << layers << " layers, fewer than the " << p
             << " pipeline stages";
    // Stage s starts at layer ceil(s * L / P): layer l is on stage l*P/L.
    llvm::DenseSet<Operation *> cuts;
    for (int64_t s = 1; s < p; ++s)
      cuts.insert(layerStarts[(s * layers + p - 1) / p]);

    llvm::DenseMap<Operation *, int64_t> stageOf;
    int64_t stage = 0;
    for (Operation &op : body) {
      if (cuts.contains(&op))
        ++stage;
      stageOf[&op] = stage;
    }

    // Carry every value read after a cut from before it, one stage at a
    // time.
    llvm::DenseMap<std::pair<Value, int64_t>, Value> carried;
    auto valueOn = [&](Value v, int64_t from, int64_t to) {
      Value current = v;
      for (int64_t s = from; s < to; ++s) {
        Value &next = carried[{v, s + 1}];
        if (!next) {
          OpBuilder b(graph.getContext());
          b.setInsertionPointAfterValue(current);
          next = StageSendOp::create(b, v.getLoc(), current.getType(), current,
                                     b.getI64IntegerAttr(s));
        }
        current = next;
      }
      return current;
    };
    SmallVector<Operation *> ops;
    for (Operation &op : body)
      ops.push_back(&op);
    for (Operation *op : ops) {
      if (isa<func::ReturnOp>(op))
        continue;
      int64_t here = stageOf.lookup(op);
      for (OpOperand &use : op->getOpOperands()) {
        Operation *def = use.get().getDefiningOp();
        if (!def || !stageOf.count(def) || stageOf.lookup(def) >= here)
          continue;
        use.set(valueOn(use.get(), stageOf.lookup(def), here));
      }
    }
    // Every rank samples the next token: the logits go everywhere.
    auto ret = cast<func::ReturnOp>(body.getTerminator());
    OpBuilder b(ret);
    for (OpOperand &result : ret->getOpOperands()) {
      Operation *def = result.get().getDefiningOp();
      if (!def)
        continue;
      Value last = valueOn(result.get(), stageOf.lookup(def), p - 1);
      result.set(StageBroadcastOp::create(b, ret.getLoc(), last.getType(), last,
                                          b.getI64IntegerAttr(p - 1)));
    }
    return success();
  }
};

} // namespace
