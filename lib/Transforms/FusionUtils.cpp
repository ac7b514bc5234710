//===- FusionUtils.cpp - Helpers shared by the fusion passes
//---------------===//

#include "FusionUtils.h"

#include "mlir/IR/Builders.h"

using namespace mlir;
using namespace mlir::kiln;

bool mlir::kiln::isDefinedBefore(Value value, Operation *point) {
  if (auto arg = dyn_cast<BlockArgument>(value))
    return arg.getOwner() == point->getBlock();
  Operation *def = value.getDefiningOp();
  return def->getBlock() == point->getBlock() && def->isBeforeInBlock(point);
}

Value mlir::kiln::buildConcatenatedLinear(OpBuilder &builder, Location loc,
                                          Value input,
                                          ArrayRef<LinearOp> projections,
                                          Operation *point) {
  SmallVector<Value> weights;
  Type elementType;
  int64_t rows = 0, cols = 0;
  for (LinearOp projection :
       projections) { // copies: op accessors are non-const
    auto type = cast<RankedTensorType>(projection.getWeight().getType());
    if (elementType && type.getElementType() != elementType)
      return nullptr;
    if (!type.hasStaticShape() ||
        !isDefinedBefore(projection.getWeight(), point))
      return nullptr;
    elementType = type.getElementType();
    rows += type.getDimSize(0);
    cols = type.getDimSize(1);
    weights.push_back(projection.getWeight());
  }
  builder.setInsertionPoint(point);
  auto concatType = RankedTensorType::get({rows, cols}, elementType);
  Value weight = ConcatOp::create(builder, loc, concatType, weights,
                                  builder.getI64IntegerAttr(0));
  auto firstResult =
      cast<RankedTensorType>(LinearOp(projections[0]).getResult().getType());
  auto resultType = RankedTensorType::get({firstResult.getDimSize(0), rows},
                                          firstResult.getElementType());
  return LinearOp::create(builder, loc, resultType, input, weight);
}
