//===- KilnDialect.cpp - The kiln dialect ---------------------------------===//
//
// Registers the kiln ops and attributes and verifies the argument attributes
// that bind function arguments to checkpoint tensors and runtime inputs.
//
//===----------------------------------------------------------------------===//

#include "dialects/kiln/KilnDialect.h"
#include "dialects/kiln/KilnOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/DialectImplementation.h"
#include "mlir/Interfaces/FunctionInterfaces.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace mlir::kiln;

#include "dialects/kiln/KilnDialect.cpp.inc"
#include "dialects/kiln/KilnEnums.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/kiln/KilnAttrs.cpp.inc"

void KilnDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialects/kiln/KilnOps.cpp.inc"
      >();
  addAttributes<
#define GET_ATTRDEF_LIST
#include "dialects/kiln/KilnAttrs.cpp.inc"
      >();
}

LogicalResult KilnDialect::verifyOperationAttribute(Operation *op,
                                                    NamedAttribute attr) {
  StringRef name = attr.getName().getValue();
  // Facts of the imported model, kept on the module for the engine writers.
  if (name == "kiln.architecture") {
    if (!isa<ModuleOp>(op) || !isa<StringAttr>(attr.getValue()))
      return op->emitError()
             << "'kiln.architecture' must be a string on the module";
    return success();
  }
  if (name == "kiln.eos_token_ids") {
    if (!isa<ModuleOp>(op) || !isa<DenseI64ArrayAttr>(attr.getValue()))
      return op->emitError()
             << "'kiln.eos_token_ids' must be an array<i64> on the module";
    return success();
  }
  if (name == "kiln.max_position_embeddings") {
    if (!isa<ModuleOp>(op) || !isa<IntegerAttr>(attr.getValue()))
      return op->emitError() << "'kiln.max_position_embeddings' must be an "
                                "integer on the module";
    return success();
  }
  // Recorded by kiln-convert-kernels-to-gpu for the sm_90a engine writer,
  // which checks their contents field by field.
  if (name == "kiln.gpu_steps") {
    if (!isa<FunctionOpInterface, TokenDispatchOp, TokenCombineOp>(op) ||
        !isa<ArrayAttr>(attr.getValue()))
      return op->emitError() << "'kiln.gpu_steps' must be an array on a "
                                "kernel function or a token exchange";
    return success();
  }
  if (name == "kiln.storage") {
    auto types = dyn_cast<ArrayAttr>(attr.getValue());
    if (!types || types.size() != op->getNumResults() ||
        !llvm::all_of(types, [](Attribute t) { return isa<TypeAttr>(t); }))
      return op->emitError() << "'kiln.storage' must hold one type per result";
    return success();
  }
  if (name == "kiln.argmax" || name == "kiln.sample") {
    if (!isa<DictionaryAttr>(attr.getValue()))
      return op->emitError()
             << "'" << name << "' must be a launch description dictionary";
    return success();
  }
  if (name == getTensorParallelAttrName() ||
      name == getPipelineStagesAttrName()) {
    auto count = dyn_cast<IntegerAttr>(attr.getValue());
    if (!isa<ModuleOp>(op) || !count || count.getInt() < 2)
      return op->emitError() << "'" << name
                             << "' must be an integer of at least 2 on the "
                                "module";
    // Every op and weight of a pipeline must fall on one stage.
    if (func::FuncOp graph = graphFunctionOf(cast<ModuleOp>(op));
        name == getPipelineStagesAttrName() && graph &&
        !graph.getBody().empty() && graph.getBody().hasOneBlock())
      return failure(failed(assignStages(graph)));
    return success();
  }
  if (name == getAttentionReplicasAttrName()) {
    auto count = dyn_cast<IntegerAttr>(attr.getValue());
    auto ranks = op->getAttrOfType<IntegerAttr>(getTensorParallelAttrName());
    if (!isa<ModuleOp>(op) || !count || count.getInt() < 2 || !ranks ||
        ranks.getInt() % count.getInt() != 0)
      return op->emitError()
             << "'" << name
             << "' must be an integer of at least 2 on a module whose '"
             << getTensorParallelAttrName() << "' it divides";
    return success();
  }
  if (name != getKernelAttrName())
    return op->emitError() << "unknown kiln attribute '" << name << "'";
  if (!isa<KernelKindAttr>(attr.getValue()))
    return op->emitError() << "'" << getKernelAttrName()
                           << "' must be a #kiln.kernel<...> kind, got "
                           << attr.getValue();
  // A kernel stays a kernel through the lowerings (func.func, llvm.func).
  if (!isa<FunctionOpInterface>(op))
    return op->emitError() << "'" << getKernelAttrName()
                           << "' marks kernel functions only";
  return success();
}

