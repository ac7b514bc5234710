//===- GemmKernel.cpp - TMA + wgmma GEMMs with fused epilogues ------------===//
//
// y = x · Wᵀ with x [M, K] and W [N, K] in bf16 (both K-contiguous, the
// checkpoint layout), f32 accumulation, on the Hopper pipeline:
//
// - warp specialization: warpgroup 0 produces (one thread issues TMA loads
//   of the A and B tiles into a ring of shared-memory stages), the other one
//   or two warpgroups consume (wgmma.mma_async on 64-row slices), and
//   setmaxnreg moves registers from the producer to the consumers;
// - each stage has a "full" mbarrier (TMA completes it with the transaction
//   byte count) and an "empty" mbarrier (each consumer warpgroup arrives once
//   its wgmma group that read the stage has retired: wgmma.wait_group 1 keeps
//   one group in flight);
// - tiles are 128-byte swizzled, K-major for both operands, so the wgmma
//   descriptors are built here (start address, stride 1024 B between 8-row
//   groups, swizzle mode 1) and step 32 bytes per k16 slice, which is why
//   the kernel uses nvvm.wgmma.mma_async rather than nvgpu.warpgroup.mma
//   (the latter assumes an N-contiguous B);
// - the epilogue works on the accumulator fragments in registers: thread
//   (warp w, lane l) holds rows 16w + l/4 (+8) and column pairs 8j + 2(l%4),
//   so RoPE's interleaved pairs, SwiGLU's gate/up (loaded as two half tiles
//   so a thread holds both) and the per-head QK norm (a quad shuffle) need no
//   shared memory.
//
// Two tile shapes per GEMM: decode (≤ 64 rows: one consumer warpgroup, 32-
// to 128-column tiles so more CTAs stream the weight, and as many stages as
// shared memory holds) and prefill (two consumer warpgroups, 128×256 or
// 128×128 tiles, 4 stages).
//
//===----------------------------------------------------------------------===//

#include "Generators.h"
#include "GpuEmitter.h"
#include "Wgmma.h"

#include "dialects/kiln/KilnOps.h"

#include <numeric>

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

namespace {

using namespace mlir::kiln::cuda::wgmma;

constexpr int64_t kDecodeRows = 64;
/// Row tiles per band of the persistent tile order.
constexpr int64_t kBandM = 8;
/// Dynamic shared memory a block may opt into on sm_90.
constexpr int64_t kSharedLimit = 232448;

struct GemmShape {
  LinearOp linear;
  Operation *epilogue = nullptr; // PackedSwiGluOp or QkvEpilogueOp
  int a = -1, w = -1, positions = -1;
  int64_t n = 0, k = 0;
};

struct TileConfig {
  int64_t consumers, tileN, stages;
  int64_t tileM() const { return 64 * consumers; }
};

using arith::CmpIPredicate;

class GemmBuilder {
public:
  GemmBuilder(const KernelContext &ctx, const GemmShape &shape,
              TileConfig config)
      : ctx(ctx), s(shape), c(config) {}

  int64_t blockThreads() const { return 128 * (1 + c.consumers); }
  int64_t boxRowsB() const { return swiglu() ? c.tileN / 2 : c.tileN; }
  int64_t stageBytes() const { return (c.tileM() + c.tileN) * kTileK * 2; }
  int64_t dynamicSharedBytes() const { return c.stages * stageBytes() + 1024; }

  void build(gpu::GPUModuleOp module, StringRef name) {
    MLIRContext *context = module.getContext();
    OpBuilder builder(context);
    fn = createTmaKernel(module, ctx.kernel.getLoc(), name, /*maps=*/2,
                         ctx.memrefTypes(), blockThreads());
    GpuEmitter emitter(builder, fn);
    e = &emitter;
    barriers = barrierType(context, c.stages);
    prologue();
    e->ifThenElse(
        e->cmpIndex(CmpIPredicate::eq, wg, e->index(0)), [&] { producer(); },
        [&] { consumer(); });
    e = nullptr;
  }

private:
  const KernelContext &ctx;
  const GemmShape &s;
  TileConfig c;
  gpu::GPUFuncOp fn;
  GpuEmitter *e = nullptr;
  nvgpu::MBarrierGroupType barriers;
  Value mapA, mapB, wg, lane, mBase, tileX, aligned, padding, rows, full, empty,
      dyn;
  Value tilesN, tilesM, totalTiles, gridSize;

