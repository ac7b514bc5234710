//===- InitAll.h - Register everything Kiln provides ------------*- C++ -*-===//
//
// One place that registers the dialects every Kiln tool and test needs.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_INITALL_H
#define KILN_INITALL_H

#include "dialects/kiln/KilnDialect.h"
#include "kiln/Transforms/Passes.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/DialectRegistry.h"

namespace mlir::kiln {

/// Registers the kiln dialect and the upstream dialects kiln graphs use.
inline void registerAllKilnDialects(DialectRegistry &registry) {
  registry.insert<KilnDialect, func::FuncDialect>();
}

/// Registers every Kiln pass with the global pass registry.
inline void registerAllKilnPasses() { registerKilnPasses(); }

} // namespace mlir::kiln

#endif // KILN_INITALL_H
