//===- MemoryKernels.cpp - Row-wise memory-bound kernels ------------------===//
//
// Embedding gather, RMS norm, residual add + RMS norm, and add, built on
// GpuEmitter: one block per row, each thread moving 16 bytes of f32 (8 of bf16)
// per access, so a warp reads 512 contiguous bytes. A row is read once: the
// values stay in registers between the sum of squares and the scaling (the row
// width is a compile-time constant, so the per-thread chunks unroll).
//
//===----------------------------------------------------------------------===//

#include "Generators.h"
#include "GpuEmitter.h"

#include "dialects/kiln/KilnOps.h"

#include <limits>

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

namespace {

constexpr int64_t kVector = 4;

/// One row-parallel kernel over `cols` columns, built on GpuEmitter.
struct RowKernel {
  gpu::GPUFuncOp fn;
  OpBuilder builder;
  GpuEmitter e;
  int64_t cols, threads, chunks;
  Value row;
  VectorType f32v;

  RowKernel(gpu::GPUFuncOp fn, int64_t cols)
      : fn(fn), builder(fn.getContext()), e(builder, fn), cols(cols),
        threads(blockFor(cols)),
        chunks((cols / kVector + threads - 1) / threads) {
    row = e.blockId(gpu::Dimension::x);
    f32v = VectorType::get({kVector}, builder.getF32Type());
  }

  static int64_t blockFor(int64_t cols) {
    int64_t vectors = std::max<int64_t>(1, cols / kVector);
    int64_t t = 32;
    while (t < vectors && t < 256)
      t *= 2;
    return t;
  }

  /// First column of chunk `c` for this thread, and whether it is in range.
  std::pair<Value, Value> column(int64_t c) {
    Value lane = e.addIndex(e.index(c * threads), e.threadId());
    Value col = e.mulIndex(lane, kVector);
    Value ok = e.cmpIndex(arith::CmpIPredicate::ult, col, e.index(cols));
    return {col, ok};
  }

  static int64_t alignmentOf(Value m) {
    return kVector *
           (cast<MemRefType>(m.getType()).getElementType().isF32() ? 4 : 2);
  }

  /// Loads 4 elements of `m` at [row, col] (or [col] for a vector) widened
  /// to f32; zeros when !ok.
  Value load(Value m, Value rowIndex, Value col, Value ok) {
    Type element = cast<MemRefType>(m.getType()).getElementType();
    return e.ifElse(
        ok, f32v,
        [&]() -> SmallVector<Value> {
          SmallVector<Value> at;
          if (rowIndex)
            at.push_back(rowIndex);
          at.push_back(col);
          Value raw = e.vectorLoad(VectorType::get({kVector}, element), m, at,
                                   alignmentOf(m));
          return {e.extF(raw, f32v)};
        },
        [&]() -> SmallVector<Value> { return {e.splat(f32v, 0.0)}; })[0];
  }

  void store(Value v, Value m, Value col, Value ok) {
    Type element = cast<MemRefType>(m.getType()).getElementType();
    e.when(ok, [&] {
      e.vectorStore(e.truncF(v, VectorType::get({kVector}, element)), m,
                    {row, col}, alignmentOf(m));
    });
  }

  Value sumSquares(Value v) { return e.reduceAdd(e.mul(v, v)); }
  Value scale(Value v, Value s) { return e.mul(v, e.broadcast(f32v, s)); }
};

} // namespace

