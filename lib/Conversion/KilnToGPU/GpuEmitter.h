//===- GpuEmitter.h - Building GPU kernels with the shared vocabulary -*- C++
//-*-===//
//
// The host lowering's Emitter (kiln/Conversion/Emitter.h) plus what GPU
// kernels need: thread and block ids, warp shuffles, barriers, and gpu.func
// creation with workgroup buffers. Kernels built with it get ops with
// locations and types checked as they are built; the generators still on
// KernelText move here one by one.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_LIB_CONVERSION_KILNTOGPU_GPUEMITTER_H
#define KILN_LIB_CONVERSION_KILNTOGPU_GPUEMITTER_H

#include "kiln/Conversion/Emitter.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"

namespace mlir::kiln::cuda {

class GpuEmitter : public Emitter {
public:
  /// Builds before the gpu.return of `fn`'s entry block, constants hoisted
  /// to the block's start.
  GpuEmitter(OpBuilder &builder, gpu::GPUFuncOp fn)
      : Emitter(builder, fn.getLoc()) {
    builder.setInsertionPoint(fn.getBody().front().getTerminator());
    hoistConstantsTo(&fn.getBody().front());
  }

  /// A kernel gpu.func in `module`: `blockThreads` threads (nvvm.reqntid),
  /// workgroup buffers 16-byte aligned (as 16-byte vector accesses and
  /// cp.async need), an empty body ending in gpu.return.
  static gpu::GPUFuncOp createKernel(gpu::GPUModuleOp module, Location loc,
                                     StringRef name, TypeRange arguments,
                                     TypeRange workgroup,
                                     int64_t blockThreads) {
    OpBuilder mb = OpBuilder::atBlockEnd(module.getBody());
    auto fn = gpu::GPUFuncOp::create(
        mb, loc, name, mb.getFunctionType(arguments, {}), workgroup);
    fn->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), mb.getUnitAttr());
    fn->setAttr(
        "nvvm.reqntid",
        mb.getDenseI32ArrayAttr({static_cast<int32_t>(blockThreads), 1, 1}));
    for (unsigned i = 0; i < workgroup.size(); ++i)
      fn.setWorkgroupAttributionAttr(i, "llvm.align", mb.getI64IntegerAttr(16));
    OpBuilder end = OpBuilder::atBlockEnd(&fn.getBody().front());
    gpu::ReturnOp::create(end, loc);
    return fn;
  }

  Value threadId() {
    return gpu::ThreadIdOp::create(*b, loc, gpu::Dimension::x);
  }
  Value blockId(gpu::Dimension d) { return gpu::BlockIdOp::create(*b, loc, d); }
  /// The value of lane (this lane xor `offset`) within groups of `width`.
  Value shuffleXor(Value v, int64_t offset, int64_t width = 32) {
    return gpu::ShuffleOp::create(*b, loc, v, i32(offset), i32(width),
                                  gpu::ShuffleMode::XOR)
        .getShuffleResult();
  }
  void barrier() { gpu::BarrierOp::create(*b, loc); }
};

} // namespace mlir::kiln::cuda

#endif // KILN_LIB_CONVERSION_KILNTOGPU_GPUEMITTER_H
