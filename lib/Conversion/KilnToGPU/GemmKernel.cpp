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

/// "RxC" of a tile with R rows of kTileK elements.
std::string rowsOf(int64_t rows) {
  return std::to_string(rows) + "x" + std::to_string(kTileK);
}

class GemmWriter {
public:
  GemmWriter(const KernelContext &ctx, const GemmShape &shape,
             TileConfig config, StringRef name)
      : ctx(ctx), s(shape), c(config),
        k(name, params(ctx), 128 * (1 + config.consumers),
          "nvvm.minctasm = 1 : i32") {}

  std::string write() {
    prologue();
    k.beginIf(k.cmp("eq", wg, k.index(0)));
    producer();
    k.beginElse();
    consumer();
    k.endIf();
    return k.finish();
  }

  int64_t boxRowsB() const { return swiglu() ? c.tileN / 2 : c.tileN; }
  int64_t stageBytes() const { return (c.tileM() + c.tileN) * kTileK * 2; }
  int64_t dynamicSharedBytes() const { return c.stages * stageBytes() + 1024; }

private:
  const KernelContext &ctx;
  const GemmShape &s;
  TileConfig c;
  KernelText k;
  std::string wg, lane, mBase, tileX, aligned, rows, full, empty, dyn;
  std::string tilesN, tilesM, totalTiles, gridSize;

  /// Opens the loop over this block's tiles, carrying the ring iteration
  /// count across tiles; sets mBase and tileX. Returns the count at the
  /// tile's start.
  std::string beginTiles(std::string &loopResult) {
    loopResult = k.fresh();
    std::string ring = k.fresh();
    std::string t = k.beginFor(k.blockId('x'), totalTiles, gridSize, loopResult,
                               ring + " = " + k.index(0) + " : index");
    // Tiles go in bands of kBandM row tiles, row tile fastest: the blocks
    // at work share a few weight tiles and a band's activation rows, which
    // stay in L2, so a large GEMM reads its weight about tilesM / kBandM
    // times instead of once per pair of row tiles (one band for decode).
    std::string bandTiles = k.mul(k.index(kBandM), tilesN);
    std::string band = k.div(t, bandTiles);
    std::string firstM = k.mul(band, k.index(kBandM));
    std::string rowsInBand = k.minIndex(k.index(kBandM), k.sub(tilesM, firstM));
    std::string local = k.rem(t, bandTiles);
    mBase = k.mul(k.add(firstM, k.rem(local, rowsInBand)), k.index(c.tileM()));
    tileX = k.div(local, rowsInBand);
    return ring;
  }
  void endTiles(const std::string &ring) {
    k.endFor(k.add(ring, kTiles()) + " : index");
  }

  bool swiglu() const { return isa_and_nonnull<PackedSwiGluOp>(s.epilogue); }

  static std::string params(const KernelContext &ctx) {
    std::string p = "%tmA: !llvm.ptr {llvm.align = 64 : i64}, %tmB: !llvm.ptr "
                    "{llvm.align = 64 : i64}";
    p += ", " + ctx.memrefParams();
    return p;
  }

  std::string operand(int i) const { return "%o" + std::to_string(i); }

  void prologue() {
    std::string bar = barrierType(c.stages);
    k.line("%dA = builtin.unrealized_conversion_cast %tmA : !llvm.ptr to " +
           tensorMapType(rowsOf(c.tileM())));
    k.line("%dB = builtin.unrealized_conversion_cast %tmB : !llvm.ptr to " +
           tensorMapType(rowsOf(boxRowsB())));
    rows = k.op("memref.dim " + operand(s.a) + ", " + k.index(0) + " : " +
                ctx.memrefType(s.a));
    SharedArena arena = alignedDynamicShared(k);
    dyn = arena.memory;
    padding = arena.pad;
    aligned = arena.aligned;
    full = k.op("nvgpu.mbarrier.create -> " + bar);
    empty = k.op("nvgpu.mbarrier.create -> " + bar);
    // Persistent: the grid is one block per SM; block b takes tiles b,
    // b + grid, ... in the banded order of beginTiles.
    tilesN = k.index(tilesAcross());
    tilesM = k.div(k.add(rows, k.index(c.tileM() - 1)), k.index(c.tileM()));
    totalTiles = k.mul(tilesM, tilesN);
    gridSize = k.op("gpu.grid_dim x");
    std::string tid = k.threadId();
    wg = k.div(tid, k.index(128));
    lane = k.rem(tid, k.index(128));
    k.beginIf(k.cmp("eq", tid, k.index(0)));
    std::string st = k.beginFor(k.index(0), k.index(c.stages), k.index(1));
    k.line("nvgpu.mbarrier.init " + full + "[" + st + "], " + k.index(1) +
           " : " + bar);
    k.line("nvgpu.mbarrier.init " + empty + "[" + st + "], " +
           k.index(c.consumers) + " : " + bar);
    k.endFor();
    k.line("nvvm.fence.mbarrier.init");
    k.line("nvgpu.tma.prefetch.descriptor %dA : " +
           tensorMapType(rowsOf(c.tileM())));
    k.line("nvgpu.tma.prefetch.descriptor %dB : " +
           tensorMapType(rowsOf(boxRowsB())));
    k.endIf();
    k.line("gpu.barrier");
  }

