//===- MoeKernels.cpp - Router and grouped expert GEMMs -------------------===//
//
// The router runs in two launches: one block per token computes the expert
// logits (a warp per expert, lanes along the hidden size), picks the top-k
// (ties to the lower expert, NaN last) and writes each (token, rank) pair's
// expert and sigmoid gate to scratch; then a single block counts the pairs
// per expert, writes the offsets, and places every pair with a stable
// counting sort (by expert, then token, then rank, like the reference).
//
// The expert GEMMs walk the sorted pairs in tiles of rows of one expert:
// block y enumerates (expert, row tile) from the offsets, block x a slice of
// output columns; each thread owns one column (both the gate and the up
// column for gate_up) for every row of the tile, so a weight element loaded
// once serves the whole tile. The routing gate scales the GEMM output row,
// which equals gating the expert input (the product is linear in it).
//
// These are SIMT kernels; moving them onto the wgmma GEMM (with cp.async
// row gathers in place of TMA) is the next step (docs/design.md).
//
//===----------------------------------------------------------------------===//

#include "Generators.h"

#include "dialects/kiln/KilnOps.h"

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

namespace {
constexpr int64_t kSortThreads = 1024;
constexpr int64_t kTileRows = 16;
constexpr int64_t kColumns = 128;
constexpr int64_t kStage = 128; // hidden elements staged per round

} // namespace

void mlir::kiln::cuda::addExpertDownInit(const KernelContext &ctx, int addend,
                                         int result, GpuKernel &out,
                                         std::string &text) {
  std::string name = ctx.name() + "_init";
  int64_t cols = ctx.width(result);
  KernelText k(name, ctx.memrefParams(), 128);
  std::string row = k.blockId('x');
  std::string c = k.beginFor(k.threadId(), k.index(cols), k.index(128));
  std::string v =
      k.toF32(k.op("memref.load %o" + std::to_string(addend) + "[" + row +
                   ", " + c + "] : " + ctx.memrefType(addend)),
              ctx.elements[addend]);
  k.line("memref.store " + k.fromF32(v, ctx.elements[result]) + ", %o" +
         std::to_string(result) + "[" + row + ", " + c +
         "] : " + ctx.memrefType(result));
  k.endFor();
  text += k.finish();
  GpuLaunch launch;
  launch.function = name;
  launch.blockThreads = 128;
  launch.grid[0] = rowsGrid(result);
  addOperandParams(ctx, launch);
  out.steps.push_back({{launch}});
}

