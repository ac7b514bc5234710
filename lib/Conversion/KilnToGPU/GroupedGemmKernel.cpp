//===- GroupedGemmKernel.cpp - MoE expert GEMMs on wgmma ------------------===//
//
// The routed experts as grouped GEMMs over the pairs sorted by expert, on
// the same pipeline as the dense GEMMs (GemmKernel.cpp): a producer
// warpgroup fills a ring of shared-memory stages, consumer warpgroups run
// wgmma.mma_async, full/empty mbarriers between them.
//
// - Block b is (expert, N tile, row tile), row tiles fastest, found from
//   the router's offsets; rows past the expert's segment are computed but
//   never stored.
// - B is the expert's weight as the checkpoint stores it, [K, N] with N
//   contiguous ("MN-major"): TMA loads 64 K rows x 64 N columns per box of
//   a 3-D map [E, K, N] (so K tails read zeros, never the next expert), two
//   boxes per 128-column tile; the wgmma descriptor strides 1024 bytes
//   between 8-row groups along K and 8 KB between the boxes along N, steps
//   2048 bytes per k16, and the B operand is transposed (layout "row").
// - gate_up gathers its A rows (hidden[token_indices[r]]) with cp.async:
//   every producer thread copies 16-byte chunks to their 128-byte-swizzled
//   places (chunk c of row r at c ^ (r mod 8)), commits, and arrives on the
//   stage's full barrier once the copies of the stage before have landed
//   (after a proxy fence, since wgmma reads through the async proxy). The
//   routing gate scales the output row (the same as scaling the input).
//   The epilogue is SwiGLU on the gate and up halves a thread holds.
// - down reads its A (the gate_up output, already in pair order) by TMA and
//   adds each row into the token's output row with global atomic adds
//   (the top-k pairs of one token add up); a first launch copies the shared
//   expert's output (the addend) into the result. expert_down_pairs (pairs
//   received from other ranks) stores each pair's row in its own place.
//
//===----------------------------------------------------------------------===//

#include "Generators.h"
#include "GpuEmitter.h"
#include "Wgmma.h"

#include "dialects/kiln/KilnOps.h"

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;
using namespace mlir::kiln::cuda::wgmma;

namespace {

constexpr int64_t kTileN = 128; // two 64-column boxes of B
constexpr int64_t kBoxN = 64;

struct GroupedShape {
  bool gateUp = false;
  int input = -1, indices = -1, offsets = -1, gates = -1, weight = -1;
  int addend = -1, result = -1;
  int64_t experts = 0, k = 0, n = 0; // weight [E, K, N]
};

using arith::CmpIPredicate;

class GroupedBuilder {
public:
  GroupedBuilder(const KernelContext &ctx, const GroupedShape &s,
                 int64_t consumers, int64_t stages)
      : ctx(ctx), s(s), consumers(consumers), stages(stages) {}

  int64_t tileM() const { return 64 * consumers; }
  int64_t blockThreads() const { return 128 * (1 + consumers); }
  // The gathering producer needs more than the 40 registers of a TMA-only
  // producer: 128 x 56 + 256 x 224 fits the 64K register file.
  int64_t producerRegs() const { return s.gateUp ? 56 : 40; }
  int64_t consumerRegs() const { return s.gateUp ? 224 : 232; }
  int64_t aBytes() const { return tileM() * kTileK * 2; }
  int64_t bBytes() const { return kTileN * kTileK * 2; }
  int64_t stageBytes() const { return aBytes() + bBytes(); }
  int64_t dynamicSharedBytes() const { return stages * stageBytes() + 1024; }
  /// Output tiles across N.
  int64_t tilesN() const {
    int64_t outCols = s.gateUp ? s.n / 2 : s.n;
    int64_t perTile = s.gateUp ? kBoxN : kTileN;
    return (outCols + perTile - 1) / perTile;
  }