LogicalResult mlir::kiln::cuda::generateMemoryKernel(const KernelContext &ctx,
                                                     GpuKernel &out,
                                                     gpu::GPUModuleOp module) {
  Block &body = ctx.kernel.getBody().front();
  if (!llvm::hasSingleElement(body.without_terminator()))
    return ctx.kernel.emitError("a memory kernel holds exactly one op");
  Operation *op = &body.front();

  unsigned firstResult = ctx.numArgs;
  int64_t cols = ctx.width(firstResult);
  if (cols % kVector != 0)
    return op->emitOpError() << "GPU row kernels need a width divisible by "
                             << kVector << " (got " << cols << ")";

  SmallVector<Type> params = ctx.memrefTypes();
  gpu::GPUFuncOp fn =
      GpuEmitter::createKernel(module, ctx.kernel.getLoc(), ctx.name(), params,
                               /*workgroup=*/{}, RowKernel::blockFor(cols));
  RowKernel r(fn, cols);
  GpuEmitter &e = r.e;
  auto operand = [&](Value v) { return fn.getArgument(ctx.operandOf(v)); };
  auto resultOperand = [&](unsigned i) { return firstResult + i; };

  auto normalize = [&](ArrayRef<Value> values, Value weight, double epsilon,
                       Value result) {
    Value scratch = GpuEmitter::addWorkgroup(
        fn, MemRefType::get({8}, e.b->getF32Type(), MemRefLayoutAttrInterface(),
                            e.b->getI64IntegerAttr(3)));
    Value ss = e.f32(0.0);
    for (Value v : values)
      ss = e.add(ss, r.sumSquares(v));
    Value total = e.blockSum(ss, scratch, r.threads / 32);
    Value mean = e.div(total, e.f32(static_cast<double>(cols)));
    Value inv = e.rsqrt(e.add(mean, e.f32(epsilon)));
    unsigned resultIndex = resultOperand(0);
    for (unsigned i = 0; i < ctx.kernel.getNumResults(); ++i)
      if (ctx.operands[resultOperand(i)] == result)
        resultIndex = resultOperand(i);
    for (int64_t c = 0; c < r.chunks; ++c) {
      auto [col, ok] = r.column(c);
      Value w = r.load(operand(weight), nullptr, col, ok);
      Value y = e.mul(r.scale(values[c], inv), w);
      r.store(y, fn.getArgument(resultIndex), col, ok);
    }
  };

  auto rowLoads = [&](Value v) {
    SmallVector<Value> values;
    for (int64_t c = 0; c < r.chunks; ++c) {
      auto [col, ok] = r.column(c);
      values.push_back(r.load(operand(v), r.row, col, ok));
    }
    return values;
  };
  auto storeRow = [&](ArrayRef<Value> values, unsigned resultIndex) {
    for (int64_t c = 0; c < r.chunks; ++c) {
      auto [col, ok] = r.column(c);
      r.store(values[c], fn.getArgument(resultIndex), col, ok);
    }
  };

  if (auto emb = dyn_cast<EmbeddingOp>(op)) {
    Value id = memref::LoadOp::create(*e.b, e.loc, operand(emb.getTokens()),
                                      ValueRange{r.row});
    Value tableRow = e.toIndex(id);
    SmallVector<Value> values;
    for (int64_t c = 0; c < r.chunks; ++c) {
      auto [col, ok] = r.column(c);
      values.push_back(r.load(operand(emb.getTable()), tableRow, col, ok));
    }
    storeRow(values, resultOperand(0));
  } else if (auto n = dyn_cast<RmsNormOp>(op)) {
    normalize(rowLoads(n.getInput()), n.getWeight(),
              n.getEpsilon().convertToDouble(), n.getResult());
  } else if (auto n = dyn_cast<AddRmsNormOp>(op)) {
    SmallVector<Value> a = rowLoads(n.getInput());
    if (n.getPartials() > 1) {
      // The partial sums of the ranks, block after block of the residual's
      // rows (or, above the gather's limit, their all-reduced sum alone):
      // summed in rank order, as the all-reduce would.
      Value x = operand(n.getInput());
      Value rows = memref::DimOp::create(*e.b, e.loc, operand(n.getResidual()),
                                         e.index(0));
      Value blocks =
          e.divIndex(memref::DimOp::create(*e.b, e.loc, x, e.index(0)), rows);
      ValueRange summed =
          e.loopWith(e.index(1), blocks, a,
                     [&](Value p, ValueRange acc) -> SmallVector<Value> {
                       Value at = e.addIndex(
                           arith::MulIOp::create(*e.b, e.loc, p, rows), r.row);
                       SmallVector<Value> next;
                       for (int64_t c = 0; c < r.chunks; ++c) {
                         auto [col, ok] = r.column(c);
                         next.push_back(e.add(acc[c], r.load(x, at, col, ok)));
                       }
                       return next;
                     });
      a.assign(summed.begin(), summed.end());
    }
    SmallVector<Value> b = rowLoads(n.getResidual());
    SmallVector<Value> sum;
    for (int64_t c = 0; c < r.chunks; ++c)
      sum.push_back(e.add(a[c], b[c]));
    int sumOperand = ctx.operandOf(n.getSum());
    if (sumOperand >= 0)
      storeRow(sum, sumOperand);
    normalize(sum, n.getWeight(), n.getEpsilon().convertToDouble(),
              n.getNormed());
  } else if (auto a = dyn_cast<AddOp>(op)) {
    SmallVector<Value> x = rowLoads(a.getLhs());
    SmallVector<Value> y = rowLoads(a.getRhs());
    SmallVector<Value> sum;
    for (int64_t c = 0; c < r.chunks; ++c)
      sum.push_back(e.add(x[c], y[c]));
    storeRow(sum, resultOperand(0));
  } else {
    fn.erase();
    return op->emitOpError("has no sm_90a memory kernel");
  }

  GpuLaunch launch;
  launch.function = ctx.name();
  launch.blockThreads = r.threads;
  launch.grid[0] = rowsGrid(firstResult);
  addOperandParams(ctx, launch);
  out.steps.push_back({{launch}});
  return success();
}
