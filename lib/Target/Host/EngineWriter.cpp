//===- EngineWriter.cpp - Host engines from kernel graphs -----------------===//
//
// The target-neutral plan (kiln/Target/EnginePlan.h) plus the kernels,
// lowered to loops and compiled into one shared object.
//
//===----------------------------------------------------------------------===//

#include "kiln/Target/Host/EngineWriter.h"
#include "dialects/kiln/KilnOps.h"
#include "kiln/Conversion/Passes.h"
#include "kiln/Target/EnginePlan.h"
#include "kiln/Target/Host/SharedObject.h"
#include "kiln/runtime/EngineFile.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

using namespace mlir;
using namespace mlir::kiln;

static llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

llvm::Error mlir::kiln::writeHostEngine(ModuleOp module, llvm::StringRef path,
                                        llvm::StringRef workDir) {
  llvm::Expected<::kiln::plan::Plan> plan = buildEnginePlan(module);
  if (!plan)
    return plan.takeError();

  // Kernels: clone, lower to loops and LLVM, compile, link.
  OwningOpRef<ModuleOp> kernels = ModuleOp::create(module.getLoc());
  for (auto f : module.getOps<func::FuncOp>())
    if (f->hasAttr(KilnDialect::getKernelAttrName()))
      kernels->push_back(f->clone());
  PassManager pm(module.getContext());
  pm.addPass(createConvertKilnToLoops());
  if (failed(pm.run(*kernels)))
    return makeError("lowering the kernels to host loops failed");
  if (failed(lowerToLLVMDialect(*kernels)))
    return makeError("lowering the kernels to the LLVM dialect failed");
  llvm::SmallString<256> object(workDir), library(workDir);
  llvm::sys::path::append(object, "kernels.o");
  llvm::sys::path::append(library, "kernels.so");
  HostCompileOptions options;
  options.cpu = "x86-64-v2"; // engines must run on other x86-64 machines too
  if (llvm::Error e = emitHostObject(*kernels, object, options))
    return e;
  if (llvm::Error e = linkSharedObject({std::string(object)}, library))
    return e;
  auto shared = llvm::MemoryBuffer::getFile(library, /*IsText=*/false);
  if (!shared)
    return makeError(library + ": " + shared.getError().message());

  ::kiln::EngineFile engine;
  engine.target = ::kiln::kTargetHost;
  engine.compilerVersion = ::kiln::compilerVersion();
  engine.sections[::kiln::SectionKind::Plan] = ::kiln::plan::writePlan(*plan);
  engine.sections[::kiln::SectionKind::HostKernels] =
      (*shared)->getBuffer().str();
  std::string error;
  if (!engine.write(path.str(), error))
    return makeError(error);
  return llvm::Error::success();
}
