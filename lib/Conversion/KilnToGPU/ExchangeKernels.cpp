//===- ExchangeKernels.cpp - Row gathers around the token all-to-all ------===//
//
// The all-to-all token exchange (kiln.token_dispatch / kiln.token_combine)
// moves rows between ranks with NCCL sends and receives, which move
// contiguous blocks; the rows a rank sends are scattered over its replica's
// rows (a piece's routed pairs, sorted by expert) and the outputs it gets
// back add into the rows they came from. One GPU function does both sides:
//
//   out[r] = sum over j in [starts[r], starts[r + 1]) of in[sources[j]]
//
// in f32, summed in list order (the runtime lists a row's contributions in
// the reference's order); a row with no sources is +0. One block per
// output row, threads along the row. The runtime builds `starts` and
// `sources` on the host from the step's routing and fills the four memref
// parameters itself (docs/engine-format.md, "Token exchanges").
//
//===----------------------------------------------------------------------===//

#include "Generators.h"
#include "GpuEmitter.h"

#include "dialects/kiln/KilnOps.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

namespace {
constexpr int64_t kGatherThreads = 128;
} // namespace

GpuLaunch mlir::kiln::cuda::buildRowGatherSum(gpu::GPUModuleOp module,
                                              Location loc, Type element,
                                              int64_t width) {
  llvm::SmallString<64> name;
  llvm::raw_svector_ostream os(name);
  os << "exchange_gather_sum_" << (element.isBF16() ? "bf16" : "f32") << "_"
     << width;
  GpuLaunch launch;
  launch.function = name.str().str();
  launch.blockThreads = kGatherThreads;
  if (module.lookupSymbol(launch.function))
    return launch; // one function per element type and width
  MLIRContext *context = module.getContext();
  auto rows = MemRefType::get({ShapedType::kDynamic, width}, element);
  auto list =
      MemRefType::get({ShapedType::kDynamic}, IntegerType::get(context, 64));
  gpu::GPUFuncOp fn =
      GpuEmitter::createKernel(module, loc, launch.function,
                               {rows, list, list, rows}, {}, kGatherThreads);
  OpBuilder builder(context);
  GpuEmitter e(builder, fn);
  Value in = fn.getArgument(0), starts = fn.getArgument(1),
        sources = fn.getArgument(2), out = fn.getArgument(3);
  Value row = e.blockId(gpu::Dimension::x);
  Value lo = e.loadIndex(starts, {row});
  Value hi = e.loadIndex(starts, {e.addIndex(row, e.index(1))});
  Value none = e.cmpIndex(arith::CmpIPredicate::eq, lo, hi);
  e.loopStep(
      e.threadId(), e.index(width), e.index(kGatherThreads), [&](Value c) {
        // From -0.0, which adds to every x as x: a row of one
        // source is copied bit for bit (signed zeros too).
        Value sum =
            e.loopWith(lo, hi, {e.f32(-0.0)},
                       [&](Value j, ValueRange acc) -> SmallVector<Value> {
                         Value from = e.loadIndex(sources, {j});
                         return {e.add(acc[0], e.load(in, {from, c}))};
                       })[0];
        e.store(e.select(none, e.f32(0.0), sum), out, {row, c});
      });
  return launch;
}
