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
#include "llvm/TargetParser/Host.h"

using namespace mlir;
using namespace mlir::kiln;

static llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

llvm::Expected<std::string>
mlir::kiln::resolveHostCpuLevel(llvm::StringRef cpu) {
  if (cpu == "x86-64-v2" || cpu == "x86-64-v3" || cpu == "x86-64-v4")
    return cpu.str();
  if (cpu != "native")
    return makeError("unknown --cpu '" + cpu +
                     "' (available: x86-64-v2, x86-64-v3, x86-64-v4, native)");
  llvm::StringMap<bool> has = llvm::sys::getHostCPUFeatures();
  auto all = [&](std::initializer_list<const char *> names) {
    for (const char *name : names)
      if (!has.lookup(name))
        return false;
    return true;
  };
  if (all({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2",
           "fma", "bmi2"}))
    return std::string("x86-64-v4");
  if (all({"avx2", "fma", "bmi", "bmi2", "f16c", "movbe"}))
    return std::string("x86-64-v3");
  return std::string("x86-64-v2");
}

/// Weights the lowered kernels read in panels (`kiln.host_panel` on their
/// arguments) get the panel width in the plan, so the runtime lays them
/// out at load.
static llvm::Error notePanels(ModuleOp kernels, ::kiln::plan::Plan &plan) {
  for (auto f : kernels.getOps<func::FuncOp>())
    for (unsigned i = 0; i < f.getNumArguments(); ++i) {
      auto columns = f.getArgAttrOfType<IntegerAttr>(
          i, KilnDialect::getHostPanelAttrName());
      if (!columns)
        continue;
      for (const ::kiln::plan::Launch &l : plan.launches) {
        if (l.kernel != f.getSymName() || i >= l.args.size())
          continue;
        ::kiln::plan::Value &v = plan.values[l.args[i]];
        if (v.kind != ::kiln::plan::ValueKind::Weight ||
            (v.panel && v.panel != columns.getInt()))
          return makeError("kernel @" + f.getSymName().str() + " argument " +
                           std::to_string(i) +
                           ": only a weight read one way can be laid out in "
                           "panels");
        v.panel = columns.getInt();
      }
    }
  return llvm::Error::success();
}

llvm::Error
mlir::kiln::writeHostEngine(ModuleOp module, llvm::StringRef path,
                            llvm::StringRef workDir,
                            const HostEngineOptions &engineOptions) {
  llvm::Expected<::kiln::plan::Plan> plan = buildEnginePlan(module);
  if (!plan)
    return plan.takeError();
  llvm::Expected<std::string> level = resolveHostCpuLevel(engineOptions.cpu);
  if (!level)
    return level.takeError();
  plan->hostCpu = *level;
  std::optional<std::string> openmp =
      engineOptions.threads ? findOpenMPRuntime() : std::nullopt;

  // Kernels: clone, lower to loops and LLVM, compile, link.
  OwningOpRef<ModuleOp> kernels = ModuleOp::create(module.getLoc());
  for (auto f : module.getOps<func::FuncOp>())
    if (f->hasAttr(KilnDialect::getKernelAttrName()))
      kernels->push_back(f->clone());
  PassManager pm(module.getContext());
  ConvertKilnToLoopsOptions lowering;
  lowering.vectorBits = *level == "x86-64-v4"   ? 512
                        : *level == "x86-64-v3" ? 256
                                                : 128;
  lowering.parallel = openmp.has_value();
  pm.addPass(createConvertKilnToLoops(lowering));
  if (failed(pm.run(*kernels)))
    return makeError("lowering the kernels to host loops failed");
  if (llvm::Error e = notePanels(*kernels, *plan))
    return e;
  if (failed(lowerToLLVMDialect(*kernels)))
    return makeError("lowering the kernels to the LLVM dialect failed");
  llvm::SmallString<256> object(workDir), library(workDir);
  llvm::sys::path::append(object, "kernels.o");
  llvm::sys::path::append(library, "kernels.so");
  HostCompileOptions options;
  options.cpu = *level;
  if (llvm::Error e = emitHostObject(*kernels, object, options))
    return e;
  if (llvm::Error e =
          linkSharedObject({std::string(object)}, library, openmp.value_or("")))
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
