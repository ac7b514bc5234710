//===- EngineWriter.cpp - sm_90a engines from kernel graphs ---------------===//

#include "kiln/Target/Cuda/EngineWriter.h"
#include "kiln/Target/Cuda/GpuKernels.h"
#include "kiln/Target/Host/EngineWriter.h"
#include "kiln/runtime/EngineFile.h"

#include "mlir/IR/SymbolTable.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/JSON.h"

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;
namespace json = llvm::json;

static llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

static json::Object gridJson(const GridExtent &g) {
  json::Object o{{"rows_of", g.rowsOf},
                 {"per_row", g.perRow},
                 {"constant", g.constant},
                 {"divisor", g.divisor}};
  if (g.perSm)
    o["per_sm"] = g.perSm;
  return o;
}

static json::Object paramJson(const GpuParam &p) {
  switch (p.kind) {
  case GpuParam::Kind::Memref:
    return json::Object{{"kind", "memref"}, {"operand", p.operand}};
  case GpuParam::Kind::TensorMap:
    return json::Object{{"kind", "tensor_map"},
                        {"operand", p.operand},
                        {"box", p.box3 ? json::Array{p.boxCols, p.boxRows, 1}
                                       : json::Array{p.boxCols, p.boxRows}},
                        {"swizzle", 128},
                        {"pool", p.pool}};
  case GpuParam::Kind::KeyPositions:
    return json::Object{{"kind", "key_positions"}, {"operand", p.operand}};
  case GpuParam::Kind::KvPool:
    return json::Object{{"kind", "kv_pool"}, {"operand", p.operand}};
  case GpuParam::Kind::KeyCount:
    return json::Object{{"kind", "key_count"}, {"operand", p.operand}};
  case GpuParam::Kind::Scratch:
    return json::Object{
        {"kind", "scratch"}, {"operand", p.operand}, {"per_row", p.perRow}};
  }
  llvm_unreachable("unknown parameter kind");
}

llvm::Expected<CudaEngine>
mlir::kiln::cuda::buildCudaEngine(ModuleOp module, StringRef workDir) {
  FailureOr<GpuProgram> program = generateGpuKernels(module);
  if (failed(program))
    return makeError("sm_90a code generation failed");
  CudaEngine engine;
  llvm::StringMap<const GpuKernel *> byName;
  for (const GpuKernel &k : program->kernels) {
    byName[k.name] = &k;
    for (const GpuStep &step : k.steps)
      for (const GpuLaunch &l : step.variants)
        if (!l.function.empty())
          engine.launchShapes[l.function] = {l.blockThreads,
                                             l.dynamicSharedBytes};
  }

  llvm::Expected<CompiledModule> code =
      compileGpuModule(*module.getContext(), program->moduleText, workDir);
  if (!code)
    return code.takeError();
  engine.code = std::move(*code);

  auto storage = [&](Value v) { return program->storage.lookup(v); };
  auto decorate = [&](func::CallOp call, json::Object &launch) -> llvm::Error {
    const GpuKernel *kernel = byName.lookup(call.getCallee());
    if (!kernel)
      return makeError("no GPU code for @" + call.getCallee());
    json::Array steps;
    for (const GpuStep &step : kernel->steps) {
      json::Array variants;
      for (const GpuLaunch &l : step.variants) {
        json::Array params;
        for (const GpuParam &p : l.params)
          params.push_back(paramJson(p));
        variants.push_back(json::Object{
            {"function", l.function},
            {"block", l.blockThreads},
            {"shared_bytes", l.dynamicSharedBytes},
            {"grid", json::Array{gridJson(l.grid[0]), gridJson(l.grid[1]),
                                 gridJson(l.grid[2])}},
            {"params", std::move(params)},
            {"select_operand", l.selectOperand},
            {"max_rows", l.maxRows}});
      }
      steps.push_back(std::move(variants));
    }
    launch["gpu"] = std::move(steps);
    return llvm::Error::success();
  };
  llvm::Expected<json::Object> plan =
      buildEnginePlan(module, storage, decorate);
  if (!plan)
    return plan.takeError();
  for (auto [key, launch] : {std::pair{"argmax", &program->argmax},
                             std::pair{"sample", &program->sample}}) {
    if (launch->function.empty())
      continue;
    (*plan)[key] = json::Object{{"function", launch->function},
                                {"block", launch->blockThreads}};
    engine.launchShapes[launch->function] = {launch->blockThreads, 0};
  }
  llvm::raw_string_ostream os(engine.plan);
  os << json::Value(std::move(*plan));
  return engine;
}

llvm::Error mlir::kiln::cuda::writeCudaEngine(const CudaEngine &engine,
                                              StringRef path) {
  ::kiln::EngineFile file;
  file.target = kCudaTarget;
  file.compilerVersion = "kiln 0.1.0";
  file.sections[::kiln::SectionKind::Plan] = engine.plan;
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
