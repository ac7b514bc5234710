//===- ArgmaxKernel.cpp - The greedy token on the GPU ---------------------===//
//
// One block of 1024 threads finds the largest logit of the last row (ties to
// the lower id, NaN lowest, as the host sampler): a strided scan per thread,
// a shuffle reduction per warp, then one warp over the warps' winners. The
// first kernel built with the shared Emitter vocabulary rather than text.
//
//===----------------------------------------------------------------------===//

#include "Generators.h"
#include "GpuEmitter.h"

#include <limits>

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

GpuLaunch mlir::kiln::cuda::buildArgmax(gpu::GPUModuleOp module, Location loc,
                                        int64_t vocab) {
  constexpr int64_t kThreads = 1024;
  constexpr int64_t kWarp = 32;
  Builder types(module.getContext());
  Type f32 = types.getF32Type(), i32 = types.getI32Type();
  auto logitsType = MemRefType::get({ShapedType::kDynamic, vocab}, f32);
  auto tokenType = MemRefType::get({1}, types.getI64Type());
  Attribute shared = types.getI64IntegerAttr(3);
  auto valuesType =
      MemRefType::get({kWarp}, f32, MemRefLayoutAttrInterface(), shared);
  auto indicesType =
      MemRefType::get({kWarp}, i32, MemRefLayoutAttrInterface(), shared);
  gpu::GPUFuncOp fn = GpuEmitter::createKernel(
      module, loc, "kiln_argmax", {logitsType, tokenType},
      {valuesType, indicesType}, kThreads);
  Value logits = fn.getArgument(0), token = fn.getArgument(1);
  Value bestValues = fn.getWorkgroupAttributions()[0];
  Value bestIndices = fn.getWorkgroupAttributions()[1];

  OpBuilder builder(module.getContext());
  GpuEmitter e(builder, fn);
  Value tid = e.threadId();
  Value row = e.subIndex(e.dim(logits, 0), e.index(1));
  Value negInf = e.f32(-std::numeric_limits<double>::infinity());
  // (value, index) beats (best, at) when larger, or equal at a lower index.
  auto better = [&](Value v, Value i, Value best, Value at) {
    Value larger = e.cmpF(arith::CmpFPredicate::OGT, v, best);
    Value tie = e.andI(e.cmpF(arith::CmpFPredicate::OEQ, v, best),
                       e.cmpIndex(arith::CmpIPredicate::slt, i, at));
    return e.orI(larger, tie);
  };
  ValueRange scanned = e.loopWith(
      tid, e.index(vocab), e.index(kThreads), {negInf, e.i32(vocab)},
      [&](Value c, ValueRange acc) -> SmallVector<Value> {
        Value v = e.load(logits, {row, c});
        Value isNan = e.cmpF(arith::CmpFPredicate::UNO, v, v);
        v = e.select(isNan, negInf, v);
        Value i = e.toI32(c);
        Value take = better(v, i, acc[0], acc[1]);
        return {e.select(take, v, acc[0]), e.select(take, i, acc[1])};
      });
  Value best = scanned[0], at = scanned[1];
  auto reduce = [&]() {
    for (int64_t offset = kWarp / 2; offset >= 1; offset /= 2) {
      Value otherValue = e.shuffleXor(best, offset);
      Value otherIndex = e.shuffleXor(at, offset);
      Value take = better(otherValue, otherIndex, best, at);
      best = e.select(take, otherValue, best);
      at = e.select(take, otherIndex, at);
    }
  };
  reduce();
  Value warp = e.divIndex(tid, e.index(kWarp));
  Value lane = e.remIndex(tid, e.index(kWarp));
  e.when(e.cmpIndex(arith::CmpIPredicate::eq, lane, e.index(0)), [&] {
    e.store(best, bestValues, {warp});
    e.store(at, bestIndices, {warp});
  });
  e.barrier();
  e.when(e.cmpIndex(arith::CmpIPredicate::ult, tid, e.index(kWarp)), [&] {
    best = e.load(bestValues, {tid});
    at = e.load(bestIndices, {tid});
    reduce();
    e.when(e.cmpIndex(arith::CmpIPredicate::eq, tid, e.index(0)), [&] {
      e.store(e.extSI(at, types.getI64Type()), token, {e.index(0)});
    });
  });

  GpuLaunch launch;
  launch.function = "kiln_argmax";
  launch.blockThreads = kThreads;
  return launch;
}