  std::string kTiles() { return k.index((s.k + kTileK - 1) / kTileK); }

  std::string phaseOf(const std::string &iter, bool flip) {
    return parity(k, iter, c.stages, flip);
  }

  void producer() {
    std::string bar = barrierType(c.stages);
    k.line("nvvm.setmaxregister decrease 40");
    k.beginIf(k.cmp("eq", lane, k.index(0)));
    std::string tilesDone;
    std::string ring = beginTiles(tilesDone);
    std::string it = k.beginFor(k.index(0), kTiles(), k.index(1));
    std::string g = k.add(ring, it);
    std::string st = k.rem(g, k.index(c.stages));
    // A fresh "empty" barrier passes parity 1: the first round never waits.
    waitParity(k, empty, st, phaseOf(g, /*flip=*/true), bar);
    k.line("nvgpu.mbarrier.arrive.expect_tx " + full + "[" + st + "], " +
           k.index(stageBytes()) + " : " + bar);
    std::string offA = k.add(padding, k.mul(st, k.index(stageBytes())));
    std::string offB = k.add(offA, k.index(c.tileM() * kTileK * 2));
    std::string smem = "memref<?xi8, #gpu.address_space<workgroup>>";
    auto view = [&](const std::string &off, int64_t r) {
      return k.op("memref.view " + dyn + "[" + off + "][] : " + smem +
                  " to memref<" + std::to_string(r) + "x" +
                  std::to_string(kTileK) +
                  "xbf16, #gpu.address_space<workgroup>>");
    };
    auto tile = [&](int64_t r) { return tileType(rowsOf(r)); };
    std::string kc = k.mul(it, k.index(kTileK));
    std::string bufA = view(offA, c.tileM());
    k.line("nvgpu.tma.async.load %dA[" + kc + ", " + mBase + "], " + full +
           "[" + st + "] to " + bufA + " : " +
           tensorMapType(rowsOf(c.tileM())) + ", " + bar + " -> " +
           tile(c.tileM()));
    int64_t boxB = boxRowsB();
    std::string nRow = k.mul(tileX, k.index(boxB));
    std::string bufB = view(offB, boxB);
    k.line("nvgpu.tma.async.load %dB[" + kc + ", " + nRow + "], " + full + "[" +
           st + "] to " + bufB + " : " + tensorMapType(rowsOf(boxB)) + ", " +
           bar + " -> " + tile(boxB));
    if (swiglu()) {
      // The up half of the tile: the same output columns, F rows further.
      std::string upRow = k.add(nRow, k.index(s.n / 2));
      std::string offUp = k.add(offB, k.index(boxB * kTileK * 2));
      std::string bufUp = view(offUp, boxB);
      k.line("nvgpu.tma.async.load %dB[" + kc + ", " + upRow + "], " + full +
             "[" + st + "] to " + bufUp + " : " + tensorMapType(rowsOf(boxB)) +
             ", " + bar + " -> " + tile(boxB));
    }
    k.endFor();
    endTiles(ring);
    k.endIf();
  }