  void build(gpu::GPUModuleOp module, StringRef name) {
    MLIRContext *context = module.getContext();
    OpBuilder builder(context);
    maps = s.gateUp ? 1 : 2;
    fn = createTmaKernel(module, ctx.kernel.getLoc(), name, maps,
                         ctx.memrefTypes(), blockThreads());
    GpuEmitter emitter(builder, fn);
    e = &emitter;
    barriers = barrierType(context, stages);
    locateTile();
    e->when(valid, [&] {
      setup();
      e->ifThenElse(
          e->cmpIndex(CmpIPredicate::eq, wg, e->index(0)), [&] { producer(); },
          [&] { consumer(); });
    });
    e = nullptr;
  }

private:
  const KernelContext &ctx;
  const GroupedShape &s;
  int64_t consumers, stages;
  unsigned maps = 0;
  gpu::GPUFuncOp fn;
  GpuEmitter *e = nullptr;
  nvgpu::MBarrierGroupType barriers;
  Value valid, first, segmentEnd, expert, tileX, wg, lane, dyn, pad, aligned,
      full, empty, mapA, mapB;

  Value mem(int i) { return fn.getArgument(maps + i); }
  Value kTiles() { return e->index((s.k + kTileK - 1) / kTileK); }

  /// Block b -> (expert, N tile, row tile), experts in order, then N
  /// tiles, row tiles fastest: the blocks at work are one expert's row
  /// tiles over a run of N tiles, so each expert's weight tile is read from
  /// memory once for all its rows and its gathered rows stay in L2.
  void locateTile() {
    Value target = e->blockId(gpu::Dimension::x);
    Value zero = e->index(0);
    ValueRange found = e->loopWith(
        zero, e->index(s.experts), e->index(1),
        {zero, e->boolean(false), zero, zero, zero, zero},
        [&](Value ex, ValueRange a) -> SmallVector<Value> {
          Value seen = a[0], done = a[1];
          Value lo = e->loadIndex(mem(s.offsets), {ex});
          Value hi =
              e->loadIndex(mem(s.offsets), {e->addIndex(ex, e->index(1))});
          Value tiles = e->divIndex(
              e->addIndex(e->subIndex(hi, lo), e->index(tileM() - 1)),
              e->index(tileM()));
          Value end = e->addIndex(seen, e->mulI(tiles, e->index(tilesN())));
          Value here = e->andI(e->cmpIndex(CmpIPredicate::ult, target, end),
                               e->xorI(done, e->boolean(true)));
          Value local = e->subIndex(target, seen);
          // An expert without rows has no blocks (`here` is false for it).
          Value safeTiles =
              e->select(e->cmpIndex(CmpIPredicate::eq, tiles, e->index(0)),
                        e->index(1), tiles);
          Value start = e->addIndex(
              lo, e->mulI(e->remIndex(local, safeTiles), e->index(tileM())));
          Value nTile = e->divIndex(local, safeTiles);
          return {end,
                  e->orI(done, here),
                  e->select(here, start, a[2]),
                  e->select(here, hi, a[3]),
                  e->select(here, ex, a[4]),
                  e->select(here, nTile, a[5])};
        });
    valid = found[1];
    first = found[2];
    segmentEnd = found[3];
    expert = found[4];
    tileX = found[5];
  }

  void setup() {
    MLIRContext *context = fn.getContext();
    mapB = tensorMapOf(*e, fn.getArgument(0),
                       tensorMapType(context, {1, kTileK, kBoxN}));
    if (!s.gateUp)
      mapA = tensorMapOf(*e, fn.getArgument(1),
                         tensorMapType(context, {tileM(), kTileK}));
    SharedBase arena = alignedDynamicShared(*e);
    dyn = arena.memory;
    pad = arena.pad;
    aligned = arena.aligned;
    full = nvgpu::MBarrierCreateOp::create(*e->b, e->loc, barriers);
    empty = nvgpu::MBarrierCreateOp::create(*e->b, e->loc, barriers);
    Value tid = e->threadId();
    wg = e->divIndex(tid, e->index(128));
    lane = e->remIndex(tid, e->index(128));
    // Full: the expect_tx arrival, plus one per producer thread when the
    // producers gather A themselves.
    int64_t fullCount = s.gateUp ? 1 + 128 : 1;
    e->when(e->cmpIndex(CmpIPredicate::eq, tid, e->index(0)), [&] {
      e->loopStep(e->index(0), e->index(stages), e->index(1), [&](Value st) {
        nvgpu::MBarrierInitOp::create(*e->b, e->loc, full, e->index(fullCount),
                                      st,
                                      /*predicate=*/nullptr);
        nvgpu::MBarrierInitOp::create(*e->b, e->loc, empty, e->index(consumers),
                                      st,
                                      /*predicate=*/nullptr);
      });
      NVVM::FenceMbarrierInitOp::create(*e->b, e->loc);
    });
    e->barrier();
  }