  Value operand(int i) { return fn.getArgument(2 + i); }
  Value kTiles() { return e->index((s.k + kTileK - 1) / kTileK); }
  bool swiglu() const { return isa_and_nonnull<PackedSwiGluOp>(s.epilogue); }

  /// The loop over this block's tiles, carrying the ring iteration count
  /// across tiles; sets mBase and tileX for `body`, which gets the count at
  /// the tile's start.
  void forEachTile(function_ref<void(Value)> body) {
    e->loopWith(
        e->blockId(gpu::Dimension::x), totalTiles, gridSize, {e->index(0)},
        [&](Value t, ValueRange carried) -> SmallVector<Value> {
          // Tiles go in bands of kBandM row tiles, row tile fastest: the
          // blocks at work share a few weight tiles and a band's activation
          // rows, which stay in L2, so a large GEMM reads its weight about
          // tilesM / kBandM times instead of once per pair of row tiles
          // (one band for decode).
          Value bandTiles = e->mulI(e->index(kBandM), tilesN);
          Value band = e->divIndex(t, bandTiles);
          Value firstM = e->mulI(band, e->index(kBandM));
          Value rowsInBand =
              e->minUI(e->index(kBandM), e->subIndex(tilesM, firstM));
          Value local = e->remIndex(t, bandTiles);
          mBase = e->mulI(e->addIndex(firstM, e->remIndex(local, rowsInBand)),
                          e->index(c.tileM()));
          tileX = e->divIndex(local, rowsInBand);
          Value ring = carried[0];
          body(ring);
          return {e->addIndex(ring, kTiles())};
        });
  }

  void prologue() {
    MLIRContext *context = fn.getContext();
    mapA = tensorMapOf(*e, fn.getArgument(0),
                       tensorMapType(context, {c.tileM(), kTileK}));
    mapB = tensorMapOf(*e, fn.getArgument(1),
                       tensorMapType(context, {boxRowsB(), kTileK}));
    rows = e->dim(operand(s.a), 0);
    SharedBase arena = alignedDynamicShared(*e);
    dyn = arena.memory;
    padding = arena.pad;
    aligned = arena.aligned;
    full = nvgpu::MBarrierCreateOp::create(*e->b, e->loc, barriers);
    empty = nvgpu::MBarrierCreateOp::create(*e->b, e->loc, barriers);
    // Persistent: the grid is one block per SM; block b takes tiles b,
    // b + grid, ... in the banded order of forEachTile.
    tilesN = e->index(tilesAcross());
    tilesM = e->divIndex(e->addIndex(rows, e->index(c.tileM() - 1)),
                         e->index(c.tileM()));
    totalTiles = e->mulI(tilesM, tilesN);
    gridSize = e->gridDim(gpu::Dimension::x);
    Value tid = e->threadId();
    wg = e->divIndex(tid, e->index(128));
    lane = e->remIndex(tid, e->index(128));
    e->when(e->cmpIndex(CmpIPredicate::eq, tid, e->index(0)), [&] {
      e->loopStep(e->index(0), e->index(c.stages), e->index(1), [&](Value st) {
        nvgpu::MBarrierInitOp::create(*e->b, e->loc, full, e->index(1), st,
                                      /*predicate=*/nullptr);
        nvgpu::MBarrierInitOp::create(*e->b, e->loc, empty,
                                      e->index(c.consumers), st,
                                      /*predicate=*/nullptr);
      });
      NVVM::FenceMbarrierInitOp::create(*e->b, e->loc);
      nvgpu::TmaPrefetchOp::create(*e->b, e->loc, mapA, /*predicate=*/nullptr);
      nvgpu::TmaPrefetchOp::create(*e->b, e->loc, mapB, /*predicate=*/nullptr);
    });
    e->barrier();
  }