LogicalResult mlir::kiln::cuda::generateRouterKernel(const KernelContext &ctx,
                                                     GpuKernel &out,
                                                     std::string &text) {
  auto r = dyn_cast<MoeRouteOp>(&ctx.kernel.getBody().front().front());
  if (!r)
    return ctx.kernel.emitError("a router kernel holds one kiln.moe_route");
  int x = ctx.operandOf(r.getInput()), router = ctx.operandOf(r.getRouter());
  int indices = ctx.operandOf(r.getTokenIndices()),
      offsets = ctx.operandOf(r.getExpertOffsets()),
      gates = ctx.operandOf(r.getGates());
  if (indices < 0 || offsets < 0 || gates < 0)
    return r.emitOpError("every router result must leave the kernel");
  int64_t experts = ctx.types[router].getDimSize(0);
  int64_t d = ctx.width(x), topK = r.getTopK();
  auto mem = [&](int i) { return "%o" + std::to_string(i); };
  std::string scratchParam = ", %scratch: memref<?xi64>";

  // Launch 1: logits, top-k, gates.
  {
    KernelText k(ctx.name() + "_select", ctx.memrefParams() + scratchParam,
                 128);
    std::string logits =
        k.workgroup("memref<" + std::to_string(experts) + "xf32, 3>");
    std::string row = k.blockId('x');
    std::string tid = k.threadId();
    std::string warp = k.div(tid, k.index(32)), lane = k.rem(tid, k.index(32));
    std::string e = k.beginFor(warp, k.index(experts), k.index(4));
    std::string partial = k.fresh(), acc = k.fresh();
    std::string c = k.beginFor(lane, k.index(d), k.index(32), partial,
                               acc + " = " + k.f32(0.0) + " : f32");
    std::string xv = k.toF32(k.op("memref.load " + mem(x) + "[" + row + ", " +
                                  c + "] : " + ctx.memrefType(x)),
                             ctx.elements[x]);
    std::string wv = k.toF32(k.op("memref.load " + mem(router) + "[" + e +
                                  ", " + c + "] : " + ctx.memrefType(router)),
                             ctx.elements[router]);
    k.endFor(k.fadd(acc, k.fmul(xv, wv)) + " : f32");
    std::string total = k.warpSum(partial);
    k.beginIf(k.cmp("eq", lane, k.index(0)));
    k.line("memref.store " + total + ", " + logits + "[" + e + "] : memref<" +
           std::to_string(experts) + "xf32, 3>");
    k.endIf();
    k.endFor();
    k.line("gpu.barrier");
    k.beginIf(k.cmp("eq", tid, k.index(0)));
    std::string logitsType = "memref<" + std::to_string(experts) + "xf32, 3>";
    std::string chosenPrev;
    std::vector<std::string> chosen;
    for (int64_t rank = 0; rank < topK; ++rank) {
      // Best untaken expert: larger logit wins, ties to the lower index,
      // NaN ranks as -inf.
      std::string best = k.fresh(), bestVal = k.fresh();
      std::string results = k.fresh();
      std::string ex =
          k.beginFor(k.index(0), k.index(experts), k.index(1), results + ":2",
                     best + " = " + k.index(experts) + ", " + bestVal + " = " +
                         k.f32(-std::numeric_limits<double>::infinity()) +
                         " : index, f32");
      std::string l =
          k.op("memref.load " + logits + "[" + ex + "] : " + logitsType);
      std::string isNan = k.op("arith.cmpf uno, " + l + ", " + l + " : f32");
      l = k.select(isNan, k.f32(-std::numeric_limits<double>::infinity()), l,
                   "f32");
      std::string taken = k.op("arith.constant false");
      for (const std::string &prev : chosen)
        taken =
            k.op("arith.ori " + taken + ", " + k.cmp("eq", ex, prev) + " : i1");
      std::string better =
          k.op("arith.cmpf ogt, " + l + ", " + bestVal + " : f32");
      std::string first = k.cmp("eq", best, k.index(experts));
      std::string take =
          k.op("arith.andi " +
               k.op("arith.ori " + better + ", " + first + " : i1") + ", " +
               k.op("arith.xori " + taken + ", " + k.op("arith.constant true") +
                    " : i1") +
               " : i1");
      k.endFor(k.select(take, ex, best, "index") + ", " +
               k.select(take, l, bestVal, "f32") + " : index, f32");
      std::string pick = results + "#0";
      chosen.push_back(pick);
      std::string raw =
          k.op("memref.load " + logits + "[" + pick + "] : " + logitsType);
      std::string gate = k.fdiv(
          k.f32(1.0),
          k.fadd(k.f32(1.0), k.exp(k.op("arith.negf " + raw + " : f32"))));
      std::string bits = k.op("arith.extui " +
                              k.op("arith.bitcast " + gate + " : f32 to i32") +
                              " : i32 to i64");
      std::string e64 = k.op("arith.index_cast " + pick + " : index to i64");
      std::string packed =
          k.op("arith.ori " +
               k.op("arith.shli " + e64 + ", " + k.i64(32) + " : i64") + ", " +
               bits + " : i64");
      std::string at = k.add(k.mul(row, k.index(topK)), k.index(rank));
      k.line("memref.store " + packed + ", %scratch[" + at +
             "] : memref<?xi64>");
    }
    k.endIf();
    text += k.finish();
    GpuLaunch launch;
    launch.function = ctx.name() + "_select";
    launch.blockThreads = 128;
    launch.grid[0] = rowsGrid(x);
    addOperandParams(ctx, launch);
    GpuParam scratch{GpuParam::Kind::Scratch, static_cast<unsigned>(x)};
    scratch.perRow = topK;
    launch.params.push_back(scratch);
    out.steps.push_back({{launch}});
  }

  // Launch 2: one block sorts the pairs by expert.
  {
    KernelText k(ctx.name() + "_sort", ctx.memrefParams() + scratchParam,
                 kSortThreads);
    std::string countType =
        "memref<" + std::to_string(experts + 1) + "xi32, 3>";
    std::string chunkType =
        "memref<" + std::to_string(kSortThreads) + "xi32, 3>";
    std::string counts = k.workgroup(countType);
    std::string cursor = k.workgroup(countType);
    std::string chunkExperts = k.workgroup(chunkType);
    std::string tid = k.threadId();
    std::string pairs =
        k.op("memref.dim %scratch, " + k.index(0) + " : memref<?xi64>");
    std::string rowsX = k.op("memref.dim " + mem(x) + ", " + k.index(0) +
                             " : " + ctx.memrefType(x));
    pairs = k.mul(rowsX, k.index(topK));
    auto expertOf = [&](const std::string &i) {
      std::string packed =
          k.op("memref.load %scratch[" + i + "] : memref<?xi64>");
      std::string e =
          k.op("arith.shrui " + packed + ", " + k.i64(32) + " : i64");
      return std::pair{packed, k.op("arith.trunci " + e + " : i64 to i32")};
    };
    std::string i0 =
        k.beginFor(tid, k.index(experts + 1), k.index(kSortThreads));
    k.line("memref.store " + k.i32(0) + ", " + counts + "[" + i0 +
           "] : " + countType);
    k.endFor();
    k.line("gpu.barrier");
    std::string i1 = k.beginFor(tid, pairs, k.index(kSortThreads));
    auto [p1, e1] = expertOf(i1);
    std::string ei = k.op("arith.index_cast " + e1 + " : i32 to index");
    k.op("memref.atomic_rmw addi " + k.i32(1) + ", " + counts + "[" + ei +
         "] : (i32, " + countType + ") -> i32");
    k.endFor();
    k.line("gpu.barrier");
    k.beginIf(k.cmp("eq", tid, k.index(0)));
    std::string sum = k.fresh(), running = k.fresh();
    std::string e = k.beginFor(k.index(0), k.index(experts + 1), k.index(1),
                               sum, running + " = " + k.i32(0) + " : i32");
    k.line("memref.store " + running + ", " + cursor + "[" + e +
           "] : " + countType);
    std::string r64 = k.op("arith.extsi " + running + " : i32 to i64");
    k.line("memref.store " + r64 + ", " + mem(offsets) + "[" + e +
           "] : " + ctx.memrefType(offsets));
    std::string n =
        k.op("memref.load " + counts + "[" + e + "] : " + countType);
    k.endFor(k.op("arith.addi " + running + ", " + n + " : i32") + " : i32");
    k.endIf();
    k.line("gpu.barrier");
    // Stable placement, one chunk of pairs per round.
    std::string chunks =
        k.div(k.add(pairs, k.index(kSortThreads - 1)), k.index(kSortThreads));
    std::string ch = k.beginFor(k.index(0), chunks, k.index(1));
    std::string i = k.add(k.mul(ch, k.index(kSortThreads)), tid);
    std::string valid = k.cmp("ult", i, pairs);
    std::string safe = k.select(valid, i, k.index(0), "index");
    auto [packed, expert] = expertOf(safe);
    std::string mine = k.select(valid, expert, k.i32(-1), "i32");
    k.line("memref.store " + mine + ", " + chunkExperts + "[" + tid +
           "] : " + chunkType);
    k.line("gpu.barrier");
    std::string before = k.fresh(), seen = k.fresh();
    std::string j = k.beginFor(k.index(0), tid, k.index(1), before,
                               seen + " = " + k.index(0) + " : index");
    std::string other =
        k.op("memref.load " + chunkExperts + "[" + j + "] : " + chunkType);
    std::string same = k.cmp("eq", other, mine, "i32");
    k.endFor(k.select(same, k.add(seen, k.index(1)), seen, "index") +
             " : index");
    k.beginIf(valid);
    std::string ex = k.op("arith.index_cast " + expert + " : i32 to index");
    std::string base =
        k.op("arith.index_cast " +
             k.op("memref.load " + cursor + "[" + ex + "] : " + countType) +
             " : i32 to index");
    std::string dest = k.add(base, before);
    std::string token =
        k.op("arith.index_cast " + k.div(i, k.index(topK)) + " : index to i64");
    k.line("memref.store " + token + ", " + mem(indices) + "[" + dest +
           "] : " + ctx.memrefType(indices));
    std::string gate = k.op("arith.bitcast " +
                            k.op("arith.trunci " + packed + " : i64 to i32") +
                            " : i32 to f32");
    k.line("memref.store " + k.fromF32(gate, ctx.elements[gates]) + ", " +
           mem(gates) + "[" + dest + "] : " + ctx.memrefType(gates));
    k.endIf();
    k.line("gpu.barrier");
    k.beginIf(valid);
    std::string ex2 = k.op("arith.index_cast " + expert + " : i32 to index");
    k.op("memref.atomic_rmw addi " + k.i32(1) + ", " + cursor + "[" + ex2 +
         "] : (i32, " + countType + ") -> i32");
    k.endIf();
    k.line("gpu.barrier");
    k.endFor();
    text += k.finish();
    GpuLaunch launch;
    launch.function = ctx.name() + "_sort";
    launch.blockThreads = kSortThreads;
    addOperandParams(ctx, launch);
    GpuParam scratch{GpuParam::Kind::Scratch, static_cast<unsigned>(x)};
    scratch.perRow = topK;
    launch.params.push_back(scratch);
    out.steps.push_back({{launch}});
  }
  return success();
}

