//===- EngineWriter.cpp - sm_90a engines from kernel graphs ---------------===//

#include "kiln/Target/Cuda/EngineWriter.h"
#include "kiln/Conversion/KilnToGPU/GpuKernels.h"
#include "kiln/Conversion/KilnToGPU/LaunchAttrs.h"
#include "kiln/Target/EnginePlan.h"
#include "kiln/runtime/EngineFile.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/Support/Format.h"

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

static llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

llvm::Expected<CudaEngine>
mlir::kiln::cuda::buildCudaEngine(ModuleOp module, StringRef workDir) {
  // The GPU functions and their launch descriptions, generated here unless
  // kiln-convert-kernels-to-gpu ran already.
  auto kernels = module.lookupSymbol<gpu::GPUModuleOp>(kKernelModuleName);
  if (!kernels) {
    if (failed(convertKernelsToGpu(module)))
      return makeError("sm_90a code generation failed");
    kernels = module.lookupSymbol<gpu::GPUModuleOp>(kKernelModuleName);
  }
  CudaEngine engine;
  llvm::StringMap<std::vector<GpuStep>> stepsOf;
  for (auto fn : module.getOps<func::FuncOp>()) {
    Attribute attr = fn->getAttr(kGpuStepsAttrName);
    if (!attr)
      continue;
    FailureOr<std::vector<GpuStep>> steps =
        decodeGpuSteps(attr, [&] { return fn.emitError(); });
    if (failed(steps))
      return makeError("@" + fn.getSymName() +
                       ": malformed GPU launch description");
    for (const GpuStep &step : *steps)
      for (const GpuLaunch &l : step.variants)
        if (!l.function.empty())
          engine.launchShapes[l.function] = {l.blockThreads,
                                             l.dynamicSharedBytes};
    stepsOf[fn.getSymName()] = std::move(*steps);
  }

  llvm::Expected<CompiledModule> code = compileGpuModule(kernels, workDir);
  if (!code)
    return code.takeError();
  engine.code = std::move(*code);

  // Call results are stored as kiln-convert-kernels-to-gpu decided.
  auto storage = [&](Value v) -> Type {
    auto result = dyn_cast<OpResult>(v);
    if (!result)
      return nullptr;
    auto types = result.getOwner()->getAttrOfType<ArrayAttr>(kStorageAttrName);
    if (!types || result.getResultNumber() >= types.size())
      return nullptr;
    auto type = dyn_cast<TypeAttr>(types[result.getResultNumber()]);
    return type ? type.getValue() : nullptr;
  };
  auto decorate = [&](Operation *op,
                      ::kiln::plan::Launch &launch) -> llvm::Error {
    auto call = dyn_cast<func::CallOp>(op);
    if (!call) {
      // A token exchange: its row gather-sum.
      Attribute attr = op->getAttr(kGpuStepsAttrName);
      FailureOr<std::vector<GpuStep>> steps =
          attr ? decodeGpuSteps(attr, [&] { return op->emitError(); })
               : FailureOr<std::vector<GpuStep>>(failure());
      if (failed(steps) || steps->size() != 1 ||
          (*steps)[0].variants.size() != 1)
        return makeError(op->getName().getStringRef() +
                         " has no GPU row gather (run "
                         "kiln-convert-kernels-to-gpu)");
      const GpuLaunch &g = (*steps)[0].variants[0];
      engine.launchShapes[g.function] = {g.blockThreads, 0};
      launch.gpu = std::move(*steps);
      return llvm::Error::success();
    }
    auto it = stepsOf.find(call.getCallee());
    if (it == stepsOf.end())
      return makeError("no GPU code for @" + call.getCallee());
    launch.gpu = it->second;
    return llvm::Error::success();
  };
  llvm::Expected<::kiln::plan::Plan> plan =
      buildEnginePlan(module, storage, decorate);
  if (!plan)
    return plan.takeError();
  for (auto [attrName, fn] : {std::pair{kArgmaxAttrName, &plan->argmax},
                              std::pair{kSampleAttrName, &plan->sample}}) {
    Attribute attr = kernels->getAttr(attrName);
    if (!attr)
      continue;
    FailureOr<GpuLaunch> launch =
        decodeGpuLaunch(attr, [&] { return kernels.emitError(); });
    if (failed(launch))
      return makeError("malformed " + attrName + " launch description");
    *fn = {launch->function, launch->blockThreads};
    engine.launchShapes[launch->function] = {launch->blockThreads, 0};
  }
  engine.plan = std::move(*plan);
  return engine;
}

llvm::Error mlir::kiln::cuda::writeCudaEngine(const CudaEngine &engine,
                                              StringRef path) {
  ::kiln::EngineFile file;
  file.target = ::kiln::kTargetSm90a;
  file.compilerVersion = ::kiln::compilerVersion();
  file.sections[::kiln::SectionKind::Plan] =
      ::kiln::plan::writePlan(engine.plan);
  file.sections[::kiln::SectionKind::CudaPtx] = engine.code.ptx;
  if (!engine.code.cubin.empty())
    file.sections[::kiln::SectionKind::CudaCubin] = engine.code.cubin;
  std::string error;
  if (!file.write(path.str(), error))
    return makeError(error);
  return llvm::Error::success();
}

void mlir::kiln::cuda::printKernelResources(const CudaEngine &engine,
                                            llvm::raw_ostream &os) {
  if (engine.code.cubin.empty()) {
    os << "no ptxas: PTX only, no register report\n";
    return;
  }
  os << llvm::format("%-34s %5s %6s %6s %8s %8s\n", "function", "block", "regs",
                     "spill", "smem", "dynsmem");
  int64_t spilling = 0, maxRegisters = 0;
  for (const auto &[name, shape] : engine.launchShapes) {
    auto it = engine.code.resources.find(name);
    FunctionResources r =
        it == engine.code.resources.end() ? FunctionResources{} : it->second;
    spilling += (r.spillStores + r.spillLoads) > 0;
    maxRegisters = std::max(maxRegisters, r.registers);
    os << llvm::format("%-34s %5lld %6lld %6lld %8lld %8lld\n", name.c_str(),
                       (long long)shape.first, (long long)r.registers,
                       (long long)(r.spillStores + r.spillLoads),
                       (long long)r.staticSharedBytes, (long long)shape.second);
  }
  os << engine.launchShapes.size() << " GPU functions, " << spilling
     << " with spills, at most " << maxRegisters << " registers\n";
}