  Value phaseOf(Value iter, bool flip) {
    return parity(*e, iter, c.stages, flip);
  }

  void producer() {
    NVVM::SetMaxRegisterOp::create(*e->b, e->loc, 40,
                                   NVVM::SetMaxRegisterAction::decrease);
    e->when(e->cmpIndex(CmpIPredicate::eq, lane, e->index(0)), [&] {
      forEachTile([&](Value ring) {
        e->loopStep(e->index(0), kTiles(), e->index(1), [&](Value it) {
          Value g = e->addIndex(ring, it);
          Value st = e->remIndex(g, e->index(c.stages));
          // A fresh "empty" barrier passes parity 1: the first round never
          // waits.
          waitParity(*e, empty, st, phaseOf(g, /*flip=*/true));
          nvgpu::MBarrierArriveExpectTxOp::create(*e->b, e->loc, full,
                                                  e->index(stageBytes()), st,
                                                  /*predicate=*/nullptr);
          Value offA =
              e->addIndex(padding, e->mulI(st, e->index(stageBytes())));
          Value offB = e->addIndex(offA, e->index(c.tileM() * kTileK * 2));
          Value kc = e->mulI(it, e->index(kTileK));
          auto load = [&](Value map, Value offset, int64_t boxRows, Value row) {
            Value buffer = viewTile(*e, dyn, offset, {boxRows, kTileK});
            nvgpu::TmaAsyncLoadOp::create(*e->b, e->loc, buffer, full, map,
                                          ValueRange{kc, row}, st,
                                          /*multicastMask=*/nullptr,
                                          /*predicate=*/nullptr);
          };
          load(mapA, offA, c.tileM(), mBase);
          int64_t boxB = boxRowsB();
          Value nRow = e->mulI(tileX, e->index(boxB));
          load(mapB, offB, boxB, nRow);
          if (swiglu()) {
            // The up half of the tile: the same output columns, F rows
            // further.
            Value upRow = e->addIndex(nRow, e->index(s.n / 2));
            Value offUp = e->addIndex(offB, e->index(boxB * kTileK * 2));
            load(mapB, offUp, boxB, upRow);
          }
        });
      });
    });
  }

  void consumer() {
    MLIRContext *context = fn.getContext();
    NVVM::SetMaxRegisterOp::create(*e->b, e->loc, 232,
                                   NVVM::SetMaxRegisterAction::increase);
    Value cw = e->subIndex(wg, e->index(1));
    Value base64 = e->toI64(aligned);
    forEachTile([&](Value ring) {
      // One K tile; the first of an output tile overwrites the accumulator
      // (scale-d 0), so no zeroing is needed between tiles.
      auto kStep = [&](Value it, Value accIn, bool first) {
        Value g = e->addIndex(ring, it);
        Value st = e->remIndex(g, e->index(c.stages));
        waitParity(*e, full, st, phaseOf(g, /*flip=*/false));
        Value stage = addressOf(*e, base64, st, stageBytes());
        Value aAddr = addressOf(*e, stage, cw, 64 * kTileK * 2);
        Value bAddr = e->addI(stage, e->i64(c.tileM() * kTileK * 2));
        Value descA = descriptor(*e, aAddr), descB = descriptor(*e, bAddr);
        NVVM::WgmmaFenceAlignedOp::create(*e->b, e->loc);
        Value running = mmaKTile(*e, descA, descB, accIn, c.tileN,
                                 NVVM::MMALayout::col, first);
        NVVM::WgmmaGroupSyncAlignedOp::create(*e->b, e->loc);
        // Keep this group in flight; the previous one has retired, so its
        // stage can be refilled.
        NVVM::WgmmaWaitGroupSyncOp::create(*e->b, e->loc, 1);
        if (!first)
          e->when(e->cmpIndex(CmpIPredicate::eq, lane, e->index(0)), [&] {
            Value prev = e->remIndex(e->addIndex(g, e->index(c.stages - 1)),
                                     e->index(c.stages));
            arrive(*e, empty, prev);
          });
        return running;
      };
      Value result =
          accumulateOverK(*e, kTiles(), accType(context, c.tileN), kStep);
      NVVM::WgmmaWaitGroupSyncOp::create(*e->b, e->loc, 0);
      // The tile's last stage is free too: the next tile's loads may use it
      // while this one's epilogue runs.
      e->when(e->cmpIndex(CmpIPredicate::eq, lane, e->index(0)), [&] {
        Value last =
            e->remIndex(e->addIndex(ring, e->subIndex(kTiles(), e->index(1))),
                        e->index(c.stages));
        arrive(*e, empty, last);
      });
      epilogue(result, cw);
    });
  }