namespace {

/// Finds this block's (expert, first pair, pair count) from the offsets:
/// block y is the y-th (expert, row tile) in expert order. Returns the
/// names of (valid, expert, first, count).
struct TileOfBlock {
  std::string valid, expert, first, count;
};

TileOfBlock tileOfBlock(KernelText &k, const std::string &offsets,
                        const std::string &offsetsType, int64_t experts) {
  std::string target = k.blockId('y');
  std::string res = k.fresh();
  std::string seen = k.fresh(), found = k.fresh(), fe = k.fresh(),
              ff = k.fresh(), fc = k.fresh();
  std::string e =
      k.beginFor(k.index(0), k.index(experts), k.index(1), res + ":5",
                 seen + " = " + k.index(0) + ", " + found + " = " +
                     k.op("arith.constant false") + ", " + fe + " = " +
                     k.index(0) + ", " + ff + " = " + k.index(0) + ", " + fc +
                     " = " + k.index(0) + " : index, i1, index, index, index");
  std::string lo =
      k.op("arith.index_cast " +
           k.op("memref.load " + offsets + "[" + e + "] : " + offsetsType) +
           " : i64 to index");
  std::string hi = k.op("arith.index_cast " +
                        k.op("memref.load " + offsets + "[" +
                             k.add(e, k.index(1)) + "] : " + offsetsType) +
                        " : i64 to index");
  std::string n = k.sub(hi, lo);
  std::string tiles =
      k.div(k.add(n, k.index(kTileRows - 1)), k.index(kTileRows));
  std::string end = k.add(seen, tiles);
  std::string here = k.op("arith.andi " + k.cmp("ult", target, end) + ", " +
                          k.op("arith.xori " + found + ", " +
                               k.op("arith.constant true") + " : i1") +
                          " : i1");
  std::string first = k.add(lo, k.mul(k.sub(target, seen), k.index(kTileRows)));
  std::string count = k.minIndex(k.index(kTileRows), k.sub(hi, first));
  std::string nf = k.op("arith.ori " + found + ", " + here + " : i1");
  k.endFor(end + ", " + nf + ", " + k.select(here, e, fe, "index") + ", " +
           k.select(here, first, ff, "index") + ", " +
           k.select(here, count, fc, "index") +
           " : index, i1, index, index, index");
  return {res + "#1", res + "#2", res + "#3", res + "#4"};
}

} // namespace

