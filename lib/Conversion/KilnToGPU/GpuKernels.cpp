//===- GpuKernels.cpp - sm_90a kernels for a partitioned graph ------------===//
//
// Storage types: on the GPU, activations that feed GEMMs and attention
// (normalized rows, attention outputs, SwiGLU products, q/k/v) are kept in
// bf16, the operand type of wgmma and half the bytes; the residual stream,
// plain GEMM outputs that are added into it, router gates and logits stay
// f32. The rule follows the op that produces a value, so every call site of
// a shared kernel agrees on its operand types.
//
//===----------------------------------------------------------------------===//

#include "kiln/Conversion/KilnToGPU/GpuKernels.h"
#include "Generators.h"

#include "dialects/kiln/KilnOps.h"

#include "mlir/IR/SymbolTable.h"

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

int KernelContext::operandOf(Value v) const {
  for (unsigned i = 0; i < operands.size(); ++i)
    if (operands[i] == v)
      return static_cast<int>(i);
  return -1;
}

MemRefType KernelContext::memrefTypeOf(unsigned i) const {
  SmallVector<int64_t> shape(types[i].getShape());
  // Every extent past the first is static; the first is the step's rows.
  if (types[i].isDynamicDim(0))
    shape[0] = ShapedType::kDynamic;
  return MemRefType::get(shape, elementTypes[i]);
}

SmallVector<Type> KernelContext::memrefTypes() const {
  SmallVector<Type> params;
  for (unsigned i = 0; i < operands.size(); ++i)
    params.push_back(memrefTypeOf(i));
  return params;
}

/// Whether result `index` of `kernel` is kept in bf16 on the GPU.
static bool storedAsBf16(func::FuncOp kernel, unsigned index) {
  auto ret = cast<func::ReturnOp>(kernel.getBody().front().getTerminator());
  Value v = ret.getOperand(index);
  if (!isa<FloatType>(cast<RankedTensorType>(v.getType()).getElementType()))
    return false;
  Operation *def = v.getDefiningOp();
  if (!def)
    return false;
  if (auto n = dyn_cast<AddRmsNormOp>(def))
    return v == n.getNormed();
  return isa<RmsNormOp, AttentionOp, PackedSwiGluOp, SwiGluOp, QkvEpilogueOp,
             ExpertGateUpOp, RopeOp, QkNormOp>(def);
}

