//===- SharedObject.cpp - LLVM-dialect modules to host shared objects
//------===//
//
// Host objects are compiled in-process through LLVM's TargetMachine (PIC,
// the native target); only the final link runs an external driver, because
// Debian's LLVM packages do not ship lld as a library.
//
//===----------------------------------------------------------------------===//

#include "kiln/Target/Host/SharedObject.h"
#include "dialects/kiln/KilnDialect.h"

#include "mlir/Conversion/ArithToLLVM/ArithToLLVM.h"
#include "mlir/Conversion/ControlFlowToLLVM/ControlFlowToLLVM.h"
#include "mlir/Conversion/FuncToLLVM/ConvertFuncToLLVMPass.h"
#include "mlir/Conversion/IndexToLLVM/IndexToLLVM.h"
#include "mlir/Conversion/MathToLLVM/MathToLLVM.h"
#include "mlir/Conversion/MemRefToLLVM/MemRefToLLVM.h"
#include "mlir/Conversion/OpenMPToLLVM/ConvertOpenMPToLLVM.h"
#include "mlir/Conversion/ReconcileUnrealizedCasts/ReconcileUnrealizedCasts.h"
#include "mlir/Conversion/SCFToControlFlow/SCFToControlFlow.h"
#include "mlir/Conversion/SCFToOpenMP/SCFToOpenMP.h"
#include "mlir/Conversion/VectorToLLVM/ConvertVectorToLLVMPass.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Math/Transforms/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/OpenMP/OpenMPToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Export.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

#include "llvm/IR/LegacyPassManager.h"
#include "llvm/IR/Module.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Passes/PassBuilder.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/TargetParser/Host.h"
#include "llvm/TargetParser/SubtargetFeature.h"

using namespace mlir;

static llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