  Value phaseOf(Value iter, bool flip) {
    return parity(*e, iter, stages, flip);
  }

  /// Makes the generic proxy's shared-memory writes visible to the async
  /// proxy (wgmma reads through it).
  void fenceProxy() {
    NVVM::FenceProxyOp::create(
        *e->b, e->loc, NVVM::ProxyKind::async_shared,
        NVVM::SharedSpaceAttr::get(e->b->getContext(),
                                   NVVM::SharedSpace::shared_cta));
  }

  void producer() {
    NVVM::SetMaxRegisterOp::create(*e->b, e->loc, producerRegs(),
                                   NVVM::SetMaxRegisterAction::decrease);
    Value leader = e->cmpIndex(CmpIPredicate::eq, lane, e->index(0));
    // gate_up: each producer thread gathers `chunks` 16-byte pieces of the
    // A tile per stage. Nothing per chunk stays live across the K loop (the
    // producer runs in few registers): each stage reloads its rows' tokens
    // (L1 hits).
    int64_t chunks = tileM() * 8 / 128;
    e->loopStep(e->index(0), kTiles(), e->index(1), [&](Value it) {
      Value st = e->remIndex(it, e->index(stages));
      Value phase = phaseOf(it, /*flip=*/true);
      Value offA = e->addIndex(pad, e->mulI(st, e->index(stageBytes())));
      Value offB = e->addIndex(offA, e->index(aBytes()));
      Value kc = e->mulI(it, e->index(kTileK));
      if (s.gateUp) // every producer thread writes the stage
        waitParity(*e, empty, st, phase);
      e->when(leader, [&] {
        if (!s.gateUp)
          waitParity(*e, empty, st, phase);
        nvgpu::MBarrierArriveExpectTxOp::create(
            *e->b, e->loc, full, e->index(s.gateUp ? bBytes() : stageBytes()),
            st,
            /*predicate=*/nullptr);
        auto load = [&](Value map, Value buffer, ValueRange at) {
          nvgpu::TmaAsyncLoadOp::create(*e->b, e->loc, buffer, full, map, at,
                                        st, /*multicastMask=*/nullptr,
                                        /*predicate=*/nullptr);
        };
        if (!s.gateUp)
          load(mapA, viewTile(*e, dyn, offA, {tileM(), kTileK}), {kc, first});
        for (int half = 0; half < 2; ++half) {
          // gate_up: the gate and the up columns of the same outputs; down:
          // two adjacent 64-column boxes.
          Value col = s.gateUp ? e->addIndex(e->mulI(tileX, e->index(kBoxN)),
                                             e->index(half * (s.n / 2)))
                               : e->addIndex(e->mulI(tileX, e->index(kTileN)),
                                             e->index(half * kBoxN));
          Value off = e->addIndex(offB, e->index(half * kBoxN * kTileK * 2));
          load(mapB, viewTile(*e, dyn, off, {1, kTileK, kBoxN}),
               {col, kc, expert});
        }
      });
      if (s.gateUp) {
        gatherRows(offA, kc, chunks);
        // The copies of the previous stage have landed: publish them.
        NVVM::CpAsyncWaitGroupOp::create(*e->b, e->loc, 1);
        fenceProxy();
        e->when(e->cmpIndex(CmpIPredicate::ugt, it, e->index(0)), [&] {
          Value prev = e->remIndex(e->addIndex(it, e->index(stages - 1)),
                                   e->index(stages));
          arrive(*e, full, prev);
        });
      }
    });
    if (s.gateUp) {
      NVVM::CpAsyncWaitGroupOp::create(*e->b, e->loc, 0);
      fenceProxy();
      Value last =
          e->remIndex(e->subIndex(kTiles(), e->index(1)), e->index(stages));
      arrive(*e, full, last);
    }
  }