FailureOr<GpuProgram> mlir::kiln::cuda::generateGpuKernels(ModuleOp module) {
  GpuProgram program;
  program.container = ModuleOp::create(module.getLoc());
  OpBuilder containerBuilder =
      OpBuilder::atBlockEnd(program.container->getBody());
  program.gpuModule = gpu::GPUModuleOp::create(
      containerBuilder, module.getLoc(), kKernelModuleName);
  func::FuncOp graph = graphFunctionOf(module);
  if (!graph)
    return module.emitError("no graph function to compile"), failure();

  // Element types of every kernel's operands, from its call sites.
  llvm::StringMap<SmallVector<Type>> operandTypes;
  Builder b(module.getContext());
  for (Operation &op : graph.getBody().front()) {
    // An all-gather moves rows as they are stored (the normed bf16 rows a
    // MoE block's GEMMs read); sums stay in f32.
    if (auto gather = dyn_cast<AllGatherOp>(op)) {
      if (Type t = program.storage.lookup(gather.getInput()))
        program.storage[gather.getResult()] = t;
      continue;
    }
    // A token dispatch moves the routed rows as stored too.
    if (auto dispatch = dyn_cast<TokenDispatchOp>(op)) {
      if (Type t = program.storage.lookup(dispatch.getInput()))
        program.storage[dispatch.getRows()] = t;
      continue;
    }
    auto call = dyn_cast<func::CallOp>(op);
    if (!call)
      continue;
    auto kernel = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
        call, call.getCalleeAttr());
    if (!kernel)
      return call.emitOpError("calls an unknown kernel"), failure();
    for (auto [i, r] : llvm::enumerate(call.getResults())) {
      Type element = cast<RankedTensorType>(r.getType()).getElementType();
      program.storage[r] = storedAsBf16(kernel, i) ? b.getBF16Type() : element;
    }
    SmallVector<Type> types;
    for (Value v : call.getOperands()) {
      Type element = cast<RankedTensorType>(v.getType()).getElementType();
      types.push_back(program.storage.lookup(v) ? program.storage.lookup(v)
                                                : element);
    }
    for (Value r : call.getResults())
      types.push_back(program.storage.lookup(r));
    auto [it, inserted] = operandTypes.try_emplace(kernel.getSymName(), types);
    if (!inserted && it->second != types)
      return call.emitOpError()
                 << "@" << kernel.getSymName()
                 << " is called with operands stored in different types",
             failure();
  }

  for (auto kernel : module.getOps<func::FuncOp>()) {
    auto kind =
        kernel->getAttrOfType<KernelKindAttr>(KilnDialect::getKernelAttrName());
    if (!kind)
      continue;
    auto types = operandTypes.find(kernel.getSymName());
    if (types == operandTypes.end())
      continue; // never launched
    KernelContext ctx;
    ctx.kernel = kernel;
    ctx.numArgs = kernel.getNumArguments();
    for (BlockArgument arg : kernel.getArguments())
      ctx.operands.push_back(arg);
    auto ret = cast<func::ReturnOp>(kernel.getBody().front().getTerminator());
    for (Value v : ret.getOperands())
      ctx.operands.push_back(v);
    for (auto [v, element] : llvm::zip(ctx.operands, types->second)) {
      ctx.types.push_back(cast<RankedTensorType>(v.getType()));
      ctx.elementTypes.push_back(element);
    }
    GpuKernel out;
    out.name = kernel.getSymName().str();
    LogicalResult ok = failure();
    switch (kind.getValue()) {
    case KernelKind::Memory:
      ok = generateMemoryKernel(ctx, out, program.gpuModule);
      break;
    case KernelKind::Gemm:
      ok = generateGemmKernel(ctx, out, program.gpuModule);
      break;
    case KernelKind::Attention:
      ok = generateAttentionKernel(ctx, out, program.gpuModule);
      break;
    case KernelKind::Router:
      ok = generateRouterKernel(ctx, out, program.gpuModule);
      break;
    case KernelKind::GroupedGemm:
      // Shapes the wgmma tiles cannot cover (tiny test models) keep the
      // SIMT version.
      ok = groupedWgmmaFits(ctx)
               ? generateGroupedWgmmaKernel(ctx, out, program.gpuModule)
               : generateGroupedGemmKernel(ctx, out, program.gpuModule);
      break;
    case KernelKind::Moe:
      // kiln-decompose-moe turns every MoE into router + grouped GEMMs.
      return kernel.emitError() << "no sm_90a code generator for an "
                                   "undecomposed MoE kernel (run "
                                   "kiln-decompose-moe first)",
             failure();
    }
    if (failed(ok))
      return failure();
    program.kernels.push_back(std::move(out));
  }
  // The token exchanges' row gathers: the dispatch gathers the routed rows
  // as stored, the combine sums f32 outputs.
  for (Operation &op : graph.getBody().front()) {
    Value rows;
    if (auto dispatch = dyn_cast<TokenDispatchOp>(op))
      rows = dispatch.getRows();
    else if (auto combine = dyn_cast<TokenCombineOp>(op))
      rows = combine.getPairOutputs();
    else
      continue;
    auto type = cast<RankedTensorType>(rows.getType());
    Type element = program.storage.lookup(rows);
    if (!element)
      element = type.getElementType();
    program.exchanges.push_back(
        {&op, buildRowGatherSum(program.gpuModule, op.getLoc(), element,
                                type.getDimSize(1))});
  }
  auto ret = cast<func::ReturnOp>(graph.getBody().front().getTerminator());
  if (ret.getNumOperands() == 1) {
    auto logits = cast<RankedTensorType>(ret.getOperand(0).getType());
    program.vocab = logits.getShape().back();
  }
  return program;
}
