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
//   expert's output (the addend) into the result.
//
//===----------------------------------------------------------------------===//

#include "Generators.h"
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

class GroupedWriter {
public:
  GroupedWriter(const KernelContext &ctx, const GroupedShape &s,
                int64_t consumers, int64_t stages, StringRef name)
      : ctx(ctx), s(s), consumers(consumers), stages(stages),
        k(name, params(ctx, s), 128 * (1 + consumers),
          "nvvm.minctasm = 1 : i32") {}

  int64_t tileM() const { return 64 * consumers; }
  // The gathering producer needs more than the 40 registers of a TMA-only
  // producer: 128 x 56 + 256 x 224 fits the 64K register file.
  int64_t producerRegs() const { return s.gateUp ? 56 : 40; }
  int64_t consumerRegs() const { return s.gateUp ? 224 : 232; }
  int64_t aBytes() const { return tileM() * kTileK * 2; }
  int64_t bBytes() const { return kTileN * kTileK * 2; }
  int64_t stageBytes() const { return aBytes() + bBytes(); }
  int64_t dynamicSharedBytes() const { return stages * stageBytes() + 1024; }

  std::string write() {
    prologue();
    k.beginIf(valid);
    setup();
    k.beginIf(k.cmp("eq", wg, k.index(0)));
    producer();
    k.beginElse();
    consumer();
    k.endIf();
    k.endIf();
    return k.finish();
  }

private:
  const KernelContext &ctx;
  const GroupedShape &s;
  int64_t consumers, stages;
  KernelText k;
  std::string valid, first, segmentEnd, wg, lane, tid, dyn, pad, aligned, full,
      empty, tileX;

  static std::string params(const KernelContext &ctx, const GroupedShape &s) {
    std::string p = "%tmB: !llvm.ptr {llvm.align = 64 : i64}";
    if (!s.gateUp)
      p += ", %tmA: !llvm.ptr {llvm.align = 64 : i64}";
    p += ", " + ctx.memrefParams();
    return p;
  }
  std::string mem(int i) const { return "%o" + std::to_string(i); }
  std::string bMap() const {
    return tensorMapType("1x" + std::to_string(kTileK) + "x" +
                         std::to_string(kBoxN));
  }
  std::string aMap() const {
    return tensorMapType(std::to_string(tileM()) + "x" +
                         std::to_string(kTileK));
  }
  std::string kTiles() { return k.index((s.k + kTileK - 1) / kTileK); }

  /// Block b -> (expert, N tile, row tile), experts in order, then N
  /// tiles, row tiles fastest: the blocks at work are one expert's row
  /// tiles over a run of N tiles, so each expert's weight tile is read from
  /// memory once for all its rows and its gathered rows stay in L2.
  void prologue() {
    std::string target = k.blockId('x');
    std::string res = k.fresh();
    std::string seen = k.fresh(), found = k.fresh(), ff = k.fresh(),
                fe = k.fresh(), fx = k.fresh(), fn = k.fresh();
    std::string e =
        k.beginFor(k.index(0), k.index(s.experts), k.index(1), res + ":6",
                   seen + " = " + k.index(0) + ", " + found + " = " +
                       k.op("arith.constant false") + ", " + ff + " = " +
                       k.index(0) + ", " + fe + " = " + k.index(0) + ", " + fx +
                       " = " + k.index(0) + ", " + fn + " = " + k.index(0) +
                       " : index, i1, index, index, index, index");
    auto offsetAt = [&](const std::string &i) {
      return k.op("arith.index_cast " +
                  k.op("memref.load " + mem(s.offsets) + "[" + i +
                       "] : " + ctx.memrefType(s.offsets)) +
                  " : i64 to index");
    };
    std::string lo = offsetAt(e), hi = offsetAt(k.add(e, k.index(1)));
    std::string tiles =
        k.div(k.add(k.sub(hi, lo), k.index(tileM() - 1)), k.index(tileM()));
    std::string end = k.add(seen, k.mul(tiles, k.index(tilesN())));
    std::string here = k.op("arith.andi " + k.cmp("ult", target, end) + ", " +
                            k.op("arith.xori " + found + ", " +
                                 k.op("arith.constant true") + " : i1") +
                            " : i1");
    std::string local = k.sub(target, seen);
    // An expert without rows has no blocks (`here` is false for it).
    std::string safeTiles =
        k.select(k.cmp("eq", tiles, k.index(0)), k.index(1), tiles, "index");
    std::string start =
        k.add(lo, k.mul(k.rem(local, safeTiles), k.index(tileM())));
    std::string nTile = k.div(local, safeTiles);
    k.endFor(end + ", " + k.op("arith.ori " + found + ", " + here + " : i1") +
             ", " + k.select(here, start, ff, "index") + ", " +
             k.select(here, hi, fe, "index") + ", " +
             k.select(here, e, fx, "index") + ", " +
             k.select(here, nTile, fn, "index") +
             " : index, i1, index, index, index, index");
    valid = res + "#1";
    first = res + "#2";
    segmentEnd = res + "#3";
    expert = res + "#4";
    tileX = res + "#5";
  }

public:
  /// Output tiles across N.
  int64_t tilesN() const {
    int64_t outCols = s.gateUp ? s.n / 2 : s.n;
    int64_t perTile = s.gateUp ? kBoxN : kTileN;
    return (outCols + perTile - 1) / perTile;
  }

private:
  std::string expert;