  /// gate_up's A tile: the stage's rows hidden[token_indices[r]], copied in
  /// 16-byte chunks by every producer thread to their swizzled places.
  void gatherRows(Value offA, Value kc, int64_t chunks) {
    Value bufA = viewTile(*e, dyn, offA, {tileM(), kTileK});
    // A loop, not unrolled: the producer warpgroup runs in 56 registers.
    e->loopStep(e->index(0), e->index(chunks), e->index(1), [&](Value j) {
      Value idx = e->addIndex(e->mulI(j, e->index(128)), lane);
      Value r = e->divIndex(idx, e->index(8));
      Value c = e->remIndex(idx, e->index(8));
      // 128-byte swizzle: chunk c of row r lives at chunk c ^ (r mod 8).
      Value swz = e->xorI(c, e->remIndex(r, e->index(8)));
      Value pair = e->addIndex(first, r);
      Value inRow = e->cmpIndex(CmpIPredicate::ult, pair, segmentEnd);
      Value safe = e->select(inRow, pair, first);
      Value token = e->loadIndex(mem(s.indices), {safe});
      Value srcK = e->addIndex(kc, e->mulI(c, e->index(8)));
      Value okK =
          e->andI(inRow, e->cmpIndex(CmpIPredicate::ult, srcK, e->index(s.k)));
      Value n = e->select(okK, e->index(8), e->index(0));
      Value safeK = e->select(okK, srcK, e->index(0));
      nvgpu::DeviceAsyncCopyOp::create(
          *e->b, e->loc, nvgpu::DeviceAsyncTokenType::get(e->b->getContext()),
          bufA, ValueRange{r, e->mulI(swz, e->index(8))}, mem(s.input),
          ValueRange{token, safeK}, e->b->getIndexAttr(8), n,
          e->b->getUnitAttr());
    });
    NVVM::CpAsyncCommitGroupOp::create(*e->b, e->loc);
  }

  void consumer() {
    MLIRContext *context = fn.getContext();
    NVVM::SetMaxRegisterOp::create(*e->b, e->loc, consumerRegs(),
                                   NVVM::SetMaxRegisterAction::increase);
    Value cw = e->subIndex(wg, e->index(1));
    Value base64 = e->toI64(aligned);
    // One K tile; the first overwrites the accumulator (scale-d 0), so it
    // needs no zeroing.
    auto kStep = [&](Value it, Value accIn, bool firstTile) {
      Value st = e->remIndex(it, e->index(stages));
      waitParity(*e, full, st, phaseOf(it, /*flip=*/false));
      Value stage = addressOf(*e, base64, st, stageBytes());
      Value aAddr = addressOf(*e, stage, cw, 64 * kTileK * 2);
      Value bAddr = e->addI(stage, e->i64(aBytes()));
      Value descA = descriptor(*e, aAddr);
      // MN-major B: 8 KB between the two 64-column boxes.
      Value descB = descriptor(*e, bAddr, kBoxN * kTileK * 2);
      NVVM::WgmmaFenceAlignedOp::create(*e->b, e->loc);
      Value running = mmaKTile(*e, descA, descB, accIn, kTileN,
                               NVVM::MMALayout::row, firstTile);
      NVVM::WgmmaGroupSyncAlignedOp::create(*e->b, e->loc);
      NVVM::WgmmaWaitGroupSyncOp::create(*e->b, e->loc, 1);
      if (!firstTile)
        e->when(e->cmpIndex(CmpIPredicate::eq, lane, e->index(0)), [&] {
          Value prev = e->remIndex(e->addIndex(it, e->index(stages - 1)),
                                   e->index(stages));
          arrive(*e, empty, prev);
        });
      return running;
    };
    Value result =
        accumulateOverK(*e, kTiles(), accType(context, kTileN), kStep);
    NVVM::WgmmaWaitGroupSyncOp::create(*e->b, e->loc, 0);
    epilogue(result, cw);
  }

  Value fragment(Value acc, int64_t i) {
    return LLVM::ExtractValueOp::create(*e->b, e->loc, acc,
                                        ArrayRef<int64_t>{i});
  }

