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

#include <string>

namespace mlir::kiln {

struct HostEngineOptions {
  /// The x86-64 level the kernels may use (x86-64-v2: SSE4.2, x86-64-v3:
  /// AVX2 + FMA, x86-64-v4: AVX-512), or "native": the highest level of the
  /// compiling machine. The engine records it and refuses to load on a CPU
  /// without it.
  std::string cpu = "native";
  /// Partitioned loops run on libomp's threads (when libomp is installed).
  bool threads = true;
};

/// The x86-64 level `cpu` names ("native" resolved), or an error.
llvm::Expected<std::string> resolveHostCpuLevel(llvm::StringRef cpu);

/// Writes the host engine of `module` (after kiln-graph-pipeline) to `path`.
/// `workDir` receives the intermediate object and shared object.
llvm::Error writeHostEngine(ModuleOp module, llvm::StringRef path,
                            llvm::StringRef workDir,
                            const HostEngineOptions &options = {});

} // namespace mlir::kiln

#endif // KILN_TARGET_HOST_ENGINEWRITER_H
