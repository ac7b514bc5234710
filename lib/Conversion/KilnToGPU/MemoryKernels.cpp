//===- MemoryKernels.cpp - Row-wise memory-bound kernels ------------------===//
//
// Embedding gather, RMS norm, residual add + RMS norm, and add: one block
// per row, each thread moving 16 bytes of f32 (8 of bf16) per access, so a
// warp reads 512 contiguous bytes. A row is read once: the values stay in
// registers between the sum of squares and the scaling (the row width is a
// compile-time constant, so the per-thread chunks unroll).
//
//===----------------------------------------------------------------------===//

#include "Generators.h"

#include "dialects/kiln/KilnOps.h"

#include <limits>

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

namespace {

constexpr int64_t kVector = 4;

/// One row-parallel kernel over `cols` columns.
struct RowKernel {
  KernelText k;
  int64_t cols, threads, chunks;
  std::string row;

  RowKernel(StringRef name, StringRef params, int64_t cols)
      : k(name, params, blockFor(cols)), cols(cols), threads(blockFor(cols)),
        chunks((cols / kVector + threads - 1) / threads) {
    row = k.blockId('x');
  }

  static int64_t blockFor(int64_t cols) {
    int64_t vectors = std::max<int64_t>(1, cols / kVector);
    int64_t t = 32;
    while (t < vectors && t < 256)
      t *= 2;
    return t;
  }

  /// First column of chunk `c` for this thread, and whether it is in range.
  std::pair<std::string, std::string> column(int64_t c) {
    std::string lane = k.add(k.index(c * threads), k.threadId());
    std::string col = k.mul(lane, k.index(kVector));
    std::string ok = k.cmp("ult", col, k.index(cols));
    return {col, ok};
  }

  std::string vecType(StringRef element) {
    return "vector<" + std::to_string(kVector) + "x" + element.str() + ">";
  }

  /// Loads 4 elements of `m` at [row, col] (or [col] for a vector) widened
  /// to f32; zeros when !ok.
  std::string load(const std::string &m, StringRef mType, StringRef element,
                   const std::string &rowIndex, const std::string &col,
                   const std::string &ok) {
    std::string result = k.fresh();
    std::string f32v = vecType("f32");
    k.line(result + " = scf.if " + ok + " -> (" + f32v + ") {");
    std::string at = rowIndex.empty() ? col : rowIndex + ", " + col;
    int64_t bytes = kVector * (element == "f32" ? 4 : 2);
    std::string raw = k.op("vector.load " + m + "[" + at +
                           "] {alignment = " + std::to_string(bytes) +
                           "} : " + mType.str() + ", " + vecType(element));
    std::string wide = raw;
    if (element != "f32")
      wide =
          k.op("arith.extf " + raw + " : " + vecType(element) + " to " + f32v);
    k.line("  scf.yield " + wide + " : " + f32v);
    k.line("} else {");
    std::string zero = k.op("arith.constant dense<0.0> : " + f32v);
    k.line("  scf.yield " + zero + " : " + f32v);
    k.line("}");
    return result;
  }

  void store(const std::string &v, const std::string &m, StringRef mType,
             StringRef element, const std::string &col, const std::string &ok) {
    k.beginIf(ok);
    std::string narrow = v;
    if (element != "f32")
      narrow = k.op("arith.truncf " + v + " : " + vecType("f32") + " to " +
                    vecType(element));
    int64_t bytes = kVector * (element == "f32" ? 4 : 2);
    k.line("vector.store " + narrow + ", " + m + "[" + row + ", " + col +
           "] {alignment = " + std::to_string(bytes) + "} : " + mType.str() +
           ", " + vecType(element));
    k.endIf();
  }

  std::string sumSquares(const std::string &v) {
    std::string sq =
        k.op("arith.mulf " + v + ", " + v + " : " + vecType("f32"));
    return k.op("vector.reduction <add>, " + sq + " : " + vecType("f32") +
                " into f32");
  }

  std::string scale(const std::string &v, const std::string &s) {
    std::string splat =
        k.op("vector.broadcast " + s + " : f32 to " + vecType("f32"));
    return k.op("arith.mulf " + v + ", " + splat + " : " + vecType("f32"));
  }
  std::string vmul(const std::string &a, const std::string &b) {
    return k.op("arith.mulf " + a + ", " + b + " : " + vecType("f32"));
  }
  std::string vadd(const std::string &a, const std::string &b) {
    return k.op("arith.addf " + a + ", " + b + " : " + vecType("f32"));
  }
};

} // namespace