  void setup() {
    std::string bar = barrierType(stages);
    k.line("%dB = builtin.unrealized_conversion_cast %tmB : !llvm.ptr to " +
           bMap());
    if (!s.gateUp)
      k.line("%dA = builtin.unrealized_conversion_cast %tmA : !llvm.ptr to " +
             aMap());
    SharedArena arena = alignedDynamicShared(k);
    dyn = arena.memory;
    pad = arena.pad;
    aligned = arena.aligned;
    full = k.op("nvgpu.mbarrier.create -> " + bar);
    empty = k.op("nvgpu.mbarrier.create -> " + bar);
    tid = k.threadId();
    wg = k.div(tid, k.index(128));
    lane = k.rem(tid, k.index(128));
    // Full: the expect_tx arrival, plus one per producer thread when the
    // producers gather A themselves.
    int64_t fullCount = s.gateUp ? 1 + 128 : 1;
    k.beginIf(k.cmp("eq", tid, k.index(0)));
    std::string st = k.beginFor(k.index(0), k.index(stages), k.index(1));
    k.line("nvgpu.mbarrier.init " + full + "[" + st + "], " +
           k.index(fullCount) + " : " + bar);
    k.line("nvgpu.mbarrier.init " + empty + "[" + st + "], " +
           k.index(consumers) + " : " + bar);
    k.endFor();
    k.line("nvvm.fence.mbarrier.init");
    k.endIf();
    k.line("gpu.barrier");
  }

  std::string phaseOf(const std::string &iter, bool flip) {
    return parity(k, iter, stages, flip);
  }

  std::string view(const std::string &off, const std::string &shape) {
    return k.op("memref.view " + dyn + "[" + off +
                "][] : memref<?xi8, #gpu.address_space<workgroup>> to " +
                tileType(shape));
  }