  /// Output tiles across N.
  int64_t tilesAcross() const {
    int64_t columns = swiglu() ? s.n / 2 : s.n;
    int64_t perTile = swiglu() ? c.tileN / 2 : c.tileN;
    return (columns + perTile - 1) / perTile;
  }

  // Fragment coordinates.
  Value row0, row1, pairCol; // pairCol = 2 * (l % 4)
  Value quad;                // l % 4

  Value fragment(Value accValue, int64_t i) {
    return LLVM::ExtractValueOp::create(*e->b, e->loc, accValue,
                                        ArrayRef<int64_t>{i});
  }

  void storePair(Value v0, Value v1, int operandIdx, Value row, Value col,
                 int64_t width) {
    Type element = ctx.elementTypes[operandIdx];
    Value ok = e->andI(e->cmpIndex(CmpIPredicate::ult, row, rows),
                       e->cmpIndex(CmpIPredicate::ult, col, e->index(width)));
    e->when(ok, [&] {
      Value a = e->truncF(v0, element), b = e->truncF(v1, element);
      Value pair = vector::FromElementsOp::create(
          *e->b, e->loc, VectorType::get({2}, element), ValueRange{a, b});
      e->vectorStore(pair, operand(operandIdx), {row, col}, /*alignment=*/0);
    });
  }

  void epilogue(Value acc, Value cw) {
    FragmentCoords frag = fragmentsOf(*e, lane, mBase, cw);
    quad = e->remIndex(e->remIndex(lane, e->index(32)), e->index(4));
    pairCol = frag.pairColumn;
    row0 = frag.rows[0];
    row1 = frag.rows[1];
    int64_t blocks = c.tileN / 8;
    if (!s.epilogue) {
      int out = ctx.numArgs;
      Value nBase = e->mulI(tileX, e->index(c.tileN));
      for (int64_t j = 0; j < blocks; ++j) {
        Value col = e->addIndex(e->addIndex(nBase, e->index(8 * j)), pairCol);
        storePair(fragment(acc, 4 * j), fragment(acc, 4 * j + 1), out, row0,
                  col, s.n);
        storePair(fragment(acc, 4 * j + 2), fragment(acc, 4 * j + 3), out, row1,
                  col, s.n);
      }
      return;
    }
    if (swiglu()) {
      int out = ctx.numArgs;
      int64_t half = blocks / 2;
      Value nBase = e->mulI(tileX, e->index(c.tileN / 2));
      for (int64_t j = 0; j < half; ++j) {
        Value col = e->addIndex(e->addIndex(nBase, e->index(8 * j)), pairCol);
        Value y[4];
        for (int r = 0; r < 4; ++r)
          y[r] = e->swiglu(fragment(acc, 4 * j + r),
                           fragment(acc, 4 * (j + half) + r));
        storePair(y[0], y[1], out, row0, col, s.n / 2);
        storePair(y[2], y[3], out, row1, col, s.n / 2);
      }
      return;
    }
    qkvEpilogue(acc);
  }

  /// Position of `row` (i64; position 0's entry past the last row).
  Value positionOf(Value row) {
    Value inside = e->cmpIndex(CmpIPredicate::ult, row, rows);
    Value safe = e->select(inside, row, e->index(0));
    return e->loadRaw(operand(s.positions), {safe});
  }