LogicalResult KilnDialect::verifyRegionArgAttribute(Operation *op,
                                                    unsigned regionIndex,
                                                    unsigned argIndex,
                                                    NamedAttribute attr) {
  Region &region = op->getRegion(regionIndex);
  if (region.empty() || argIndex >= region.front().getNumArguments())
    return success();
  Type argType = region.front().getArgument(argIndex).getType();
  auto tensorType = dyn_cast<RankedTensorType>(argType);

  if (attr.getName() == getWeightAttrName()) {
    auto name = dyn_cast<StringAttr>(attr.getValue());
    if (!name || name.getValue().empty())
      return op->emitError()
             << "'" << getWeightAttrName() << "' on argument " << argIndex
             << " must be a non-empty string naming a "
                "checkpoint tensor";
    // Weights are read from checkpoints with fixed shapes; an unknown extent
    // could not be bound.
    if (!tensorType || !tensorType.hasStaticShape() ||
        !isa<Float32Type, Float16Type, BFloat16Type>(
            tensorType.getElementType()))
      return op->emitError()
             << "weight argument " << argIndex << " ('" << name.getValue()
             << "') must be a statically shaped tensor of f32, f16 or bf16, "
                "got "
             << argType;
    return success();
  }

  if (attr.getName() == getShardAttrName()) {
    SmallVector<ShardAttr> shards;
    if (auto one = dyn_cast<ShardAttr>(attr.getValue()))
      shards.push_back(one);
    else if (auto many = dyn_cast<ArrayAttr>(attr.getValue()))
      for (Attribute a : many)
        shards.push_back(dyn_cast<ShardAttr>(a));
    if (shards.empty() || llvm::is_contained(shards, ShardAttr()))
      return op->emitError()
             << "'" << getShardAttrName() << "' on argument " << argIndex
             << " must be a #kiln.shard<...> or an array of them";
    for (ShardAttr shard : shards) {
      if (!tensorType || shard.getDim() >= tensorType.getRank() ||
          tensorType.isDynamicDim(shard.getDim()) ||
          tensorType.getDimSize(shard.getDim()) % shard.getGroups() != 0)
        return op->emitError()
               << "argument " << argIndex << " of type " << argType
               << " has no dimension " << shard.getDim() << " made of "
               << shard.getGroups() << " equal groups to shard";
      if (llvm::count_if(shards, [&](ShardAttr other) {
            return other.getDim() == shard.getDim();
          }) > 1)
        return op->emitError()
               << "argument " << argIndex << " is split twice along dimension "
               << shard.getDim();
    }
    return success();
  }

  if (attr.getName() == getHostPanelAttrName()) {
    auto columns = dyn_cast<IntegerAttr>(attr.getValue());
    auto memrefType = dyn_cast<MemRefType>(argType);
    if (!columns || columns.getInt() <= 0 || !memrefType ||
        memrefType.getRank() != 3 || !memrefType.hasStaticShape() ||
        memrefType.getDimSize(2) % columns.getInt() != 0)
      return op->emitError()
             << "'" << getHostPanelAttrName() << "' on argument " << argIndex
             << " must be a positive column count dividing the last extent "
                "of a static 3-D memref, got "
             << attr.getValue() << " on " << argType;
    return success();
  }

  if (attr.getName() == getInputAttrName()) {
    auto kind = dyn_cast<StringAttr>(attr.getValue());
    if (!kind || (kind.getValue() != "tokens" &&
                  kind.getValue() != "positions" && kind.getValue() != "rank"))
      return op->emitError()
             << "'" << getInputAttrName() << "' on argument " << argIndex
             << " must be \"tokens\", \"positions\" or \"rank\"";
    if (kind.getValue() == "rank") {
      // The process's rank in a tensor-parallel group, for ops whose work
      // depends on it (expert-parallel MoE).
      if (!tensorType || tensorType.getShape() != ArrayRef<int64_t>{1} ||
          !tensorType.getElementType().isInteger(64))
        return op->emitError()
               << "input argument " << argIndex
               << " (rank) must be tensor<1xi64>, got " << argType;
      return success();
    }
    bool isTokens = kind.getValue() == "tokens";
    bool ok = tensorType && tensorType.getRank() == 1 &&
              (tensorType.getElementType().isInteger(64) ||
               (isTokens && tensorType.getElementType().isInteger(32)));
    if (!ok)
      return op->emitError()
             << "input argument " << argIndex << " (" << kind.getValue()
             << ") must be a 1-D tensor of "
             << (isTokens ? "i32 or i64" : "i64") << ", got " << argType;
    return success();
  }

  return op->emitError() << "unknown kiln argument attribute '"
                         << attr.getName().getValue() << "'";
}

LogicalResult ShardAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                                int64_t dim, int64_t parts, int64_t groups,
                                int64_t stride) {
  if (dim < 0 || parts < 1 || groups < 1 || stride < 0)
    return emitError() << "#kiln.shard needs dim >= 0, parts >= 1, "
                          "groups >= 1 and stride >= 0 (got dim = "
                       << dim << ", parts = " << parts
                       << ", groups = " << groups << ", stride = " << stride
                       << ")";
  return success();
}
