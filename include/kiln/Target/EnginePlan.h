//===- EnginePlan.h - Engine plans from kernel graphs -----------*- C++ -*-===//
//
// The target-independent half of every engine: the plan (values, activation
// arena, launches, KV slots; kiln/runtime/EnginePlan.h) built from the output
// of the graph pipeline, a graph of func.calls to kernel functions. Each
// target's engine writer adds its own launch fields and code sections.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TARGET_ENGINEPLAN_H
#define KILN_TARGET_ENGINEPLAN_H

#include "kiln/runtime/EnginePlan.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/Error.h"

namespace mlir::kiln {

/// The plan element type of an MLIR type; fails on types plans cannot hold.
FailureOr<::kiln::plan::DType> planDType(Type type);

/// Builds the plan of `module` (after kiln-graph-pipeline). `storageOf` may
/// override the element type a value is stored in (null: its tensor type);
/// `decorateLaunch` adds target fields to the launch of each kernel call
/// and token exchange (the op it comes from).
llvm::Expected<::kiln::plan::Plan>
buildEnginePlan(ModuleOp module, function_ref<Type(Value)> storageOf = nullptr,
                function_ref<llvm::Error(Operation *, ::kiln::plan::Launch &)>
                    decorateLaunch = nullptr);

} // namespace mlir::kiln

#endif // KILN_TARGET_ENGINEPLAN_H
