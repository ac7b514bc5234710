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
} // namespace kiln
} // namespace mlir

#endif // KILN_DIALECTS_KILN_KILNOPS_H