LogicalResult mlir::kiln::lowerToLLVMDialect(ModuleOp module) {
  // Panel layouts are for the engine's plan (read before this); the
  // arguments they describe do not survive as memrefs.
  for (auto f : module.getOps<func::FuncOp>())
    for (unsigned i = 0; i < f.getNumArguments(); ++i)
      f.removeArgAttr(i, KilnDialect::getHostPanelAttrName());
  // LLVM has no vector exp for x86: it would call expf once per lane. The
  // vector kernels' exps (SwiGLU, softmax rows) become MLIR's polynomial
  // approximation (a few ulp of f32, far inside the 1e-5 the kernels are
  // held to); scalar exps keep libm's.
  SmallVector<Operation *> vectorExps;
  module.walk([&](math::ExpOp exp) {
    if (isa<VectorType>(exp.getType()))
      vectorExps.push_back(exp);
  });
  if (!vectorExps.empty()) {
    RewritePatternSet patterns(module.getContext());
    populateMathPolynomialApproximationPatterns(
        patterns, [](StringRef name) { return name == "exp"; });
    if (failed(applyOpPatternsGreedily(vectorExps, std::move(patterns))))
      return failure();
  }
  // scf.parallel loops (the partitioned loops of vector kernels) become
  // OpenMP worksharing loops: libomp's thread pool runs them.
  PassManager openmp(module.getContext());
  openmp.addPass(createConvertSCFToOpenMPPass());
  if (failed(openmp.run(module)))
    return failure();
  // The conversion wraps each loop body in a memref.alloca_scope, whose
  // region must stay one block; the bodies allocate nothing on the stack,
  // so the scopes are dropped before the loops inside become branches.
  module.walk([](memref::AllocaScopeOp scope) {
    if (scope->getNumResults() != 0 ||
        scope.getBodyRegion()
            .walk([](memref::AllocaOp) { return WalkResult::interrupt(); })
            .wasInterrupted())
      return;
    Block &body = scope.getBodyRegion().front();
    body.getTerminator()->erase();
    scope->getBlock()->getOperations().splice(Block::iterator(scope),
                                              body.getOperations());
    scope->erase();
  });
  PassManager pm(module.getContext());
  pm.addPass(createSCFToControlFlowPass());
  pm.addPass(createConvertVectorToLLVMPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createFinalizeMemRefToLLVMConversionPass());
  pm.addPass(createConvertMathToLLVMPass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertIndexToLLVMPass());
  pm.addPass(createConvertControlFlowToLLVMPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(createConvertOpenMPToLLVMPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
  return pm.run(module);
}

llvm::Error mlir::kiln::emitHostObject(ModuleOp module,
                                       llvm::StringRef objectPath,
                                       const HostCompileOptions &options) {
  static bool initialized = [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
    return true;
  }();
  (void)initialized;

  DialectRegistry registry;
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  registerOpenMPDialectTranslation(registry);
  module.getContext()->appendDialectRegistry(registry);

  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> llvmModule =
      translateModuleToLLVMIR(module, llvmContext, "kiln_kernels");
  if (!llvmModule)
    return makeError("cannot translate the kernels to LLVM IR");

  llvm::Triple triple(llvm::sys::getProcessTriple());
  std::string error;
  const llvm::Target *target =
      llvm::TargetRegistry::lookupTarget(triple, error);
  if (!target)
    return makeError("no LLVM target for " + triple.str() + ": " + error);
  std::string cpu =
      options.cpu.empty() ? llvm::sys::getHostCPUName().str() : options.cpu;
  llvm::SubtargetFeatures features;
  if (options.cpu.empty())
    for (const auto &[name, enabled] : llvm::sys::getHostCPUFeatures())
      features.AddFeature(name, enabled);
  llvm::TargetOptions targetOptions;
  auto level = options.optLevel >= 3   ? llvm::CodeGenOptLevel::Aggressive
               : options.optLevel == 2 ? llvm::CodeGenOptLevel::Default
               : options.optLevel == 1 ? llvm::CodeGenOptLevel::Less
                                       : llvm::CodeGenOptLevel::None;
  std::unique_ptr<llvm::TargetMachine> machine(target->createTargetMachine(
      triple, cpu, features.getString(), targetOptions, llvm::Reloc::PIC_,
      std::nullopt, level));
  if (!machine)
    return makeError("cannot create a target machine for " + triple.str());
  llvmModule->setDataLayout(machine->createDataLayout());
  llvmModule->setTargetTriple(triple);

  // The middle end: the standard pipeline at the requested level.
  {
    llvm::LoopAnalysisManager lam;
    llvm::FunctionAnalysisManager fam;
    llvm::CGSCCAnalysisManager cam;
    llvm::ModuleAnalysisManager mam;
    llvm::PassBuilder builder(machine.get());
    builder.registerModuleAnalyses(mam);
    builder.registerCGSCCAnalyses(cam);
    builder.registerFunctionAnalyses(fam);
    builder.registerLoopAnalyses(lam);
    builder.crossRegisterProxies(lam, fam, cam, mam);
    llvm::OptimizationLevel opt =
        options.optLevel >= 3   ? llvm::OptimizationLevel::O3
        : options.optLevel == 2 ? llvm::OptimizationLevel::O2
        : options.optLevel == 1 ? llvm::OptimizationLevel::O1
                                : llvm::OptimizationLevel::O0;
    llvm::ModulePassManager mpm =
        opt == llvm::OptimizationLevel::O0
            ? builder.buildO0DefaultPipeline(opt)
            : builder.buildPerModuleDefaultPipeline(opt);
    mpm.run(*llvmModule, mam);
  }

  std::error_code ec;
  llvm::ToolOutputFile out(objectPath, ec, llvm::sys::fs::OF_None);
  if (ec)
    return makeError(objectPath + ": cannot create: " + ec.message());
  llvm::legacy::PassManager codegen;
  if (machine->addPassesToEmitFile(codegen, out.os(), nullptr,
                                   llvm::CodeGenFileType::ObjectFile))
    return makeError("the target cannot emit object files");
  codegen.run(*llvmModule);
  out.keep();
  return llvm::Error::success();
}

std::optional<std::string> mlir::kiln::findOpenMPRuntime() {
  for (const char *dir : {KILN_LLVM_LIBRARY_DIR, "/usr/lib/llvm-22/lib"}) {
    llvm::SmallString<256> path(dir);
    llvm::sys::path::append(path, "libomp.so");
    if (llvm::sys::fs::exists(path))
      return std::string(dir);
  }
  return std::nullopt;
}

llvm::Error mlir::kiln::linkSharedObject(llvm::ArrayRef<std::string> objects,
                                         llvm::StringRef outputPath,
                                         llvm::StringRef openmpDir) {
  std::string driver;
  for (const char *name : {"clang-22", "clang", "cc", "gcc"})
    if (llvm::ErrorOr<std::string> path = llvm::sys::findProgramByName(name)) {
      driver = *path;
      break;
    }
  if (driver.empty())
    return makeError("no C compiler driver (clang-22, clang, cc or gcc) found "
                     "to link " +
                     outputPath);
  SmallVector<llvm::StringRef> args = {driver, "-shared", "-o", outputPath};
  for (const std::string &object : objects)
    args.push_back(object);
  args.push_back("-lm");
  std::string libraryDir, runPath;
  if (!openmpDir.empty()) {
    // The kernels find libomp where it was at compile time: Debian puts
    // LLVM's copy outside the loader's default path.
    libraryDir = ("-L" + openmpDir).str();
    runPath = ("-Wl,-rpath," + openmpDir).str();
    args.append({libraryDir, runPath, "-lomp"});
  }
  std::string message;
  int rc =
      llvm::sys::ExecuteAndWait(driver, args, std::nullopt, {}, 0, 0, &message);
  if (rc != 0)
    return makeError("linking " + outputPath + " with " + driver + " failed" +
                     (message.empty() ? "" : ": " + message) + " (exit code " +
                     llvm::Twine(rc) + ")");
  return llvm::Error::success();
}
