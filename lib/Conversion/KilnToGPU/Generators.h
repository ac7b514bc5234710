//===- Generators.h - The per-kind sm_90a kernel generators -----*- C++ -*-===//

#ifndef KILN_LIB_CONVERSION_KILNTOGPU_GENERATORS_H
#define KILN_LIB_CONVERSION_KILNTOGPU_GENERATORS_H

#include "GpuEmitter.h"
#include "kiln/Conversion/KilnToGPU/GpuKernels.h"

#include "dialects/kiln/KilnOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"

#include <cstdlib>
#include <string>

namespace mlir::kiln::cuda {

/// A kernel function seen from its GPU functions: every operand (arguments,
/// then results) with its tensor type and its storage element type.
struct KernelContext {
  mutable func::FuncOp kernel;
  SmallVector<Value> operands;
  SmallVector<RankedTensorType> types;
  /// The storage element types (bf16 where the GPU keeps an f32 tensor in
  /// bf16).
  SmallVector<Type> elementTypes;
  unsigned numArgs = 0;

  /// Operand index of `v` (a kernel argument or a returned value), or -1.
  int operandOf(Value v) const;
  /// Operand `i` as a kernel parameter: weights keep their static shape,
  /// activations get a dynamic row count.
  MemRefType memrefTypeOf(unsigned i) const;
  /// Every operand's memref type, in operand order.
  SmallVector<Type> memrefTypes() const;
  bool isBF16(unsigned i) const { return elementTypes[i].isBF16(); }
  /// The static inner extent of operand `i` (its last dimension).
  int64_t width(unsigned i) const { return types[i].getShape().back(); }
  std::string name() const { return kernel.getSymName().str(); }
};

/// Each generator builds its gpu.funcs into `module` (on GpuEmitter) and
/// appends its steps to `out`.
LogicalResult generateMemoryKernel(const KernelContext &ctx, GpuKernel &out,
                                   gpu::GPUModuleOp module);
LogicalResult generateGemmKernel(const KernelContext &ctx, GpuKernel &out,
                                 gpu::GPUModuleOp module);
LogicalResult generateAttentionKernel(const KernelContext &ctx, GpuKernel &out,
                                      gpu::GPUModuleOp module);
LogicalResult generateRouterKernel(const KernelContext &ctx, GpuKernel &out,
                                   gpu::GPUModuleOp module);
LogicalResult generateGroupedGemmKernel(const KernelContext &ctx,
                                        GpuKernel &out,
                                        gpu::GPUModuleOp module);
/// The wgmma version; fails (with a diagnostic) on shapes it cannot tile.
LogicalResult generateGroupedWgmmaKernel(const KernelContext &ctx,
                                         GpuKernel &out,
                                         gpu::GPUModuleOp module);
/// Whether the wgmma grouped GEMM can tile this kernel's shapes.
bool groupedWgmmaFits(const KernelContext &ctx);

/// Greedy sampling: argmax of the last logits row, built on OpBuilder into
/// `module` (ArgmaxKernel.cpp).
GpuLaunch buildArgmax(gpu::GPUModuleOp module, Location loc, int64_t vocab);
/// Temperature / top-k / top-p sampling of the last logits row, built on
/// GpuEmitter into `module` (SamplingKernel.cpp); no function for
/// vocabularies of 2^22 or more.
GpuLaunch buildSampler(gpu::GPUModuleOp module, Location loc, int64_t vocab);

/// The row gather-sum of the token exchanges (ExchangeKernels.cpp): out[r]
/// = sum of in[sources[j]] for j in [starts[r], starts[r + 1]), rows of
/// `width` elements of `element`; one function per element type and width.
GpuLaunch buildRowGatherSum(gpu::GPUModuleOp module, Location loc, Type element,
                            int64_t width);

/// expert_down's first launch: the result starts as the addend (the shared
/// expert's output), one block per row (MoeKernels.cpp).
void addExpertDownInit(const KernelContext &ctx, int addend, int result,
                       GpuKernel &out, gpu::GPUModuleOp module);

/// The softmax scale of `a` for a query at position `qPos` (i64): the op's
/// scale, times the NoPE temperature 1 + attn_scale * log(1 + floor((pos +
/// 1) / floor_scale)) when the op has one.
inline Value attentionScale(GpuEmitter &e, AttentionOp a, Value qPos) {
  Value scale = e.f32(a.getScale().convertToDouble());
  if (!a.getFloorScale())
    return scale;
  Value steps = e.divSI(e.addI(qPos, e.i64(1)), e.i64(*a.getFloorScale()));
  Value f = e.siToFP(steps, e.b->getF32Type());
  return e.mul(
      scale, e.add(e.f32(1.0), e.mul(e.f32(a.getAttnScale()->convertToDouble()),
                                     e.log(e.add(e.f32(1.0), f)))));
}

/// Whether the key at position `kp` lies in the chunk of the query at `qp`
/// (both i64), for chunked attention. KILN_TEST_MUTATION=chunk-mask, read
/// when the kernels are generated, moves every key one position later
/// first: a test-only switch with which test/Emulator/gpu-mutations.test
/// shows the GPU suite catches a chunk mask off by one.
inline Value sameChunk(GpuEmitter &e, Value kp, Value qp, int64_t chunk) {
  Value key = kp;
  const char *mutation = std::getenv("KILN_TEST_MUTATION");
  if (mutation && std::string(mutation) == "chunk-mask")
    key = e.addI(kp, e.i64(1));
  return e.cmpIndex(arith::CmpIPredicate::eq, e.divSI(key, e.i64(chunk)),
                    e.divSI(qp, e.i64(chunk)));
}

/// Prefill attention on wgmma (FlashAttentionKernel.cpp).
bool flashAttentionFits(const KernelContext &ctx, AttentionOp a);
GpuLaunch buildFlashAttention(const KernelContext &ctx, AttentionOp a,
                              StringRef name, gpu::GPUModuleOp module);

/// Appends one memref parameter per operand, in operand order; `key` and
/// `value` (attention operands, or -1) are passed as their KV pools.
inline void addOperandParams(const KernelContext &ctx, GpuLaunch &launch,
                             int key = -1, int value = -1) {
  for (unsigned i = 0; i < ctx.operands.size(); ++i)
    launch.params.push_back(
        {static_cast<int>(i) == key || static_cast<int>(i) == value
             ? GpuParam::Kind::KvPool
             : GpuParam::Kind::Memref,
         i});
}

/// Grid extent over the rows of operand `i`, `perBlock` rows per block.
inline GridExtent rowsGrid(unsigned operand, int64_t perBlock = 1,
                           int64_t perRow = 1) {
  GridExtent g;
  g.rowsOf = static_cast<int>(operand);
  g.perRow = perRow;
  g.constant = 0;
  g.divisor = perBlock;
  return g;
}
inline GridExtent smGrid(int64_t perSm = 1) {
  GridExtent g;
  g.perSm = perSm;
  return g;
}
inline GridExtent fixedGrid(int64_t n) {
  GridExtent g;
  g.constant = n;
  return g;
}

} // namespace mlir::kiln::cuda

#endif // KILN_LIB_CONVERSION_KILNTOGPU_GENERATORS_H