  void producer() {
    std::string bar = barrierType(stages);
    k.line("nvvm.setmaxregister decrease " + std::to_string(producerRegs()));
    std::string leader = k.cmp("eq", lane, k.index(0));
    // gate_up: each producer thread gathers `chunks` 16-byte pieces of the
    // A tile per stage. Nothing per chunk stays live across the K loop (the
    // producer runs in few registers): each stage reloads its rows' tokens
    // (L1 hits).
    int64_t chunks = tileM() * 8 / 128;
    std::string it = k.beginFor(k.index(0), kTiles(), k.index(1));
    std::string st = k.rem(it, k.index(stages));
    std::string phase = phaseOf(it, /*flip=*/true);
    std::string offA = k.add(pad, k.mul(st, k.index(stageBytes())));
    std::string offB = k.add(offA, k.index(aBytes()));
    std::string kc = k.mul(it, k.index(kTileK));
    if (s.gateUp) // every producer thread writes the stage
      waitParity(k, empty, st, phase, bar);
    k.beginIf(leader);
    if (!s.gateUp)
      waitParity(k, empty, st, phase, bar);
    k.line("nvgpu.mbarrier.arrive.expect_tx " + full + "[" + st + "], " +
           k.index(s.gateUp ? bBytes() : stageBytes()) + " : " + bar);
    if (!s.gateUp) {
      std::string shape =
          std::to_string(tileM()) + "x" + std::to_string(kTileK);
      k.line("nvgpu.tma.async.load %dA[" + kc + ", " + first + "], " + full +
             "[" + st + "] to " + view(offA, shape) + " : " + aMap() + ", " +
             bar + " -> " + tileType(shape));
    }
    std::string boxShape =
        "1x" + std::to_string(kTileK) + "x" + std::to_string(kBoxN);
    for (int half = 0; half < 2; ++half) {
      // gate_up: the gate and the up columns of the same outputs; down: two
      // adjacent 64-column boxes.
      std::string col =
          s.gateUp
              ? k.add(k.mul(tileX, k.index(kBoxN)), k.index(half * (s.n / 2)))
              : k.add(k.mul(tileX, k.index(kTileN)), k.index(half * kBoxN));
      std::string off = k.add(offB, k.index(half * kBoxN * kTileK * 2));
      k.line("nvgpu.tma.async.load %dB[" + col + ", " + kc + ", " + expert +
             "], " + full + "[" + st + "] to " + view(off, boxShape) + " : " +
             bMap() + ", " + bar + " -> " + tileType(boxShape));
    }
    k.endIf();
    if (s.gateUp) {
      std::string aTile =
          std::to_string(tileM()) + "x" + std::to_string(kTileK);
      std::string bufA = view(offA, aTile);
      // A loop, not unrolled: the producer warpgroup runs in 56 registers.
      std::string j = k.beginFor(k.index(0), k.index(chunks), k.index(1));
      {
        std::string idx = k.add(k.mul(j, k.index(128)), lane);
        std::string r = k.div(idx, k.index(8));
        std::string c = k.rem(idx, k.index(8));
        // 128-byte swizzle: chunk c of row r lives at chunk c ^ (r mod 8).
        std::string swz =
            k.op("arith.xori " + c + ", " + k.rem(r, k.index(8)) + " : index");
        std::string pair = k.add(first, r);
        std::string inRow = k.cmp("ult", pair, segmentEnd);
        std::string safe = k.select(inRow, pair, first, "index");
        std::string token =
            k.op("arith.index_cast " +
                 k.op("memref.load " + mem(s.indices) + "[" + safe +
                      "] : " + ctx.memrefType(s.indices)) +
                 " : i64 to index");
        std::string srcK = k.add(kc, k.mul(c, k.index(8)));
        std::string okK = k.op("arith.andi " + inRow + ", " +
                               k.cmp("ult", srcK, k.index(s.k)) + " : i1");
        std::string n = k.select(okK, k.index(8), k.index(0), "index");
        std::string safeK = k.select(okK, srcK, k.index(0), "index");
        k.op("nvgpu.device_async_copy " + mem(s.input) + "[" + token + ", " +
             safeK + "], " + bufA + "[" + r + ", " + k.mul(swz, k.index(8)) +
             "], 8, " + n + " {bypassL1} : " + ctx.memrefType(s.input) +
             " to " + tileType(aTile));
      }
      k.endFor();
      k.line("nvvm.cp.async.commit.group");
      // The copies of the previous stage have landed: publish them.
      k.line("nvvm.cp.async.wait.group 1");
      k.line("nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, "
             "space = #nvvm.shared_space<cta>}");
      k.beginIf(k.cmp("ugt", it, k.index(0)));
      std::string prev = k.rem(k.add(it, k.index(stages - 1)), k.index(stages));
      k.op("nvgpu.mbarrier.arrive " + full + "[" + prev + "] : " + bar +
           " -> !nvgpu.mbarrier.token");
      k.endIf();
    }
    k.endFor();
    if (s.gateUp) {
      k.line("nvvm.cp.async.wait.group 0");
      k.line("nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, "
             "space = #nvvm.shared_space<cta>}");
      std::string last = k.rem(k.sub(kTiles(), k.index(1)), k.index(stages));
      k.op("nvgpu.mbarrier.arrive " + full + "[" + last + "] : " + bar +
           " -> !nvgpu.mbarrier.token");
    }
  }
  void consumer() {
    std::string bar = barrierType(stages);
    std::string acc = accType(kTileN);
    k.line("nvvm.setmaxregister increase " + std::to_string(consumerRegs()));
    std::string cw = k.sub(wg, k.index(1));
    std::string base64 =
        k.op("arith.index_cast " + aligned + " : index to i64");
    // One K tile; the first overwrites the accumulator (scale-d 0), so it
    // needs no zeroing.
    auto kStep = [&](const std::string &it, const std::string &accIn,
                     bool first) {
      std::string st = k.rem(it, k.index(stages));
      waitParity(k, full, st, phaseOf(it, /*flip=*/false), bar);
      std::string stage = addressOf(k, base64, st, stageBytes());
      std::string aAddr = addressOf(k, stage, cw, 64 * kTileK * 2);
      std::string bAddr =
          k.op("arith.addi " + stage + ", " + k.i64(aBytes()) + " : i64");
      std::string descA = descriptor(k, aAddr);
      // MN-major B: 8 KB between the two 64-column boxes.
      std::string descB = descriptor(k, bAddr, kBoxN * kTileK * 2);
      k.line("nvvm.wgmma.fence.aligned");
      std::string running =
          mmaKTile(k, descA, descB, accIn, kTileN, "row", first);
      k.line("nvvm.wgmma.commit.group.sync.aligned");
      k.line("nvvm.wgmma.wait.group.sync.aligned 1");
      if (!first) {
        k.beginIf(k.cmp("eq", lane, k.index(0)));
        std::string prev =
            k.rem(k.add(it, k.index(stages - 1)), k.index(stages));
        k.op("nvgpu.mbarrier.arrive " + empty + "[" + prev + "] : " + bar +
             " -> !nvgpu.mbarrier.token");
        k.endIf();
      }
      return running;
    };
    std::string firstTile =
        kStep(k.index(0), k.op("llvm.mlir.undef : " + acc), /*first=*/true);
    std::string result = k.fresh(), carried = k.fresh();
    std::string it = k.beginFor(k.index(1), kTiles(), k.index(1), result,
                                carried + " = " + firstTile + " : " + acc);
    k.endFor(kStep(it, carried, /*first=*/false) + " : " + acc);
    k.line("nvvm.wgmma.wait.group.sync.aligned 0");
    epilogue(result, cw);
  }