  void epilogue(Value acc, Value cw) {
    FragmentCoords frag = fragmentsOf(*e, lane, first, cw);
    Value pairCol = frag.pairColumn;
    int64_t blocks = kTileN / 8;
    Value out = mem(s.result);
    Type element = ctx.elementTypes[s.result];
    for (int half = 0; half < 2; ++half) {
      Value row = frag.rows[half];
      e->when(e->cmpIndex(CmpIPredicate::ult, row, segmentEnd), [&] {
        if (s.gateUp) {
          Value g = e->load(mem(s.gates), {row});
          Value outBase = e->mulI(tileX, e->index(kBoxN));
          for (int64_t j = 0; j < blocks / 2; ++j) {
            Value col =
                e->addIndex(e->addIndex(outBase, e->index(8 * j)), pairCol);
            Value y[2];
            for (int el = 0; el < 2; ++el) {
              Value gate = e->mul(g, fragment(acc, 4 * j + 2 * half + el));
              Value up = e->mul(
                  g, fragment(acc, 4 * (j + blocks / 2) + 2 * half + el));
              y[el] = e->truncF(e->swiglu(gate, up), element);
            }
            e->when(e->cmpIndex(CmpIPredicate::ult, col, e->index(s.n / 2)),
                    [&] {
                      Value pair = vector::FromElementsOp::create(
                          *e->b, e->loc, VectorType::get({2}, element),
                          ValueRange{y[0], y[1]});
                      e->vectorStore(pair, out, {row, col}, /*alignment=*/0);
                    });
          }
        } else if (s.indices < 0) {
          // expert_down_pairs: pair `row` owns output row `row`.
          Value outBase = e->mulI(tileX, e->index(kTileN));
          for (int64_t j = 0; j < blocks; ++j) {
            Value col =
                e->addIndex(e->addIndex(outBase, e->index(8 * j)), pairCol);
            e->when(e->cmpIndex(CmpIPredicate::ult, col, e->index(s.n)), [&] {
              Value pair = vector::FromElementsOp::create(
                  *e->b, e->loc, VectorType::get({2}, element),
                  ValueRange{fragment(acc, 4 * j + 2 * half),
                             fragment(acc, 4 * j + 2 * half + 1)});
              e->vectorStore(pair, out, {row, col}, /*alignment=*/0);
            });
          }
        } else {
          Value token = e->loadIndex(mem(s.indices), {row});
          Value outBase = e->mulI(tileX, e->index(kTileN));
          for (int64_t j = 0; j < blocks; ++j) {
            Value col =
                e->addIndex(e->addIndex(outBase, e->index(8 * j)), pairCol);
            e->when(e->cmpIndex(CmpIPredicate::ult, col, e->index(s.n)), [&] {
              for (int el = 0; el < 2; ++el)
                memref::AtomicRMWOp::create(
                    *e->b, e->loc, arith::AtomicRMWKind::addf,
                    fragment(acc, 4 * j + 2 * half + el), out,
                    ValueRange{token,
                               el ? e->addIndex(col, e->index(1)) : col});
            });
          }
        }
      });
    }
  }
};

} // namespace

bool mlir::kiln::cuda::groupedWgmmaFits(const KernelContext &ctx) {
  Operation *op = &ctx.kernel.getBody().front().front();
  Value weight;
  Value input;
  bool gateUp = false;
  if (auto up = dyn_cast<ExpertGateUpOp>(op)) {
    weight = up.getGateUp();
    input = up.getInput();
    gateUp = true;
  } else if (auto down = dyn_cast<ExpertDownOp>(op)) {
    weight = down.getDown();
    input = down.getHidden();
  } else if (auto pairs = dyn_cast<ExpertDownPairsOp>(op)) {
    weight = pairs.getDown();
    input = pairs.getHidden();
  } else {
    return false;
  }
  int w = ctx.operandOf(weight), in = ctx.operandOf(input);
  if (w < 0 || in < 0 || !ctx.isBF16(w) || !ctx.isBF16(in))
    return false;
  int64_t k = ctx.types[w].getDimSize(1), n = ctx.types[w].getDimSize(2);
  return k % 8 == 0 && (gateUp ? n / 2 : n) % kBoxN == 0;
}

