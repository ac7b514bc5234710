//===- EngineWriter.h - Host engines from kernel graphs ---------*- C++ -*-===//
//
// Turns the output of the graph pipeline (a graph of func.calls to kernel
// functions) into an engine file for target "host": the plan as JSON and the
// kernels compiled into one shared object (docs/engine-format.md).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TARGET_HOST_ENGINEWRITER_H
#define KILN_TARGET_HOST_ENGINEWRITER_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/Error.h"

namespace mlir::kiln {

/// The engine target name of host engines.
constexpr const char *kHostTarget = "host-x86_64";

/// Writes the host engine of `module` (after kiln-graph-pipeline) to `path`.
/// `workDir` receives the intermediate object and shared object.
llvm::Error writeHostEngine(ModuleOp module, llvm::StringRef path,
                            llvm::StringRef workDir);

} // namespace mlir::kiln

#endif // KILN_TARGET_HOST_ENGINEWRITER_H