  void qkvEpilogue(Value acc) {
    auto q = cast<QkvEpilogueOp>(s.epilogue);
    int64_t qWidth = ctx.width(ctx.operandOf(q.getQuery()));
    int64_t kvWidth = ctx.width(ctx.operandOf(q.getKey()));
    int64_t headDim = qWidth / q.getNumHeads();
    int64_t qTiles = qWidth / c.tileN, kvTiles = kvWidth / c.tileN;
    int64_t blocks = c.tileN / 8;
    Value p0 = positionOf(row0), p1 = positionOf(row1);

    // Values per (row half, block, element) after each step.
    SmallVector<Value> v(4 * blocks);
    for (int64_t i = 0; i < 4 * blocks; ++i)
      v[i] = fragment(acc, i);

    auto emitPart = [&](int part, int64_t firstTile, int64_t width) {
      int out = ctx.operandOf(part == 0   ? q.getQuery()
                              : part == 1 ? q.getKey()
                                          : q.getValue());
      SmallVector<Value> x = v;
      if (part < 2 && q.getInvFreq())
        rope(x, *q.getInvFreq(), headDim, p0, p1);
      if (part < 2 && q.getQkNormEpsilon())
        headNorm(x, headDim, q.getQkNormEpsilon()->convertToDouble());
      if (part == 0 && q.getFloorScale()) {
        Value t0 = temperature(p0, *q.getAttnScale(), *q.getFloorScale());
        Value t1 = temperature(p1, *q.getAttnScale(), *q.getFloorScale());
        for (int64_t j = 0; j < blocks; ++j)
          for (int r = 0; r < 4; ++r)
            x[4 * j + r] = e->mul(x[4 * j + r], r < 2 ? t0 : t1);
      }
      Value nBase =
          e->mulI(e->subIndex(tileX, e->index(firstTile)), e->index(c.tileN));
      for (int64_t j = 0; j < blocks; ++j) {
        Value col = e->addIndex(e->addIndex(nBase, e->index(8 * j)), pairCol);
        storePair(x[4 * j], x[4 * j + 1], out, row0, col, width);
        storePair(x[4 * j + 2], x[4 * j + 3], out, row1, col, width);
      }
    };
    e->ifThenElse(
        e->cmpIndex(CmpIPredicate::ult, tileX, e->index(qTiles)),
        [&] { emitPart(0, 0, qWidth); },
        [&] {
          e->ifThenElse(
              e->cmpIndex(CmpIPredicate::ult, tileX,
                          e->index(qTiles + kvTiles)),
              [&] { emitPart(1, qTiles, kvWidth); },
              [&] { emitPart(2, qTiles + kvTiles, kvWidth); });
        });
  }

  /// Interleaved-pair RoPE on the fragments: the pair (2i, 2i+1) of a head
  /// is one thread's element pair. Angles in f64, reduced to [-pi, pi]
  /// before the f32 sin/cos approximations.
  void rope(SmallVector<Value> &x, ArrayRef<double> freqs, int64_t headDim,
            Value p0, Value p1) {
    Type f64 = e->b->getF64Type();
    Value pf[2] = {e->siToFP(p0, f64), e->siToFP(p1, f64)};
    Value q64 = e->toI64(quad);
    int64_t blocks = c.tileN / 8;
    for (int64_t j = 0; j < blocks; ++j) {
      int64_t firstPair = (8 * j % headDim) / 2;
      // inv_freq[firstPair + quad]
      Value f = e->f64(freqs[firstPair + 3]);
      for (int q = 2; q >= 0; --q)
        f = e->select(e->cmpIndex(CmpIPredicate::eq, q64, e->i64(q)),
                      e->f64(freqs[firstPair + q]), f);
      for (int half = 0; half < 2; ++half) {
        Value angle = e->mul(pf[half], f);
        Value turns = e->mul(angle, e->f64(0.15915494309189535));
        Value rounded =
            e->fpToSI(e->add(turns, e->f64(0.5)), e->b->getI64Type());
        Value whole = e->siToFP(rounded, f64);
        Value reduced = e->sub(angle, e->mul(whole, e->f64(6.283185307179586)));
        Value a32 = e->truncF(reduced, e->b->getF32Type());
        Value cs = e->cos(a32), sn = e->sin(a32);
        Value &x0 = x[4 * j + 2 * half], &x1 = x[4 * j + 2 * half + 1];
        Value y0 = e->sub(e->mul(x0, cs), e->mul(x1, sn));
        Value y1 = e->add(e->mul(x0, sn), e->mul(x1, cs));
        x0 = y0;
        x1 = y1;
      }
    }
  }

