//===- EngineWriter.h - Host engines from kernel graphs ---------*- C++ -*-===//
//
// Turns the output of the graph pipeline (a graph of func.calls to kernel
// functions) into an engine file for target "host": the plan as JSON and the
// kernels compiled into one shared object (docs/engine-format.md).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TARGET_HOST_ENGINEWRITER_H
#define KILN_TARGET_HOST_ENGINEWRITER_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/JSON.h"

namespace mlir::kiln {

/// The engine target name of host engines.
constexpr const char *kHostTarget = "host-x86_64";

/// The target-independent plan of an engine (docs/engine-format.md): values,
/// the activation arena, launches, KV slots. `storageOf` may override the
/// element type a value is stored in (null: its tensor type);
/// `decorateLaunch` adds target fields to each launch.
llvm::Expected<llvm::json::Object>
buildEnginePlan(ModuleOp module, function_ref<Type(Value)> storageOf = nullptr,
                function_ref<llvm::Error(func::CallOp, llvm::json::Object &)>
                    decorateLaunch = nullptr);

/// Writes the host engine of `module` (after kiln-graph-pipeline) to `path`.
/// `workDir` receives the intermediate object and shared object.
llvm::Error writeHostEngine(ModuleOp module, llvm::StringRef path,
                            llvm::StringRef workDir);

} // namespace mlir::kiln

#endif // KILN_TARGET_HOST_ENGINEWRITER_H
