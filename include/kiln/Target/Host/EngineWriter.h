//===- EngineWriter.h - Host engines from kernel graphs ---------*- C++ -*-===//
//
// Turns the output of the graph pipeline (a graph of func.calls to kernel
// functions) into an engine file for target "host-x86_64": the plan and the
// kernels compiled into one shared object (docs/engine-format.md).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TARGET_HOST_ENGINEWRITER_H
#define KILN_TARGET_HOST_ENGINEWRITER_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/Error.h"

namespace mlir::kiln {

/// Writes the host engine of `module` (after kiln-graph-pipeline) to `path`.
/// `workDir` receives the intermediate object and shared object.
llvm::Error writeHostEngine(ModuleOp module, llvm::StringRef path,
                            llvm::StringRef workDir);

} // namespace mlir::kiln

#endif // KILN_TARGET_HOST_ENGINEWRITER_H
