//===- ConvertKilnToGPU.cpp - sm_90a GPU functions for kernel functions ---===//
//
// The pass around the per-kind generators (GpuKernels.cpp and the
// *Kernel.cpp files): their gpu.module joins the kernel graph, each GPU
// function located at the kernel function it implements, and the launch
// descriptions, storage types and next-token functions are recorded as
// attributes (LaunchAttrs.h), so the engine writer needs nothing but the IR.
//
//===----------------------------------------------------------------------===//

#include "Generators.h"
#include "dialects/kiln/KilnDialect.h"
#include "kiln/Conversion/KilnToGPU/GpuKernels.h"
#include "kiln/Conversion/KilnToGPU/LaunchAttrs.h"
#include "kiln/Conversion/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/IR/SymbolTable.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_CONVERTKILNTOGPU
#include "kiln/Conversion/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

/// Gives every op of `fn` the location `loc`.
static void relocate(Operation *fn, Location loc) {
  fn->walk([&](Operation *op) {
    op->setLoc(loc);
    for (Region &region : op->getRegions())
      for (Block &block : region)
        for (BlockArgument arg : block.getArguments())
          arg.setLoc(loc);
  });
}

LogicalResult mlir::kiln::convertKernelsToGpu(ModuleOp module) {
  MLIRContext *context = module.getContext();
  if (SymbolTable::lookupSymbolIn(module, kKernelModuleName))
    return module.emitError()
           << "already holds gpu.module @" << kKernelModuleName
           << " (kiln-convert-kernels-to-gpu ran)";
  // What the generated IR uses (the pass declares the same dialects; a
  // driver calling this directly may not have loaded them).
  context->loadDialect<arith::ArithDialect, gpu::GPUDialect, LLVM::LLVMDialect,
                       math::MathDialect, memref::MemRefDialect,
                       nvgpu::NVGPUDialect, NVVM::NVVMDialect, scf::SCFDialect,
                       vector::VectorDialect>();
  FailureOr<GpuProgram> program = generateGpuKernels(module);
  if (failed(program))
    return failure();

  gpu::GPUModuleOp gpuModule = program->gpuModule;
  gpuModule->remove();
  module.getBody()->push_back(gpuModule);
  if (program->vocab > 0) {
    program->argmax = buildArgmax(gpuModule, module.getLoc(), program->vocab);
    program->sample = buildSampler(gpuModule, module.getLoc(), program->vocab);
  }
  module->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                  UnitAttr::get(context));

  // Each GPU function is located at its kernel function (and so at the
  // model ops it implements); the next-token functions at the graph.
  for (const GpuKernel &kernel : program->kernels) {
    auto fn = module.lookupSymbol<func::FuncOp>(kernel.name);
    if (!fn)
      return module.emitError()
             << "internal error: no kernel function @" << kernel.name;
    fn->setAttr(kGpuStepsAttrName, encodeGpuSteps(context, kernel.steps));
    for (const GpuStep &step : kernel.steps)
      for (const GpuLaunch &l : step.variants)
        if (!l.function.empty())
          if (auto gpuFn = gpuModule.lookupSymbol<gpu::GPUFuncOp>(l.function))
            relocate(gpuFn, NameLoc::get(StringAttr::get(context, l.function),
                                         fn.getLoc()));
  }
  for (auto &[op, launch] : program->exchanges) {
    op->setAttr(kGpuStepsAttrName,
                encodeGpuSteps(context, {GpuStep{{launch}}}));
    if (auto gpuFn = gpuModule.lookupSymbol<gpu::GPUFuncOp>(launch.function))
      relocate(gpuFn, NameLoc::get(StringAttr::get(context, launch.function),
                                   op->getLoc()));
  }
  for (auto [attrName, launch] :
       {std::pair{kArgmaxAttrName, &program->argmax},
        std::pair{kSampleAttrName, &program->sample}}) {
    if (launch->function.empty())
      continue;
    gpuModule->setAttr(attrName, encodeGpuLaunch(context, *launch));
    if (auto gpuFn = gpuModule.lookupSymbol<gpu::GPUFuncOp>(launch->function))
      relocate(gpuFn, NameLoc::get(StringAttr::get(context, launch->function),
                                   module.getLoc()));
  }

  // The element type each call (and all-gather) result is stored in on the
  // GPU.
  Builder b(context);
  module.walk([&](Operation *call) {
    if (!isa<func::CallOp, AllGatherOp, TokenDispatchOp>(call))
      return;
    SmallVector<Attribute> types;
    for (Value r : call->getResults()) {
      Type t = program->storage.lookup(r);
      if (!t)
        t = cast<RankedTensorType>(r.getType()).getElementType();
      types.push_back(TypeAttr::get(t));
    }
    call->setAttr(kStorageAttrName, b.getArrayAttr(types));
  });
  return success();
}

namespace {

struct ConvertKilnToGPU
    : public mlir::kiln::impl::ConvertKilnToGPUBase<ConvertKilnToGPU> {
  void runOnOperation() override {
    if (failed(convertKernelsToGpu(getOperation())))
      signalPassFailure();
  }
};

} // namespace
