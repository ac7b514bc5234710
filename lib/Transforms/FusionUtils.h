//===- FusionUtils.h - Helpers shared by the fusion passes ------*- C++ -*-===//
//
// Building blocks for passes that merge several projections into one GEMM.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_LIB_TRANSFORMS_FUSIONUTILS_H
#define KILN_LIB_TRANSFORMS_FUSIONUTILS_H

#include "dialects/kiln/KilnOps.h"

namespace mlir::kiln {

/// True when `value` is available at `point`: a block argument of the
/// enclosing block or a result of an op before `point` in the same block.
bool isDefinedBefore(Value value, Operation *point);

/// Builds one `kiln.linear` of `input` by the row-wise concatenation of the
/// weights of `projections` (which must all read `input`) and returns its
/// result ([T, sum of output widths]). Returns null, building nothing, when
/// the weights differ in element type or are not available at `point`.
Value buildConcatenatedLinear(OpBuilder &builder, Location loc, Value input,
                              ArrayRef<LinearOp> projections, Operation *point);

} // namespace mlir::kiln

#endif // KILN_LIB_TRANSFORMS_FUSIONUTILS_H
