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
                                         gpu::GPUModuleOp module) {
  std::string name = ctx.name() + "_init";
  int64_t cols = ctx.width(result);
  gpu::GPUFuncOp fn =
      GpuEmitter::createKernel(module, ctx.kernel.getLoc(), name,
                               ctx.memrefTypes(), /*workgroup=*/{}, 128);
  OpBuilder builder(module.getContext());
  GpuEmitter e(builder, fn);
  Value row = e.blockId(gpu::Dimension::x);
  e.loopStep(e.threadId(), e.index(cols), e.index(128), [&](Value c) {
    e.store(e.load(fn.getArgument(addend), {row, c}), fn.getArgument(result),
            {row, c});
  });
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
  // Expert parallelism: the rank's group holds `local` experts from
  // `rank * groups / ranks * local`; the select launch files every other
  // expert's pairs under key `local`, which the sort puts last as token 0
  // with gate 0.
  int rankOperand = r.getRank() ? ctx.operandOf(r.getRank()) : -1;
  if (r.getExpertGroups() && rankOperand < 0)
    return r.emitOpError("is expert-parallel but its rank is not an operand "
                         "of the kernel");
  int indices = ctx.operandOf(r.getTokenIndices()),
      offsets = ctx.operandOf(r.getExpertOffsets()),
      gates = ctx.operandOf(r.getGates());
  if (indices < 0 || offsets < 0 || gates < 0)
    return r.emitOpError("every router result must leave the kernel");
  int64_t experts = ctx.types[router].getDimSize(0);
  int64_t local = ctx.types[offsets].getDimSize(0) - 1;
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
        Value key = pick;
        if (r.getExpertGroups()) {
          Value rank =
              e.toIndex(e.load(fn.getArgument(rankOperand), {e.index(0)}));
          Value group = e.divIndex(
              e.mulIndex(rank, static_cast<int64_t>(*r.getExpertGroups())),
              e.index(static_cast<int64_t>(*r.getRanks())));
          Value first = e.mulIndex(group, local);
          Value held =
              e.andI(e.cmpIndex(arith::CmpIPredicate::uge, pick, first),
                     e.cmpIndex(arith::CmpIPredicate::ult, pick,
                                e.addIndex(first, e.index(local))));
          key = e.select(held, e.subIndex(pick, first), e.index(local));
        }
        Value packed = e.orI(e.shlI(e.toI64(key), e.i64(32)), bits);
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
    // Keys 0..local-1: the rank's experts; key `local` (expert-parallel
    // only): every other expert's pairs, placed after them.
    MemRefType countType = workgroupOf(local + 1, i32);
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
    e.loopStep(tid, e.index(local + 1), step,
               [&](Value i) { e.store(e.i32(0), counts, {i}); });
    e.barrier();
    e.loopStep(tid, pairs, step, [&](Value i) {
      e.atomicAdd(e.i32(1), counts, {e.toIndex(expertOf(i).second)});
    });
    e.barrier();
    e.when(e.cmpIndex(arith::CmpIPredicate::eq, tid, e.index(0)), [&] {
      e.loopWith(e.index(0), e.index(local + 1), e.index(1), {e.i32(0)},
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
      std::pair<Value, Value> packedExpert = expertOf(safe);
      Value packed = packedExpert.first, expert = packedExpert.second;
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
        Value token = e.toI64(e.divIndex(i, e.index(topK)));
        Value gate = e.bitcast(e.truncI(packed, i32), f32);
        if (r.getExpertGroups()) {
          Value other = e.cmpIndex(arith::CmpIPredicate::eq, e.toIndex(expert),
                                   e.index(local));
          token = e.select(other, e.i64(0), token);
          gate = e.select(other, e.f32(0.0), gate);
        }
        e.store(token, fn.getArgument(indices), {dest});
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

using arith::CmpIPredicate;

/// This block's (expert, first pair, pair count) from the offsets: block y
/// is the y-th (expert, row tile) in expert order.
struct TileOfBlock {
  Value valid, expert, first, count;
};

TileOfBlock tileOfBlock(GpuEmitter &e, Value offsets, int64_t experts) {
  Value target = e.blockId(gpu::Dimension::y);
  Value zero = e.index(0);
  ValueRange found = e.loopWith(
      zero, e.index(experts), e.index(1),
      {zero, e.boolean(false), zero, zero, zero},
      [&](Value ex, ValueRange a) -> SmallVector<Value> {
        Value seen = a[0], done = a[1];
        Value lo = e.loadIndex(offsets, {ex});
        Value hi = e.loadIndex(offsets, {e.addIndex(ex, e.index(1))});
        Value tiles =
            e.divIndex(e.addIndex(e.subIndex(hi, lo), e.index(kTileRows - 1)),
                       e.index(kTileRows));
        Value end = e.addIndex(seen, tiles);
        Value here = e.andI(e.cmpIndex(CmpIPredicate::ult, target, end),
                            e.xorI(done, e.boolean(true)));
        Value first = e.addIndex(
            lo, e.mulI(e.subIndex(target, seen), e.index(kTileRows)));
        Value count = e.minUI(e.index(kTileRows), e.subIndex(hi, first));
        return {end, e.orI(done, here), e.select(here, ex, a[2]),
                e.select(here, first, a[3]), e.select(here, count, a[4])};
      });
  return {found[1], found[2], found[3], found[4]};
}

} // namespace

LogicalResult mlir::kiln::cuda::generateGroupedGemmKernel(
    const KernelContext &ctx, GpuKernel &out, gpu::GPUModuleOp module) {
  Operation *op = &ctx.kernel.getBody().front().front();
  auto up = dyn_cast<ExpertGateUpOp>(op);
  auto down = dyn_cast<ExpertDownOp>(op);
  auto pairs = dyn_cast<ExpertDownPairsOp>(op);
  if (!up && !down && !pairs)
    return ctx.kernel.emitError("a grouped GEMM kernel holds one expert op");
  int in = ctx.operandOf(up     ? up.getInput()
                         : down ? down.getHidden()
                                : pairs.getHidden());
  // expert_down_pairs writes pair i's row i: no token indices, no addend.
  int indices = up     ? ctx.operandOf(up.getTokenIndices())
                : down ? ctx.operandOf(down.getTokenIndices())
                       : -1;
  int offsets = ctx.operandOf(up     ? up.getExpertOffsets()
                              : down ? down.getExpertOffsets()
                                     : pairs.getExpertOffsets());
  int weight = ctx.operandOf(up     ? up.getGateUp()
                             : down ? down.getDown()
                                    : pairs.getDown());
  int result = ctx.numArgs;
  auto wType = ctx.types[weight];
  int64_t experts = wType.getDimSize(0), inner = wType.getDimSize(1),
          cols = wType.getDimSize(2);
  int64_t outCols = up ? cols / 2 : cols;
  std::string name = ctx.name();

  if (down)
    addExpertDownInit(ctx, ctx.operandOf(down.getAddend()), result, out,
                      module);

  MLIRContext *context = module.getContext();
  auto stageType = MemRefType::get(
      {kTileRows, kStage}, Float32Type::get(context),
      MemRefLayoutAttrInterface(), Builder(context).getI64IntegerAttr(3));
  gpu::GPUFuncOp fn =
      GpuEmitter::createKernel(module, ctx.kernel.getLoc(), name + "_tiles",
                               ctx.memrefTypes(), {stageType}, kColumns);
  OpBuilder builder(context);
  GpuEmitter e(builder, fn);
  auto mem = [&](int i) { return fn.getArgument(i); };
  Value stage = fn.getWorkgroupAttributions()[0];
  TileOfBlock tile = tileOfBlock(e, mem(offsets), experts);
  e.when(tile.valid, [&] {
    Value tid = e.threadId();
    Value col = e.addIndex(
        e.mulI(e.blockId(gpu::Dimension::x), e.index(kColumns)), tid);
    Value colOk = e.cmpIndex(CmpIPredicate::ult, col, e.index(outCols));
    Value safeCol = e.select(colOk, col, e.index(0));
    int64_t accs = up ? 2 * kTileRows : kTileRows;
    SmallVector<Value> zeros(accs, e.f32(0.0));
    ValueRange sums = e.loopWith(
        e.index(0), e.index(inner), e.index(kStage), zeros,
        [&](Value chunk, ValueRange acc) -> SmallVector<Value> {
          // Stage the tile's input rows [rows x kStage] as f32.
          for (int64_t idx0 = 0; idx0 < kTileRows * kStage; idx0 += kColumns) {
            Value idx = e.addIndex(e.index(idx0), tid);
            Value r = e.divIndex(idx, e.index(kStage));
            Value cc = e.remIndex(idx, e.index(kStage));
            Value src = e.addIndex(chunk, cc);
            Value ok =
                e.andI(e.cmpIndex(CmpIPredicate::ult, r, tile.count),
                       e.cmpIndex(CmpIPredicate::ult, src, e.index(inner)));
            Value pair = e.addIndex(tile.first, r);
            Value v = e.ifElse(
                ok, {e.b->getF32Type()},
                [&]() -> SmallVector<Value> {
                  Value row = up ? e.loadIndex(mem(indices), {pair}) : pair;
                  return {e.load(mem(in), {row, src})};
                },
                [&]() -> SmallVector<Value> { return {e.f32(0.0)}; })[0];
            e.store(v, stage, {r, cc});
          }
          e.barrier();
          ValueRange next = e.loopWith(
              e.index(0), e.index(kStage), e.index(1), acc,
              [&](Value kk, ValueRange running) -> SmallVector<Value> {
                Value kIdx = e.addIndex(chunk, kk);
                Value kOk =
                    e.cmpIndex(CmpIPredicate::ult, kIdx, e.index(inner));
                Value kSafe = e.select(kOk, kIdx, e.index(0));
                auto loadW = [&](Value c) {
                  return e.load(mem(weight), {tile.expert, kSafe, c});
                };
                Value wGate = loadW(safeCol);
                Value wUp =
                    up ? loadW(e.addIndex(safeCol, e.index(outCols))) : Value();
                SmallVector<Value> updated;
                for (int64_t r = 0; r < kTileRows; ++r) {
                  Value x = e.load(stage, {e.index(r), kk});
                  if (up) {
                    updated.push_back(e.add(running[2 * r], e.mul(x, wGate)));
                    updated.push_back(e.add(running[2 * r + 1], e.mul(x, wUp)));
                  } else {
                    updated.push_back(e.add(running[r], e.mul(x, wGate)));
                  }
                }
                return updated;
              });
          e.barrier();
          return SmallVector<Value>(next);
        });

    for (int64_t r = 0; r < kTileRows; ++r) {
      Value ok =
          e.andI(e.cmpIndex(CmpIPredicate::ult, e.index(r), tile.count), colOk);
      e.when(ok, [&] {
        Value pair = e.addIndex(tile.first, e.index(r));
        if (up) {
          Value g = e.load(mem(ctx.operandOf(up.getGates())), {pair});
          Value y = e.swiglu(e.mul(g, sums[2 * r]), e.mul(g, sums[2 * r + 1]));
          e.store(y, mem(result), {pair, col});
        } else if (pairs) {
          e.store(sums[r], mem(result), {pair, col});
        } else {
          Value token = e.loadIndex(mem(indices), {pair});
          // Several pairs of one token (top_k > 1) add into the same row.
          memref::AtomicRMWOp::create(*e.b, e.loc, arith::AtomicRMWKind::addf,
                                      sums[r], mem(result),
                                      ValueRange{token, col});
        }
      });
    }
  });

  GpuLaunch launch;
  launch.function = name + "_tiles";
  launch.blockThreads = kColumns;
  launch.grid[0] = fixedGrid((outCols + kColumns - 1) / kColumns);
  // At most ceil(pairs / rows) tiles plus one partial tile per expert.
  GridExtent y = rowsGrid(pairs ? in : indices, kTileRows);
  y.constant = experts * kTileRows;
  launch.grid[1] = y;
  addOperandParams(ctx, launch);
  out.steps.push_back({{launch}});
  return success();
}
