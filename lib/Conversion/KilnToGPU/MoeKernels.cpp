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
#include "GpuEmitter.h"

#include "dialects/kiln/KilnOps.h"

#include <limits>

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
                                                     gpu::GPUModuleOp module) {
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
  Builder types(module.getContext());
  Type f32 = types.getF32Type(), i32 = types.getI32Type(),
       i64 = types.getI64Type();
  Attribute shared = types.getI64IntegerAttr(3);
  auto workgroupOf = [&](int64_t n, Type element) {
    return MemRefType::get({n}, element, MemRefLayoutAttrInterface(), shared);
  };
  // Every operand, then the pairs' scratch: (expert << 32) | gate bits.
  SmallVector<Type> params;
  for (unsigned i = 0; i < ctx.operands.size(); ++i)
    params.push_back(ctx.memrefTypeOf(i));
  params.push_back(MemRefType::get({ShapedType::kDynamic}, i64));
  auto scratchParam = [&] {
    GpuParam scratch{GpuParam::Kind::Scratch, static_cast<unsigned>(x)};
    scratch.perRow = topK;
    return scratch;
  };
  double negInf = -std::numeric_limits<double>::infinity();

  // Launch 1: logits (a warp per expert), then top-k and gates in thread 0.
  {
    std::string name = ctx.name() + "_select";
    gpu::GPUFuncOp fn =
        GpuEmitter::createKernel(module, ctx.kernel.getLoc(), name, params,
                                 {workgroupOf(experts, f32)}, 128);
    OpBuilder builder(module.getContext());
    GpuEmitter e(builder, fn);
    Value logits = fn.getWorkgroupAttributions()[0];
    Value scratch = fn.getArgument(ctx.operands.size());
    Value row = e.blockId(gpu::Dimension::x);
    Value tid = e.threadId();
    Value warp = e.divIndex(tid, e.index(32));
    Value lane = e.remIndex(tid, e.index(32));
    e.loopStep(warp, e.index(experts), e.index(4), [&](Value expert) {
      Value partial =
          e.loopWith(lane, e.index(d), e.index(32), {e.f32(0.0)},
                     [&](Value c, ValueRange acc) -> SmallVector<Value> {
                       Value xv = e.load(fn.getArgument(x), {row, c});
                       Value wv = e.load(fn.getArgument(router), {expert, c});
                       return {e.add(acc[0], e.mul(xv, wv))};
                     })[0];
      Value total = e.warpSum(partial);
      e.when(e.cmpIndex(arith::CmpIPredicate::eq, lane, e.index(0)),
             [&] { e.store(total, logits, {expert}); });
    });
    e.barrier();
    e.when(e.cmpIndex(arith::CmpIPredicate::eq, tid, e.index(0)), [&] {
      SmallVector<Value> chosen;
      for (int64_t rank = 0; rank < topK; ++rank) {
        // Best untaken expert: larger logit wins, ties to the lower index,
        // NaN ranks as -inf.
        Value pick = e.loopWith(
            e.index(0), e.index(experts), e.index(1),
            {e.index(experts), e.f32(negInf)},
            [&](Value ex, ValueRange best) -> SmallVector<Value> {
              Value l = e.load(logits, {ex});
              Value isNan = e.cmpF(arith::CmpFPredicate::UNO, l, l);
              l = e.select(isNan, e.f32(negInf), l);
              Value taken = e.boolean(false);
              for (Value prev : chosen)
                taken = e.orI(taken,
                              e.cmpIndex(arith::CmpIPredicate::eq, ex, prev));
              Value better = e.cmpF(arith::CmpFPredicate::OGT, l, best[1]);
              Value first = e.cmpIndex(arith::CmpIPredicate::eq, best[0],
                                       e.index(experts));
              Value take =
                  e.andI(e.orI(better, first), e.xorI(taken, e.boolean(true)));
              return {e.select(take, ex, best[0]), e.select(take, l, best[1])};
            })[0];
        chosen.push_back(pick);
        Value raw = e.load(logits, {pick});
        Value gate = e.div(e.f32(1.0), e.add(e.f32(1.0), e.exp(e.negF(raw))));
        Value bits = e.extUI(e.bitcast(gate, i32), i64);
        Value packed = e.orI(e.shlI(e.toI64(pick), e.i64(32)), bits);
        Value at = e.addIndex(e.mulIndex(row, topK), e.index(rank));
        e.store(packed, scratch, {at});
      }
    });
    GpuLaunch launch;
    launch.function = name;
    launch.blockThreads = 128;
    launch.grid[0] = rowsGrid(x);
    addOperandParams(ctx, launch);
    launch.params.push_back(scratchParam());
    out.steps.push_back({{launch}});
  }

  // Launch 2: one block sorts the pairs by expert (stable).
  {
    std::string name = ctx.name() + "_sort";
    MemRefType countType = workgroupOf(experts + 1, i32);
    gpu::GPUFuncOp fn = GpuEmitter::createKernel(
        module, ctx.kernel.getLoc(), name, params,
        {countType, countType, workgroupOf(kSortThreads, i32)}, kSortThreads);
    OpBuilder builder(module.getContext());
    GpuEmitter e(builder, fn);
    Value counts = fn.getWorkgroupAttributions()[0];
    Value cursor = fn.getWorkgroupAttributions()[1];
    Value chunkExperts = fn.getWorkgroupAttributions()[2];
    Value scratch = fn.getArgument(ctx.operands.size());
    Value tid = e.threadId();
    Value pairs = e.mulIndex(e.dim(fn.getArgument(x), 0), topK);
    auto expertOf = [&](Value i) {
      Value packed = e.load(scratch, {i});
      return std::pair{packed, e.truncI(e.shrUI(packed, e.i64(32)), i32)};
    };
    Value step = e.index(kSortThreads);
    e.loopStep(tid, e.index(experts + 1), step,
               [&](Value i) { e.store(e.i32(0), counts, {i}); });
    e.barrier();
    e.loopStep(tid, pairs, step, [&](Value i) {
      e.atomicAdd(e.i32(1), counts, {e.toIndex(expertOf(i).second)});
    });
    e.barrier();
    e.when(e.cmpIndex(arith::CmpIPredicate::eq, tid, e.index(0)), [&] {
      e.loopWith(e.index(0), e.index(experts + 1), e.index(1), {e.i32(0)},
                 [&](Value ex, ValueRange running) -> SmallVector<Value> {
                   e.store(running[0], cursor, {ex});
                   e.store(e.extSI(running[0], i64), fn.getArgument(offsets),
                           {ex});
                   return {e.addI(running[0], e.load(counts, {ex}))};
                 });
    });
    e.barrier();
    // Stable placement, one chunk of pairs per round.
    Value chunks =
        e.divIndex(e.addIndex(pairs, e.index(kSortThreads - 1)), step);
    e.loopStep(e.index(0), chunks, e.index(1), [&](Value ch) {
      Value i = e.addIndex(e.mulIndex(ch, kSortThreads), tid);
      Value valid = e.cmpIndex(arith::CmpIPredicate::ult, i, pairs);
      Value safe = e.select(valid, i, e.index(0));
      auto [packed, expert] = expertOf(safe);
      Value mine = e.select(valid, expert, e.i32(-1));
      e.store(mine, chunkExperts, {tid});
      e.barrier();
      Value before = e.loopWith(
          e.index(0), tid, e.index(1), {e.index(0)},
          [&](Value j, ValueRange seen) -> SmallVector<Value> {
            Value same = e.cmpIndex(arith::CmpIPredicate::eq,
                                    e.load(chunkExperts, {j}), mine);
            return {e.select(same, e.addIndex(seen[0], e.index(1)), seen[0])};
          })[0];
      e.when(valid, [&] {
        Value base = e.toIndex(e.load(cursor, {e.toIndex(expert)}));
        Value dest = e.addIndex(base, before);
        e.store(e.toI64(e.divIndex(i, e.index(topK))), fn.getArgument(indices),
                {dest});
        Value gate = e.bitcast(e.truncI(packed, i32), f32);
        e.store(gate, fn.getArgument(gates), {dest});
      });
      e.barrier();
      e.when(valid,
             [&] { e.atomicAdd(e.i32(1), cursor, {e.toIndex(expert)}); });
      e.barrier();
    });
    GpuLaunch launch;
    launch.function = name;
    launch.blockThreads = kSortThreads;
    addOperandParams(ctx, launch);
    launch.params.push_back(scratchParam());
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