LogicalResult mlir::kiln::cuda::generateGroupedWgmmaKernel(
    const KernelContext &ctx, GpuKernel &out, gpu::GPUModuleOp module) {
  Operation *op = &ctx.kernel.getBody().front().front();
  GroupedShape s;
  if (auto up = dyn_cast<ExpertGateUpOp>(op)) {
    s.gateUp = true;
    s.input = ctx.operandOf(up.getInput());
    s.indices = ctx.operandOf(up.getTokenIndices());
    s.offsets = ctx.operandOf(up.getExpertOffsets());
    s.gates = ctx.operandOf(up.getGates());
    s.weight = ctx.operandOf(up.getGateUp());
  } else if (auto down = dyn_cast<ExpertDownOp>(op)) {
    s.input = ctx.operandOf(down.getHidden());
    s.indices = ctx.operandOf(down.getTokenIndices());
    s.offsets = ctx.operandOf(down.getExpertOffsets());
    s.weight = ctx.operandOf(down.getDown());
    s.addend = ctx.operandOf(down.getAddend());
  } else if (auto pairs = dyn_cast<ExpertDownPairsOp>(op)) {
    // A row per pair, stored (no token indices, no addend).
    s.input = ctx.operandOf(pairs.getHidden());
    s.offsets = ctx.operandOf(pairs.getExpertOffsets());
    s.weight = ctx.operandOf(pairs.getDown());
  } else {
    return ctx.kernel.emitError("a grouped GEMM kernel holds one expert op");
  }
  s.result = ctx.numArgs;
  auto w = ctx.types[s.weight];
  s.experts = w.getDimSize(0);
  s.k = w.getDimSize(1);
  s.n = w.getDimSize(2);
  if (!ctx.isBF16(s.input) || !ctx.isBF16(s.weight))
    return op->emitOpError("sm_90a expert GEMMs take bf16 inputs and weights");
  if (s.k % 8 != 0 || (s.gateUp ? (s.n / 2) : s.n) % kBoxN != 0)
    return op->emitOpError()
           << "the sm_90a expert GEMM needs K a multiple of 8 and output "
              "columns a multiple of "
           << kBoxN << " (K = " << s.k << ", N = " << s.n << ")";
  std::string name = ctx.name();

  if (s.addend >= 0)
    addExpertDownInit(ctx, s.addend, s.result, out, module);
  // Rows: the pairs (token indices), or the pairs' hidden rows.
  int pairRows = s.indices >= 0 ? s.indices : s.input;

  GpuStep step;
  struct Variant {
    StringRef suffix;
    int64_t consumers, stages, maxRows;
  } variants[] = {{"_decode", 1, 9, 64}, {"_prefill", 2, 4, -1}};
  for (const Variant &v : variants) {
    std::string fn = name + v.suffix.str();
    GroupedBuilder writer(ctx, s, v.consumers, v.stages);
    writer.build(module, fn);
    GpuLaunch launch;
    launch.function = fn;
    launch.blockThreads = writer.blockThreads();
    launch.dynamicSharedBytes = writer.dynamicSharedBytes();
    // At most ceil(pairs / rows) row tiles plus one partial tile per
    // expert, each across every N tile; blocks past the count exit.
    GridExtent blocks =
        rowsGrid(pairRows, writer.tileM(), /*perRow=*/writer.tilesN());
    blocks.constant = s.experts * writer.tileM() * writer.tilesN();
    launch.grid[0] = blocks;
    GpuParam b{GpuParam::Kind::TensorMap, static_cast<unsigned>(s.weight),
               kBoxN, kTileK};
    b.box3 = true;
    launch.params.push_back(b);
    if (!s.gateUp)
      launch.params.push_back({GpuParam::Kind::TensorMap,
                               static_cast<unsigned>(s.input), kTileK,
                               writer.tileM()});
    addOperandParams(ctx, launch);
    launch.selectOperand = pairRows;
    launch.maxRows = v.maxRows;
    step.variants.push_back(std::move(launch));
  }
  out.steps.push_back(std::move(step));
  return success();
}
