//===- GpuEmitter.h - Building GPU kernels with the shared vocabulary -*- C++
//-*-===//
//
// The host lowering's Emitter (kiln/Conversion/Emitter.h) plus what GPU
// kernels need: thread and block ids, warp shuffles, barriers, and gpu.func
// creation with workgroup buffers, PTX approximations. Every sm_90a kernel is
// built with it: ops get locations and their types are checked as they are
// built. The TMA / mbarrier / wgmma pieces the pipelined kernels share are in
// Wgmma.h.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_LIB_CONVERSION_KILNTOGPU_GPUEMITTER_H
#define KILN_LIB_CONVERSION_KILNTOGPU_GPUEMITTER_H

#include "kiln/Conversion/Emitter.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"

#include <limits>

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

  /// The thread's index in the block (x), made once at the entry.
  Value threadId() {
    if (!tid)
      tid = atEntry([&](OpBuilder &entry) {
        return gpu::ThreadIdOp::create(entry, loc, gpu::Dimension::x);
      });
    return tid;
  }
  /// The block's index along `d`, made once at the entry.
  Value blockId(gpu::Dimension d) {
    Value &id = bid[static_cast<unsigned>(d)];
    if (!id)
      id = atEntry([&](OpBuilder &entry) {
        return gpu::BlockIdOp::create(entry, loc, d);
      });
    return id;
  }
  /// A workgroup buffer of `type` on `fn`, 16-byte aligned.
  static Value addWorkgroup(gpu::GPUFuncOp fn, MemRefType type) {
    Value buffer = fn.addWorkgroupAttribution(type, fn.getLoc());
    fn.setWorkgroupAttributionAttr(
        fn.getNumWorkgroupAttributions() - 1, "llvm.align",
        Builder(fn.getContext()).getI64IntegerAttr(16));
    return buffer;
  }
  /// One PTX instruction on an f32 ("rsqrt.approx.ftz.f32", ...), as pure
  /// inline assembly (CSE and loop-invariant motion still apply): no
  /// libdevice, the same approximations with or without a toolkit.
  Value ptxUnary(StringRef instruction, Value x) {
    return LLVM::InlineAsmOp::create(
               *b, loc, b->getF32Type(), ValueRange{x},
               b->getStringAttr(instruction.str() + " $0, $1;"),
               b->getStringAttr("=f,f"), /*has_side_effects=*/nullptr,
               /*is_align_stack=*/nullptr,
               LLVM::TailCallKindAttr::get(
                   b->getContext(), LLVM::tailcallkind::TailCallKind::None),
               /*asm_dialect=*/nullptr, /*operand_attrs=*/nullptr)
        .getResult(0);
  }
  Value rsqrt(Value x) { return ptxUnary("rsqrt.approx.ftz.f32", x); }
  Value exp2(Value x) { return ptxUnary("ex2.approx.ftz.f32", x); }
  /// e^x as 2^(x log2 e), with the hardware approximation.
  Value exp(Value x) { return exp2(mul(x, f32(1.4426950408889634))); }
  /// ln x as log2(x) ln 2, with the hardware approximation.
  Value log(Value x) {
    return mul(ptxUnary("lg2.approx.ftz.f32", x), f32(0.69314718055994531));
  }
  Value sin(Value x) { return ptxUnary("sin.approx.ftz.f32", x); }
  Value cos(Value x) { return ptxUnary("cos.approx.ftz.f32", x); }
  /// silu(g) * u as the reference writes it, with the PTX exponential.
  Value swiglu(Value g, Value u) {
    Value denominator = add(f32(1.0), exp(negF(g)));
    return mul(div(g, denominator), u);
  }
  /// a * b + c rounded once (arith keeps mulf and addf apart).
  Value fma(Value a, Value x, Value c) {
    return LLVM::FMAOp::create(*b, loc, a, x, c);
  }
  /// `v` summed over each aligned group of `width` lanes (xor butterfly).
  Value warpSum(Value v, int64_t width = 32) {
    for (int64_t offset = width / 2; offset >= 1; offset /= 2)
      v = add(v, shuffleXor(v, offset));
    return v;
  }
  /// The largest `v` of each aligned group of `width` lanes.
  Value warpMax(Value v, int64_t width = 32) {
    for (int64_t offset = width / 2; offset >= 1; offset /= 2)
      v = maxF(v, shuffleXor(v, offset));
    return v;
  }
  /// `v` summed over the block's `warps` warps, in every thread, through
  /// `scratch` (workgroup memref<N x f32>, N >= warps); ends on a barrier,
  /// so the scratch may be reused.
  Value blockSum(Value v, Value scratch, int64_t warps) {
    return blockCombine(v, /*max=*/false, scratch, warps);
  }
  /// The same with the largest value instead of the sum.
  Value blockMax(Value v, Value scratch, int64_t warps) {
    return blockCombine(v, /*max=*/true, scratch, warps);
  }
  /// The value of lane (this lane xor `offset`) within groups of `width`.
  Value shuffleXor(Value v, int64_t offset, int64_t width = 32) {
    return shuffle(v, gpu::ShuffleMode::XOR, offset, width);
  }
  Value shuffle(Value v, gpu::ShuffleMode mode, int64_t offset,
                int64_t width = 32) {
    return gpu::ShuffleOp::create(*b, loc, v, i32(offset), i32(width), mode)
        .getShuffleResult();
  }
  Value gridDim(gpu::Dimension d) { return gpu::GridDimOp::create(*b, loc, d); }
  void barrier() { gpu::BarrierOp::create(*b, loc); }
  Value blockCombine(Value v, bool max, Value scratch, int64_t warps) {
    Value warpValue = max ? warpMax(v) : warpSum(v);
    Value warp = divIndex(threadId(), index(32));
    when(cmpIndex(arith::CmpIPredicate::eq, remIndex(threadId(), index(32)),
                  index(0)),
         [&] { store(warpValue, scratch, {warp}); });
    barrier();
    Value total =
        max ? f32(-std::numeric_limits<double>::infinity()) : f32(0.0);
    for (int64_t w = 0; w < warps; ++w) {
      Value x = load(scratch, {index(w)});
      total = max ? maxF(total, x) : add(total, x);
    }
    barrier();
    return total;
  }

private:
  Value atEntry(function_ref<Value(OpBuilder &)> make) {
    Block *entry = b->getInsertionBlock();
    while (Operation *parent = entry->getParentOp()) {
      if (isa<gpu::GPUFuncOp>(parent))
        break;
      entry = parent->getBlock();
    }
    OpBuilder at(entry, entry->begin());
    return make(at);
  }

  Value tid;
  Value bid[3];
};

} // namespace mlir::kiln::cuda

#endif // KILN_LIB_CONVERSION_KILNTOGPU_GPUEMITTER_H