LogicalResult mlir::kiln::cuda::generateMemoryKernel(const KernelContext &ctx,
                                                     GpuKernel &out,
                                                     std::string &text) {
  Block &body = ctx.kernel.getBody().front();
  if (!llvm::hasSingleElement(body.without_terminator()))
    return ctx.kernel.emitError("a memory kernel holds exactly one op");
  Operation *op = &body.front();

  std::string params;
  params += ctx.memrefParams();
  unsigned firstResult = ctx.numArgs;
  int64_t cols = ctx.width(firstResult);
  if (cols % kVector != 0)
    return op->emitOpError() << "GPU row kernels need a width divisible by "
                             << kVector << " (got " << cols << ")";

  RowKernel r(ctx.name(), params, cols);
  KernelText &k = r.k;
  auto operand = [&](Value v) {
    return "%o" + std::to_string(ctx.operandOf(v));
  };
  auto typeOf = [&](Value v) { return ctx.memrefType(ctx.operandOf(v)); };
  auto elementOf = [&](Value v) { return ctx.elements[ctx.operandOf(v)]; };
  auto resultOperand = [&](unsigned i) { return firstResult + i; };

  auto normalize = [&](ArrayRef<std::string> values, Value weight,
                       double epsilon, Value result) {
    std::string scratch = k.workgroup("memref<8xf32, 3>");
    std::string ss = k.f32(0.0);
    for (const std::string &v : values)
      ss = k.fadd(ss, r.sumSquares(v));
    std::string total = k.blockCombine(ss, /*max=*/false, scratch,
                                       "memref<8xf32, 3>", r.threads / 32);
    std::string mean = k.fdiv(total, k.f32(static_cast<double>(cols)));
    std::string inv = k.rsqrt(k.fadd(mean, k.f32(epsilon)));
    unsigned resultIndex = resultOperand(0);
    for (unsigned i = 0; i < ctx.kernel.getNumResults(); ++i)
      if (ctx.operands[resultOperand(i)] == result)
        resultIndex = resultOperand(i);
    for (int64_t c = 0; c < r.chunks; ++c) {
      auto [col, ok] = r.column(c);
      std::string w = r.load(operand(weight), typeOf(weight), elementOf(weight),
                             "", col, ok);
      std::string y = r.vmul(r.scale(values[c], inv), w);
      r.store(y, "%o" + std::to_string(resultIndex),
              ctx.memrefType(resultIndex), ctx.elements[resultIndex], col, ok);
    }
  };

  auto rowLoads = [&](Value v) {
    std::vector<std::string> values;
    for (int64_t c = 0; c < r.chunks; ++c) {
      auto [col, ok] = r.column(c);
      values.push_back(
          r.load(operand(v), typeOf(v), elementOf(v), r.row, col, ok));
    }
    return values;
  };
  auto storeRow = [&](ArrayRef<std::string> values, unsigned resultIndex) {
    for (int64_t c = 0; c < r.chunks; ++c) {
      auto [col, ok] = r.column(c);
      r.store(values[c], "%o" + std::to_string(resultIndex),
              ctx.memrefType(resultIndex), ctx.elements[resultIndex], col, ok);
    }
  };

  if (auto e = dyn_cast<EmbeddingOp>(op)) {
    std::string tokens = operand(e.getTokens());
    std::string tokenType = elementOf(e.getTokens());
    std::string id = k.op("memref.load " + tokens + "[" + r.row +
                          "] : " + typeOf(e.getTokens()));
    std::string tableRow =
        k.op("arith.index_cast " + id + " : " + tokenType + " to index");
    std::vector<std::string> values;
    for (int64_t c = 0; c < r.chunks; ++c) {
      auto [col, ok] = r.column(c);
      values.push_back(r.load(operand(e.getTable()), typeOf(e.getTable()),
                              elementOf(e.getTable()), tableRow, col, ok));
    }
    storeRow(values, resultOperand(0));
  } else if (auto n = dyn_cast<RmsNormOp>(op)) {
    normalize(rowLoads(n.getInput()), n.getWeight(),
              n.getEpsilon().convertToDouble(), n.getResult());
  } else if (auto n = dyn_cast<AddRmsNormOp>(op)) {
    std::vector<std::string> a = rowLoads(n.getInput());
    std::vector<std::string> b = rowLoads(n.getResidual());
    std::vector<std::string> sum;
    for (int64_t c = 0; c < r.chunks; ++c)
      sum.push_back(r.vadd(a[c], b[c]));
    int sumOperand = ctx.operandOf(n.getSum());
    if (sumOperand >= 0)
      storeRow(sum, sumOperand);
    normalize(sum, n.getWeight(), n.getEpsilon().convertToDouble(),
              n.getNormed());
  } else if (auto a = dyn_cast<AddOp>(op)) {
    std::vector<std::string> x = rowLoads(a.getLhs());
    std::vector<std::string> y = rowLoads(a.getRhs());
    std::vector<std::string> sum;
    for (int64_t c = 0; c < r.chunks; ++c)
      sum.push_back(r.vadd(x[c], y[c]));
    storeRow(sum, resultOperand(0));
  } else {
    return op->emitOpError("has no sm_90a memory kernel");
  }

  text += k.finish();
  GpuLaunch launch;
  launch.function = ctx.name();
  launch.blockThreads = r.threads;
  launch.grid[0] = rowsGrid(firstResult);
  addOperandParams(ctx, launch);
  out.steps.push_back({{launch}});
  return success();
}
