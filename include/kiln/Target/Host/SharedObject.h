//===- SharedObject.h - LLVM-dialect modules to host shared objects -*- C++
//-*-===//
//
// The last step of host code generation: an MLIR module already lowered to
// the LLVM dialect becomes LLVM IR, is optimised and compiled for the host
// CPU as position-independent code, and is linked into a shared object that
// the MLIR-free runtime dlopen()s. Functions marked `llvm.emit_c_interface`
// are reachable as `_mlir_ciface_<name>` taking memref descriptors.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TARGET_HOST_SHAREDOBJECT_H
#define KILN_TARGET_HOST_SHAREDOBJECT_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/Error.h"

#include <optional>
#include <string>

namespace mlir::kiln {

struct HostCompileOptions {
  /// LLVM optimisation level, 0-3.
  unsigned optLevel = 3;
  /// Target CPU; empty = the machine compiling (engines are then tied to
  /// it, which the engine header records).
  std::string cpu;
};

/// Lowers `module` (func, arith, math, scf, cf, memref, vector and index
/// dialects on memrefs) to the LLVM dialect, in place.
LogicalResult lowerToLLVMDialect(ModuleOp module);

/// Translates an LLVM-dialect `module` and writes an object file for the
/// host to `objectPath`.
llvm::Error emitHostObject(ModuleOp module, llvm::StringRef objectPath,
                           const HostCompileOptions &options = {});

/// The folder holding LLVM's OpenMP runtime (libomp.so), if installed.
std::optional<std::string> findOpenMPRuntime();

/// Links object files into the shared object `outputPath` with the system
/// C compiler driver (clang-22, clang, cc or gcc, the first found); with
/// `openmpDir`, against the libomp found there.
llvm::Error linkSharedObject(llvm::ArrayRef<std::string> objects,
                             llvm::StringRef outputPath,
                             llvm::StringRef openmpDir = {});

} // namespace mlir::kiln

#endif // KILN_TARGET_HOST_SHAREDOBJECT_H
