//===- KilnOps.h - Operations of the kiln dialect ---------------*- C++ -*-===//
//
// Declares the kiln ops, enums and attributes generated from ODS.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_DIALECTS_KILN_KILNOPS_H
#define KILN_DIALECTS_KILN_KILNOPS_H

#include "dialects/kiln/KilnDialect.h"
#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "dialects/kiln/KilnEnums.h.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/kiln/KilnAttrs.h.inc"

#define GET_OP_CLASSES
#include "dialects/kiln/KilnOps.h.inc"

namespace mlir {
class ModuleOp;
namespace func {
class FuncOp;
} // namespace func

namespace kiln {
/// The model's graph in `module`: its public function with a body (the
/// last one; null when there is none). Kernel functions are private.
func::FuncOp graphFunctionOf(ModuleOp module);
/// The splits of weight argument `argIndex` of `func` (its `kiln.shard`: one
/// #kiln.shard or an array of them), outermost first; empty when unsharded.
SmallVector<ShardAttr> weightShardsOf(func::FuncOp func, unsigned argIndex);

/// Where each part of a pipeline-parallel graph runs (module attribute
/// kiln.pipeline_stages): the stage of an op is the stage of its operands
/// (a kiln.stage_send result counting as the next stage); an op that reads
/// only arguments, and a weight argument, belong to the stage of their
/// users. kAllStages: runtime inputs, kiln.stage_broadcast results.
struct StageAssignment {
  static constexpr int64_t kAllStages = -1;
  int64_t stages = 1;
  llvm::DenseMap<Operation *, int64_t> ops;
  llvm::DenseMap<Value, int64_t> values;
  int64_t of(Operation *op) const {
    auto it = ops.find(op);
    return it == ops.end() ? kAllStages : it->second;
  }
  int64_t of(Value v) const {
    auto it = values.find(v);
    return it == values.end() ? kAllStages : it->second;
  }
};
/// The stages of graph `func` (every op on stage 0 without
/// kiln.pipeline_stages). Fails, naming the op, when an op reads values of
/// two stages or a weight serves two stages.
FailureOr<StageAssignment> assignStages(func::FuncOp func);
} // namespace kiln
} // namespace mlir

#endif // KILN_DIALECTS_KILN_KILNOPS_H