  void consumer() {
    std::string bar = barrierType(c.stages);
    std::string acc = accType(c.tileN);
    k.line("nvvm.setmaxregister increase 232");
    std::string cw = k.sub(wg, k.index(1));
    std::string base64 =
        k.op("arith.index_cast " + aligned + " : index to i64");
    std::string fresh = k.op("llvm.mlir.undef : " + acc);
    std::string tilesDone;
    std::string ring = beginTiles(tilesDone);
    // One K tile; the first of an output tile overwrites the accumulator
    // (scale-d 0), so no zeroing is needed between tiles.
    auto kStep = [&](const std::string &it, const std::string &accIn,
                     bool first) {
      std::string g = k.add(ring, it);
      std::string st = k.rem(g, k.index(c.stages));
      waitParity(k, full, st, phaseOf(g, /*flip=*/false), bar);
      std::string stage = addressOf(k, base64, st, stageBytes());
      std::string aAddr = addressOf(k, stage, cw, 64 * kTileK * 2);
      std::string bAddr = k.op("arith.addi " + stage + ", " +
                               k.i64(c.tileM() * kTileK * 2) + " : i64");
      std::string descA = descriptor(k, aAddr), descB = descriptor(k, bAddr);
      k.line("nvvm.wgmma.fence.aligned");
      std::string running =
          mmaKTile(k, descA, descB, accIn, c.tileN, "col", first);
      k.line("nvvm.wgmma.commit.group.sync.aligned");
      // Keep this group in flight; the previous one has retired, so its
      // stage can be refilled.
      k.line("nvvm.wgmma.wait.group.sync.aligned 1");
      if (!first) {
        k.beginIf(k.cmp("eq", lane, k.index(0)));
        std::string prev =
            k.rem(k.add(g, k.index(c.stages - 1)), k.index(c.stages));
        k.line("%tok_" + std::to_string(tokens++) +
               " = nvgpu.mbarrier.arrive " + empty + "[" + prev + "] : " + bar +
               " -> !nvgpu.mbarrier.token");
        k.endIf();
      }
      return running;
    };
    std::string firstTile = kStep(k.index(0), fresh, /*first=*/true);
    std::string result = k.fresh();
    std::string carried = k.fresh();
    std::string it = k.beginFor(k.index(1), kTiles(), k.index(1), result,
                                carried + " = " + firstTile + " : " + acc);
    k.endFor(kStep(it, carried, /*first=*/false) + " : " + acc);
    k.line("nvvm.wgmma.wait.group.sync.aligned 0");
    // The tile's last stage is free too: the next tile's loads may use it
    // while this one's epilogue runs.
    k.beginIf(k.cmp("eq", lane, k.index(0)));
    std::string last =
        k.rem(k.add(ring, k.sub(kTiles(), k.index(1))), k.index(c.stages));
    k.line("%tok_" + std::to_string(tokens++) + " = nvgpu.mbarrier.arrive " +
           empty + "[" + last + "] : " + bar + " -> !nvgpu.mbarrier.token");
    k.endIf();
    epilogue(result, cw);
    endTiles(ring);
  }

  /// Output tiles across N (the grid of a non-persistent launch).
  int64_t tilesAcross() const {
    int64_t columns = swiglu() ? s.n / 2 : s.n;
    int64_t perTile = swiglu() ? c.tileN / 2 : c.tileN;
    return (columns + perTile - 1) / perTile;
  }

  // Fragment coordinates.
  std::string row0, row1, pairCol; // pairCol = 2 * (l % 4)
  std::string quad;                // l % 4

  std::string fragment(const std::string &accValue, int64_t i) {
    return k.op("llvm.extractvalue " + accValue + "[" + std::to_string(i) +
                "] : " + accType(c.tileN));
  }

  void storePair(const std::string &v0, const std::string &v1, int operandIdx,
                 const std::string &row, const std::string &col,
                 int64_t width) {
    std::string element = ctx.elements[operandIdx];
    std::string ok = k.op("arith.andi " + k.cmp("ult", row, rows) + ", " +
                          k.cmp("ult", col, k.index(width)) + " : i1");
    k.beginIf(ok);
    std::string a = k.fromF32(v0, element), b = k.fromF32(v1, element);
    std::string vec = k.op("vector.from_elements " + a + ", " + b +
                           " : vector<2x" + element + ">");
    k.line("vector.store " + vec + ", " + operand(operandIdx) + "[" + row +
           ", " + col + "] : " + ctx.memrefType(operandIdx) + ", vector<2x" +
           element + ">");
    k.endIf();
  }