  /// RMS over each head of each row: a thread holds 2 of every 8 columns of
  /// its rows, the quad (lanes 4r..4r+3) the whole head.
  void headNorm(SmallVector<Value> &x, int64_t headDim, double eps) {
    int64_t blocksPerHead = headDim / 8;
    int64_t heads = c.tileN / headDim;
    for (int64_t h = 0; h < heads; ++h)
      for (int half = 0; half < 2; ++half) {
        Value ss = e->f32(0.0);
        for (int64_t j = h * blocksPerHead; j < (h + 1) * blocksPerHead; ++j)
          for (int el = 0; el < 2; ++el) {
            Value xv = x[4 * j + 2 * half + el];
            ss = e->add(ss, e->mul(xv, xv));
          }
        Value total = e->warpSum(ss, 4);
        Value inv = e->rsqrt(e->add(
            e->div(total, e->f32(static_cast<double>(headDim))), e->f32(eps)));
        for (int64_t j = h * blocksPerHead; j < (h + 1) * blocksPerHead; ++j)
          for (int el = 0; el < 2; ++el) {
            Value &xv = x[4 * j + 2 * half + el];
            xv = e->mul(xv, inv);
          }
      }
  }

  /// tau(p) = 1 + attn_scale * ln(1 + floor((p + 1) / floor_scale)).
  Value temperature(Value p, const llvm::APFloat &scale, int64_t floorScale) {
    Value steps = e->divSI(e->addI(p, e->i64(1)), e->i64(floorScale));
    Value f = e->siToFP(steps, e->b->getF32Type());
    Value log = e->log(e->add(e->f32(1.0), f));
    return e->add(e->f32(1.0), e->mul(e->f32(scale.convertToDouble()), log));
  }
};

FailureOr<GemmShape> analyze(const KernelContext &ctx) {
  GemmShape s;
  for (Operation &op : ctx.kernel.getBody().front().without_terminator()) {
    if (auto l = dyn_cast<LinearOp>(op)) {
      if (s.linear)
        return ctx.kernel.emitError("a GEMM kernel holds one kiln.linear");
      s.linear = l;
    } else if (isa<PackedSwiGluOp, QkvEpilogueOp>(op)) {
      s.epilogue = &op;
    } else {
      return op.emitOpError("cannot be fused into an sm_90a GEMM");
    }
  }
  if (!s.linear)
    return ctx.kernel.emitError("a GEMM kernel needs a kiln.linear");
  s.a = ctx.operandOf(s.linear.getInput());
  s.w = ctx.operandOf(s.linear.getWeight());
  if (s.a < 0 || s.w < 0 || s.a >= static_cast<int>(ctx.numArgs) ||
      s.w >= static_cast<int>(ctx.numArgs))
    return ctx.kernel.emitError("GEMM operands must be kernel arguments");
  if (!ctx.isBF16(s.a) || !ctx.isBF16(s.w))
    return s.linear.emitOpError()
           << "sm_90a GEMMs take bf16 activations and weights (got "
           << ctx.elementTypes[s.a] << " x " << ctx.elementTypes[s.w] << ")";
  s.n = ctx.types[s.w].getDimSize(0);
  s.k = ctx.types[s.w].getDimSize(1);
  if ((s.k * 2) % 16 != 0)
    return s.linear.emitOpError()
           << "TMA needs rows of a multiple of 16 bytes (K = " << s.k << ")";
  if (auto e = dyn_cast_or_null<QkvEpilogueOp>(s.epilogue))
    s.positions = ctx.operandOf(e.getPositions());
  return s;
}

} // namespace