  std::string fragment(const std::string &acc, int64_t i) {
    return k.op("llvm.extractvalue " + acc + "[" + std::to_string(i) +
                "] : " + accType(kTileN));
  }

  void epilogue(const std::string &acc, const std::string &cw) {
    Fragments frag = fragmentsOf(k, lane, first, cw);
    std::string pairCol = frag.pairColumn;
    std::string *rowsOf = frag.rows;
    int64_t blocks = kTileN / 8;
    std::string resultType = ctx.memrefType(s.result);
    std::string element = ctx.elements[s.result];
    for (int half = 0; half < 2; ++half) {
      std::string row = rowsOf[half];
      k.beginIf(k.cmp("ult", row, segmentEnd));
      if (s.gateUp) {
        std::string g = k.toF32(k.op("memref.load " + mem(s.gates) + "[" + row +
                                     "] : " + ctx.memrefType(s.gates)),
                                ctx.elements[s.gates]);
        std::string outBase = k.mul(tileX, k.index(kBoxN));
        for (int64_t j = 0; j < blocks / 2; ++j) {
          std::string col = k.add(k.add(outBase, k.index(8 * j)), pairCol);
          std::string y[2];
          for (int e = 0; e < 2; ++e) {
            std::string gate = k.fmul(g, fragment(acc, 4 * j + 2 * half + e));
            std::string up =
                k.fmul(g, fragment(acc, 4 * (j + blocks / 2) + 2 * half + e));
            y[e] = k.fromF32(k.swiglu(gate, up), element);
          }
          k.beginIf(k.cmp("ult", col, k.index(s.n / 2)));
          std::string vec = k.op("vector.from_elements " + y[0] + ", " + y[1] +
                                 " : vector<2x" + element + ">");
          k.line("vector.store " + vec + ", " + mem(s.result) + "[" + row +
                 ", " + col + "] : " + resultType + ", vector<2x" + element +
                 ">");
          k.endIf();
        }
      } else {
        std::string token =
            k.op("arith.index_cast " +
                 k.op("memref.load " + mem(s.indices) + "[" + row +
                      "] : " + ctx.memrefType(s.indices)) +
                 " : i64 to index");
        std::string outBase = k.mul(tileX, k.index(kTileN));
        for (int64_t j = 0; j < blocks; ++j) {
          std::string col = k.add(k.add(outBase, k.index(8 * j)), pairCol);
          k.beginIf(k.cmp("ult", col, k.index(s.n)));
          for (int e = 0; e < 2; ++e)
            k.op("memref.atomic_rmw addf " +
                 fragment(acc, 4 * j + 2 * half + e) + ", " + mem(s.result) +
                 "[" + token + ", " + (e ? k.add(col, k.index(1)) : col) +
                 "] : (f32, " + resultType + ") -> f32");
          k.endIf();
        }
      }
      k.endIf();
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
  } else {
    return false;
  }
  int w = ctx.operandOf(weight), in = ctx.operandOf(input);
  if (w < 0 || in < 0 || ctx.elements[w] != "bf16" ||
      ctx.elements[in] != "bf16")
    return false;
  int64_t k = ctx.types[w].getDimSize(1), n = ctx.types[w].getDimSize(2);
  return k % 8 == 0 && (gateUp ? n / 2 : n) % kBoxN == 0;
}

LogicalResult mlir::kiln::cuda::generateGroupedWgmmaKernel(
    const KernelContext &ctx, GpuKernel &out, std::string &text) {
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
  } else {
    return ctx.kernel.emitError("a grouped GEMM kernel holds one expert op");
  }
  s.result = ctx.numArgs;
  auto w = ctx.types[s.weight];
  s.experts = w.getDimSize(0);
  s.k = w.getDimSize(1);
  s.n = w.getDimSize(2);
  if (ctx.elements[s.input] != "bf16" || ctx.elements[s.weight] != "bf16")
    return op->emitOpError("sm_90a expert GEMMs take bf16 inputs and weights");
  if (s.k % 8 != 0 || (s.gateUp ? (s.n / 2) : s.n) % kBoxN != 0)
    return op->emitOpError()
           << "the sm_90a expert GEMM needs K a multiple of 8 and output "
              "columns a multiple of "
           << kBoxN << " (K = " << s.k << ", N = " << s.n << ")";
  std::string name = ctx.name();

  if (!s.gateUp)
    addExpertDownInit(ctx, s.addend, s.result, out, text);

  GpuStep step;
  struct Variant {
    StringRef suffix;
    int64_t consumers, stages, maxRows;
  } variants[] = {{"_decode", 1, 9, 64}, {"_prefill", 2, 4, -1}};
  for (const Variant &v : variants) {
    std::string fn = name + v.suffix.str();
    GroupedWriter writer(ctx, s, v.consumers, v.stages, fn);
    text += writer.write();
    GpuLaunch launch;
    launch.function = fn;
    launch.blockThreads = 128 * (1 + v.consumers);
    launch.dynamicSharedBytes = writer.dynamicSharedBytes();
    // At most ceil(pairs / rows) row tiles plus one partial tile per
    // expert, each across every N tile; blocks past the count exit.
    GridExtent blocks =
        rowsGrid(s.indices, writer.tileM(), /*perRow=*/writer.tilesN());
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
    launch.selectOperand = s.indices;
    launch.maxRows = v.maxRows;
    step.variants.push_back(std::move(launch));
  }
  out.steps.push_back(std::move(step));
  return success();
}