  void epilogue(const std::string &acc, const std::string &cw) {
    Fragments frag = fragmentsOf(k, lane, mBase, cw);
    quad = k.rem(k.rem(lane, k.index(32)), k.index(4));
    pairCol = frag.pairColumn;
    row0 = frag.rows[0];
    row1 = frag.rows[1];
    int64_t blocks = c.tileN / 8;
    if (!s.epilogue) {
      int out = ctx.numArgs;
      std::string nBase = k.mul(tileX, k.index(c.tileN));
      for (int64_t j = 0; j < blocks; ++j) {
        std::string col = k.add(k.add(nBase, k.index(8 * j)), pairCol);
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
      std::string nBase = k.mul(tileX, k.index(c.tileN / 2));
      for (int64_t j = 0; j < half; ++j) {
        std::string col = k.add(k.add(nBase, k.index(8 * j)), pairCol);
        std::string y[4];
        for (int r = 0; r < 4; ++r)
          y[r] = k.swiglu(fragment(acc, 4 * j + r),
                          fragment(acc, 4 * (j + half) + r));
        storePair(y[0], y[1], out, row0, col, s.n / 2);
        storePair(y[2], y[3], out, row1, col, s.n / 2);
      }
      return;
    }
    qkvEpilogue(acc);
  }

  /// Position of `row` as f64 (0 past the last row).
  std::string positionOf(const std::string &row) {
    std::string inside = k.cmp("ult", row, rows);
    std::string safe = k.select(inside, row, k.index(0), "index");
    return k.op("memref.load " + operand(s.positions) + "[" + safe +
                "] : " + ctx.memrefType(s.positions));
  }

  void qkvEpilogue(const std::string &acc) {
    auto e = cast<QkvEpilogueOp>(s.epilogue);
    int64_t qWidth = ctx.width(ctx.operandOf(e.getQuery()));
    int64_t kvWidth = ctx.width(ctx.operandOf(e.getKey()));
    int64_t headDim = qWidth / e.getNumHeads();
    int64_t qTiles = qWidth / c.tileN, kvTiles = kvWidth / c.tileN;
    int64_t blocks = c.tileN / 8;
    std::string p0 = positionOf(row0), p1 = positionOf(row1);

    // Values per (row half, block, element) after each step.
    std::vector<std::string> v(4 * blocks);
    for (int64_t i = 0; i < 4 * blocks; ++i)
      v[i] = fragment(acc, i);

    auto emitPart = [&](int part, int64_t firstTile, int64_t width) {
      int out = ctx.operandOf(part == 0   ? e.getQuery()
                              : part == 1 ? e.getKey()
                                          : e.getValue());
      std::vector<std::string> x = v;
      if (part < 2 && e.getInvFreq())
        rope(x, *e.getInvFreq(), headDim, p0, p1);
      if (part < 2 && e.getQkNormEpsilon())
        headNorm(x, headDim, e.getQkNormEpsilon()->convertToDouble());
      if (part == 0 && e.getFloorScale()) {
        std::string t0 = temperature(p0, *e.getAttnScale(), *e.getFloorScale());
        std::string t1 = temperature(p1, *e.getAttnScale(), *e.getFloorScale());
        for (int64_t j = 0; j < blocks; ++j)
          for (int r = 0; r < 4; ++r)
            x[4 * j + r] = k.fmul(x[4 * j + r], r < 2 ? t0 : t1);
      }
      std::string nBase =
          k.mul(k.sub(tileX, k.index(firstTile)), k.index(c.tileN));
      for (int64_t j = 0; j < blocks; ++j) {
        std::string col = k.add(k.add(nBase, k.index(8 * j)), pairCol);
        storePair(x[4 * j], x[4 * j + 1], out, row0, col, width);
        storePair(x[4 * j + 2], x[4 * j + 3], out, row1, col, width);
      }
    };
    k.beginIf(k.cmp("ult", tileX, k.index(qTiles)));
    emitPart(0, 0, qWidth);
    k.beginElse();
    k.beginIf(k.cmp("ult", tileX, k.index(qTiles + kvTiles)));
    emitPart(1, qTiles, kvWidth);
    k.beginElse();
    emitPart(2, qTiles + kvTiles, kvWidth);
    k.endIf();
    k.endIf();
  }

  /// Interleaved-pair RoPE on the fragments: the pair (2i, 2i+1) of a head
  /// is one thread's element pair. Angles in f64, reduced to [-pi, pi]
  /// before the f32 sin/cos approximations.
  void rope(std::vector<std::string> &x, ArrayRef<double> freqs,
            int64_t headDim, const std::string &p0, const std::string &p1) {
    std::string pf[2] = {k.op("arith.sitofp " + p0 + " : i64 to f64"),
                         k.op("arith.sitofp " + p1 + " : i64 to f64")};
    std::string q64 = k.op("arith.index_cast " + quad + " : index to i64");
    int64_t blocks = c.tileN / 8;
    for (int64_t j = 0; j < blocks; ++j) {
      int64_t firstPair = (8 * j % headDim) / 2;
      // inv_freq[firstPair + quad]
      std::string f = k.f64(freqs[firstPair + 3]);
      for (int q = 2; q >= 0; --q)
        f = k.select(k.cmp("eq", q64, k.i64(q), "i64"),
                     k.f64(freqs[firstPair + q]), f, "f64");
      for (int half = 0; half < 2; ++half) {
        std::string angle =
            k.op("arith.mulf " + pf[half] + ", " + f + " : f64");
        std::string turns = k.op("arith.mulf " + angle + ", " +
                                 k.f64(0.15915494309189535) + " : f64");
        std::string rounded =
            k.op("arith.fptosi " +
                 k.op("arith.addf " + turns + ", " + k.f64(0.5) + " : f64") +
                 " : f64 to i64");
        std::string whole = k.op("arith.sitofp " + rounded + " : i64 to f64");
        std::string reduced = k.op("arith.subf " + angle + ", " +
                                   k.op("arith.mulf " + whole + ", " +
                                        k.f64(6.283185307179586) + " : f64") +
                                   " : f64");
        std::string a32 = k.op("arith.truncf " + reduced + " : f64 to f32");
        std::string cs = k.cos(a32), sn = k.sin(a32);
        std::string &x0 = x[4 * j + 2 * half], &x1 = x[4 * j + 2 * half + 1];
        std::string y0 = k.fsub(k.fmul(x0, cs), k.fmul(x1, sn));
        std::string y1 = k.fadd(k.fmul(x0, sn), k.fmul(x1, cs));
        x0 = y0;
        x1 = y1;
      }
    }
  }

  /// RMS over each head of each row: a thread holds 2 of every 8 columns of
  /// its rows, the quad (lanes 4r..4r+3) the whole head.
  void headNorm(std::vector<std::string> &x, int64_t headDim, double eps) {
    int64_t blocksPerHead = headDim / 8;
    int64_t heads = c.tileN / headDim;
    for (int64_t h = 0; h < heads; ++h)
      for (int half = 0; half < 2; ++half) {
        std::string ss = k.f32(0.0);
        for (int64_t j = h * blocksPerHead; j < (h + 1) * blocksPerHead; ++j)
          for (int e = 0; e < 2; ++e) {
            const std::string &xv = x[4 * j + 2 * half + e];
            ss = k.fadd(ss, k.fmul(xv, xv));
          }
        std::string total = k.warpSum(ss, 4);
        std::string inv = k.rsqrt(k.fadd(
            k.fdiv(total, k.f32(static_cast<double>(headDim))), k.f32(eps)));
        for (int64_t j = h * blocksPerHead; j < (h + 1) * blocksPerHead; ++j)
          for (int e = 0; e < 2; ++e) {
            std::string &xv = x[4 * j + 2 * half + e];
            xv = k.fmul(xv, inv);
          }
      }
  }

  /// tau(p) = 1 + attn_scale * ln(1 + floor((p + 1) / floor_scale)).
  std::string temperature(const std::string &p, const llvm::APFloat &scale,
                          int64_t floorScale) {
    std::string steps = k.op(
        "arith.divsi " + k.op("arith.addi " + p + ", " + k.i64(1) + " : i64") +
        ", " + k.i64(floorScale) + " : i64");
    std::string f = k.op("arith.sitofp " + steps + " : i64 to f32");
    std::string log = k.log(k.fadd(k.f32(1.0), f));
    return k.fadd(k.f32(1.0), k.fmul(k.f32(scale.convertToDouble()), log));
  }

  std::string padding;
  unsigned tokens = 0;
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
  if (ctx.elements[s.a] != "bf16" || ctx.elements[s.w] != "bf16")
    return s.linear.emitOpError()
           << "sm_90a GEMMs take bf16 activations and weights (got "
           << ctx.elements[s.a] << " x " << ctx.elements[s.w] << ")";
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
                                                   std::string &text) {
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
    GemmWriter writer(ctx, s, config, name);
    text += writer.write();

    GpuLaunch launch;
    launch.function = name;
    launch.blockThreads = 128 * (1 + config.consumers);
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