LogicalResult
mlir::kiln::cuda::generateGroupedGemmKernel(const KernelContext &ctx,
                                            GpuKernel &out, std::string &text) {
  Operation *op = &ctx.kernel.getBody().front().front();
  auto up = dyn_cast<ExpertGateUpOp>(op);
  auto down = dyn_cast<ExpertDownOp>(op);
  if (!up && !down)
    return ctx.kernel.emitError("a grouped GEMM kernel holds one expert op");
  auto mem = [&](int i) { return "%o" + std::to_string(i); };
  int in = ctx.operandOf(up ? up.getInput() : down.getHidden());
  int indices =
      ctx.operandOf(up ? up.getTokenIndices() : down.getTokenIndices());
  int offsets =
      ctx.operandOf(up ? up.getExpertOffsets() : down.getExpertOffsets());
  int weight = ctx.operandOf(up ? up.getGateUp() : down.getDown());
  int result = ctx.numArgs;
  auto wType = ctx.types[weight];
  int64_t experts = wType.getDimSize(0), inner = wType.getDimSize(1),
          cols = wType.getDimSize(2);
  int64_t outCols = up ? cols / 2 : cols;
  std::string name = ctx.name();

  if (down)
    addExpertDownInit(ctx, ctx.operandOf(down.getAddend()), result, out, text);

  KernelText k(name + "_tiles", ctx.memrefParams(), kColumns);
  std::string stageType = "memref<" + std::to_string(kTileRows) + "x" +
                          std::to_string(kStage) + "xf32, 3>";
  std::string stage = k.workgroup(stageType);
  TileOfBlock tile =
      tileOfBlock(k, mem(offsets), ctx.memrefType(offsets), experts);
  k.beginIf(tile.valid);
  std::string tid = k.threadId();
  std::string col = k.add(k.mul(k.blockId('x'), k.index(kColumns)), tid);
  std::string colOk = k.cmp("ult", col, k.index(outCols));
  std::string safeCol = k.select(colOk, col, k.index(0), "index");
  int64_t accs = up ? 2 * kTileRows : kTileRows;
  std::string accTypes, carried, result0 = k.fresh();
  std::vector<std::string> accNames;
  for (int64_t i = 0; i < accs; ++i) {
    accNames.push_back(k.fresh());
    carried += (i ? ", " : "") + accNames.back() + " = " + k.f32(0.0);
    accTypes += i ? ", f32" : "f32";
  }
  std::string wMem = mem(weight), wTypeText = ctx.memrefType(weight);
  std::string chunk = k.beginFor(k.index(0), k.index(inner), k.index(kStage),
                                 result0 + ":" + std::to_string(accs),
                                 carried + " : " + accTypes);
  // Stage the tile's input rows [rows x kStage] as f32.
  for (int64_t idx0 = 0; idx0 < kTileRows * kStage; idx0 += kColumns) {
    std::string idx = k.add(k.index(idx0), tid);
    std::string r = k.div(idx, k.index(kStage));
    std::string cc = k.rem(idx, k.index(kStage));
    std::string src = k.add(chunk, cc);
    std::string ok = k.op("arith.andi " + k.cmp("ult", r, tile.count) + ", " +
                          k.cmp("ult", src, k.index(inner)) + " : i1");
    std::string pair = k.add(tile.first, r);
    std::string v = k.fresh();
    k.line(v + " = scf.if " + ok + " -> (f32) {");
    std::string row = pair;
    if (up) {
      row = k.op("arith.index_cast " +
                 k.op("memref.load " + mem(indices) + "[" + pair +
                      "] : " + ctx.memrefType(indices)) +
                 " : i64 to index");
    }
    std::string x = k.toF32(k.op("memref.load " + mem(in) + "[" + row + ", " +
                                 src + "] : " + ctx.memrefType(in)),
                            ctx.elements[in]);
    k.line("  scf.yield " + x + " : f32");
    k.line("} else {");
    k.line("  scf.yield " + k.f32(0.0) + " : f32");
    k.line("}");
    k.line("memref.store " + v + ", " + stage + "[" + r + ", " + cc +
           "] : " + stageType);
  }
  k.line("gpu.barrier");
  std::string innerRes = k.fresh();
  std::vector<std::string> innerNames;
  std::string innerCarried;
  for (int64_t i = 0; i < accs; ++i) {
    innerNames.push_back(k.fresh());
    innerCarried += (i ? ", " : "") + innerNames.back() + " = " + accNames[i];
  }
  std::string kk = k.beginFor(k.index(0), k.index(kStage), k.index(1),
                              innerRes + ":" + std::to_string(accs),
                              innerCarried + " : " + accTypes);
  std::string kIdx = k.add(chunk, kk);
  std::string kOk = k.cmp("ult", kIdx, k.index(inner));
  std::string kSafe = k.select(kOk, kIdx, k.index(0), "index");
  auto loadW = [&](const std::string &c) {
    return k.toF32(k.op("memref.load " + wMem + "[" + tile.expert + ", " +
                        kSafe + ", " + c + "] : " + wTypeText),
                   ctx.elements[weight]);
  };
  std::string wg = loadW(safeCol);
  std::string wu = up ? loadW(k.add(safeCol, k.index(outCols))) : "";
  std::string next;
  for (int64_t r = 0; r < kTileRows; ++r) {
    std::string x = k.op("memref.load " + stage + "[" + k.index(r) + ", " + kk +
                         "] : " + stageType);
    if (up) {
      next += (r ? ", " : "") + k.fadd(innerNames[2 * r], k.fmul(x, wg));
      next += ", " + k.fadd(innerNames[2 * r + 1], k.fmul(x, wu));
    } else {
      next += (r ? ", " : "") + k.fadd(innerNames[r], k.fmul(x, wg));
    }
  }
  k.endFor(next + " : " + accTypes);
  k.line("gpu.barrier");
  std::string yielded;
  for (int64_t i = 0; i < accs; ++i)
    yielded += (i ? ", " : "") + innerRes + "#" + std::to_string(i);
  k.endFor(yielded + " : " + accTypes);

  for (int64_t r = 0; r < kTileRows; ++r) {
    std::string ok = k.op("arith.andi " + k.cmp("ult", k.index(r), tile.count) +
                          ", " + colOk + " : i1");
    k.beginIf(ok);
    std::string pair = k.add(tile.first, k.index(r));
    if (up) {
      int gates = ctx.operandOf(up.getGates());
      std::string g = k.toF32(k.op("memref.load " + mem(gates) + "[" + pair +
                                   "] : " + ctx.memrefType(gates)),
                              ctx.elements[gates]);
      std::string y =
          k.swiglu(k.fmul(g, result0 + "#" + std::to_string(2 * r)),
                   k.fmul(g, result0 + "#" + std::to_string(2 * r + 1)));
      k.line("memref.store " + k.fromF32(y, ctx.elements[result]) + ", " +
             mem(result) + "[" + pair + ", " + col +
             "] : " + ctx.memrefType(result));
    } else {
      std::string token = k.op("arith.index_cast " +
                               k.op("memref.load " + mem(indices) + "[" + pair +
                                    "] : " + ctx.memrefType(indices)) +
                               " : i64 to index");
      // Several pairs of one token (top_k > 1) add into the same row.
      k.op("memref.atomic_rmw addf " + result0 + "#" + std::to_string(r) +
           ", " + mem(result) + "[" + token + ", " + col + "] : (f32, " +
           ctx.memrefType(result) + ") -> f32");
    }
    k.endIf();
  }
  k.endIf();
  text += k.finish();

  GpuLaunch launch;
  launch.function = name + "_tiles";
  launch.blockThreads = kColumns;
  launch.grid[0] = fixedGrid((outCols + kColumns - 1) / kColumns);
  // At most ceil(pairs / rows) tiles plus one partial tile per expert.
  GridExtent y = rowsGrid(indices, kTileRows);
  y.constant = experts * kTileRows;
  launch.grid[1] = y;
  addOperandParams(ctx, launch);
  out.steps.push_back({{launch}});
  return success();
}