LogicalResult mlir::kiln::cuda::generateGemmKernel(const KernelContext &ctx,
                                                   GpuKernel &out,
                                                   gpu::GPUModuleOp module) {
  FailureOr<GemmShape> shape = analyze(ctx);
  if (failed(shape))
    return failure();
  GemmShape &s = *shape;

  // Tile width: whole heads and never straddling q/k/v for the QKV
  // epilogue; a multiple of 16 with both halves for SwiGLU.
  auto tileFor = [&](int64_t preferred) -> FailureOr<int64_t> {
    int64_t t = preferred;
    if (auto e = dyn_cast_or_null<QkvEpilogueOp>(s.epilogue)) {
      int64_t q = ctx.width(ctx.operandOf(e.getQuery()));
      int64_t kv = ctx.width(ctx.operandOf(e.getKey()));
      int64_t headDim = q / e.getNumHeads();
      t = std::gcd(std::gcd(q, kv), std::max(preferred, headDim));
      if (t % 8 != 0 || t % headDim != 0 || t > 256)
        return e.emitOpError() << "no wgmma tile of whole heads fits q width "
                               << q << " and kv width " << kv;
    }
    return t;
  };

  GpuStep step;
  struct Variant {
    StringRef suffix;
    TileConfig config;
    int64_t maxRows;
  } variants[] = {{"_decode", {1, 64, 8}, kDecodeRows},
                  {"_prefill", {2, 128, 4}, -1}};
  // Decode is bound by reading W: narrower tiles when 64-wide ones would
  // leave SMs idle (fewer than 1.5 blocks per SM of an H100/H200).
  constexpr int64_t kBusyBlocks = 198;
  if (s.n / 64 < kBusyBlocks)
    variants[0].config.tileN = 32;
  // Prefill: 128x256 tiles (each consumer an m64n256 wgmma, 128 accumulator
  // registers) read 25% less shared memory per multiply-add than 128x128
  // and are what saturates the tensor cores; narrow GEMMs keep 128 so the
  // N edge does not waste half a tile, and so does the RoPE epilogue, whose
  // f64 angles would spill next to 128 accumulators.
  constexpr int64_t kWideN = 2048;
  auto qkv = dyn_cast_or_null<QkvEpilogueOp>(s.epilogue);
  if (s.n >= kWideN && !(qkv && qkv.getInvFreq()))
    variants[1].config.tileN = 256;
  for (const Variant &v : variants) {
    TileConfig config = v.config;
    FailureOr<int64_t> tileN = tileFor(config.tileN);
    if (failed(tileN))
      return failure();
    config.tileN = *tileN;
    if (v.maxRows > 0) {
      // Decode streams W: as many stages as shared memory holds (up to 16)
      // keep the most bytes in flight per SM, which narrow tiles need.
      int64_t stageBytes = (config.tileM() + config.tileN) * kTileK * 2;
      config.stages =
          std::clamp<int64_t>((kSharedLimit - 1024) / stageBytes, 2, 16);
    }
    std::string name = ctx.name() + v.suffix.str();
    GemmBuilder writer(ctx, s, config);
    writer.build(module, name);

    GpuLaunch launch;
    launch.function = name;
    launch.blockThreads = writer.blockThreads();
    launch.dynamicSharedBytes = writer.dynamicSharedBytes();
    launch.grid[0] = smGrid();
    launch.params.push_back({GpuParam::Kind::TensorMap,
                             static_cast<unsigned>(s.a), kTileK,
                             config.tileM()});
    launch.params.push_back({GpuParam::Kind::TensorMap,
                             static_cast<unsigned>(s.w), kTileK,
                             writer.boxRowsB()});
    addOperandParams(ctx, launch);
    launch.selectOperand = s.a;
    launch.maxRows = v.maxRows;
    step.variants.push_back(std::move(launch));
  }
  out.steps.push_back(std::move(step));
  return success();
}
