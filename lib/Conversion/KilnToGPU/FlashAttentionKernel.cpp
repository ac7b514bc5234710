//===- FlashAttentionKernel.cpp - Prefill attention on wgmma --------------===//
//
// FlashAttention on the Hopper pipeline, for prefill steps (head_dim a
// multiple of 64, up to 256): a block owns one query head and 64 query rows
// per consumer warpgroup (GQA: the group's heads are neighbouring blocks,
// so a KV tile is fetched from memory once and from L2 by the others); a
// producer warpgroup streams the KV pool's key and value tiles (64 keys) by TMA
// into a ring of up to four stages (full/empty mbarriers). Each consumer:
//   S = Q·Kᵀ    SS-wgmma m64n64k16 over head_dim (Q and K both K-major);
//   softmax     online, on the S fragments in registers: scale (and the
//               temperature when the op has one), causal/chunk masks from
//               the key and query positions, row max over the quad, the
//               output and the partial row sums rescaled;
//   O += P·V    RS-wgmma m64n{d}k16 with P converted to bf16 in registers
//               (the S accumulator layout is the A-fragment layout, so no
//               shuffles), V MN-major from its TMA boxes, through inline
//               PTX because no op takes A from registers.
// The key tiles a block visits are bounded by the positions (ascending in
// the pool): none after the block's last query, none before its first
// query's chunk. Decode steps keep the split-KV kernel (AttentionKernel.cpp).
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

constexpr int64_t kKeys = 64;     // keys per tile
constexpr int64_t kConsumers = 2; // 128 query rows per block
/// Dynamic shared memory a block may opt into on sm_90.
constexpr int64_t kSharedLimit = 232448;
constexpr int64_t kBox = 64 * 64 * 2; // one 64x64 bf16 box

class FlashWriter {
public:
  FlashWriter(const KernelContext &ctx, AttentionOp a, StringRef name)
      : ctx(ctx), a(a), k(name, params(ctx, a), 128 * (1 + kConsumers),
                          "nvvm.minctasm = 1 : i32") {
    q = ctx.operandOf(a.getQuery());
    key = ctx.operandOf(a.getKey());
    value = ctx.operandOf(a.getValue());
    positions = ctx.operandOf(a.getPositions());
    result = ctx.operandOf(a.getResult());
    heads = a.getNumHeads();
    d = ctx.width(q) / heads;
    group = heads / a.getNumKvHeads();
    boxes = d / 64;
    // As many K/V stages as fit (up to 4): more tiles in flight hide the
    // TMA latency behind the consumers' softmax.
    stages = std::clamp<int64_t>(
        (kSharedLimit - qBytes() - 1024) / stageBytes(), 2, 4);
    chunk = a.getMask() == MaskKind::Chunked ? a.getChunkSize().value_or(0) : 0;
  }

  int64_t qBytes() const { return kConsumers * boxes * kBox; }
  int64_t stageBytes() const { return 2 * boxes * kBox; }
  int64_t dynamicSharedBytes() const {
    return qBytes() + stages * stageBytes() + 1024;
  }

  std::string write() {
    setup();
    k.beginIf(k.cmp("eq", wg, k.index(0)));
    producer();
    k.beginElse();
    consumer();
    k.endIf();
    return k.finish();
  }

private:
  const KernelContext &ctx;
  AttentionOp a;
  KernelText k;
  int q, key, value, positions, result;
  int64_t heads, d, group, boxes, chunk, stages;
  std::string wg, lane, tid, dyn, pad, aligned, qFull, full, empty, head,
      kvHead, m0, rows, keys, tileLo, tileHi;

  static std::string params(const KernelContext &ctx, AttentionOp a) {
    std::string p = "%tmQ: !llvm.ptr {llvm.align = 64 : i64}, %tmK: "
                    "!llvm.ptr {llvm.align = 64 : i64}, %tmV: !llvm.ptr "
                    "{llvm.align = 64 : i64}";
    p += ", " + ctx.memrefParams();
    return p + ", %kpos: memref<?xi64>, %kcount: memref<1xi64>";
  }
  std::string mem(int i) const { return "%o" + std::to_string(i); }
  std::string map() const { return tensorMapType("64x64"); }
  std::string bar(int64_t n) const { return barrierType(n); }

  std::string loadIndex(const std::string &m, const std::string &type,
                        const std::string &at) {
    return k.op("memref.load " + m + "[" + at + "] : " + type);
  }

  void setup() {
    for (const char *t : {"Q", "K", "V"})
      k.line(std::string("%d") + t +
             " = builtin.unrealized_conversion_cast "
             "%tm" +
             t + " : !llvm.ptr to " + map());
    SharedArena arena = alignedDynamicShared(k);
    dyn = arena.memory;
    pad = arena.pad;
    aligned = arena.aligned;
    qFull = k.op("nvgpu.mbarrier.create -> " + bar(1));
    full = k.op("nvgpu.mbarrier.create -> " + bar(stages));
    empty = k.op("nvgpu.mbarrier.create -> " + bar(stages));
    tid = k.threadId();
    wg = k.div(tid, k.index(128));
    lane = k.rem(tid, k.index(128));
    // Heads vary fastest, so the blocks in flight share a KV head's tiles
    // in L2; row tiles run last to first, so the longest (causal) ones
    // start first and the short ones fill the tail.
    head = k.blockId('x');
    kvHead = k.div(head, k.index(group));
    std::string rowTile =
        k.sub(k.sub(k.op("gpu.grid_dim y"), k.index(1)), k.blockId('y'));
    m0 = k.mul(rowTile, k.index(64 * kConsumers));
    rows = k.op("memref.dim " + mem(q) + ", " + k.index(0) + " : " +
                ctx.memrefType(q));
    keys = k.op("arith.index_cast " +
                loadIndex("%kcount", "memref<1xi64>", k.index(0)) +
                " : i64 to index");
    // Key tiles this block can see: positions ascend in the pool.
    std::string lastRow = k.minIndex(k.add(m0, k.index(64 * kConsumers - 1)),
                                     k.sub(rows, k.index(1)));
    std::string maxPos =
        loadIndex(mem(positions), ctx.memrefType(positions), lastRow);
    std::string minPos =
        loadIndex(mem(positions), ctx.memrefType(positions), m0);
    std::string tiles = k.div(k.add(keys, k.index(kKeys - 1)), k.index(kKeys));
    // hi: tiles whose first key is not after the last query.
    std::string hiRes = k.fresh(), hiAcc = k.fresh();
    std::string t = k.beginFor(k.index(0), tiles, k.index(1), hiRes,
                               hiAcc + " = " + k.index(0) + " : index");
    std::string firstPos =
        loadIndex("%kpos", "memref<?xi64>", k.mul(t, k.index(kKeys)));
    std::string before = k.cmp("sle", firstPos, maxPos, "i64");
    k.endFor(k.select(before, k.add(t, k.index(1)), hiAcc, "index") +
             " : index");
    tileHi = hiRes;
    tileLo = k.index(0);
    if (chunk) {
      std::string start =
          k.op("arith.muli " +
               k.op("arith.divsi " + minPos + ", " + k.i64(chunk) + " : i64") +
               ", " + k.i64(chunk) + " : i64");
      // lo: tiles whose last key is before the first query's chunk.
      std::string loRes = k.fresh(), loAcc = k.fresh();
      std::string u = k.beginFor(k.index(0), tileHi, k.index(1), loRes,
                                 loAcc + " = " + k.index(0) + " : index");
      std::string last =
          k.minIndex(k.add(k.mul(u, k.index(kKeys)), k.index(kKeys - 1)),
                     k.sub(keys, k.index(1)));
      std::string lastPos = loadIndex("%kpos", "memref<?xi64>", last);
      std::string stale = k.cmp("slt", lastPos, start, "i64");
      k.endFor(k.select(stale, k.add(u, k.index(1)), loAcc, "index") +
               " : index");
      tileLo = loRes;
    }
    k.beginIf(k.cmp("eq", tid, k.index(0)));
    k.line("nvgpu.mbarrier.init " + qFull + "[" + k.index(0) + "], " +
           k.index(1) + " : " + bar(1));
    std::string st = k.beginFor(k.index(0), k.index(stages), k.index(1));
    k.line("nvgpu.mbarrier.init " + full + "[" + st + "], " + k.index(1) +
           " : " + bar(stages));
    k.line("nvgpu.mbarrier.init " + empty + "[" + st + "], " +
           k.index(kConsumers) + " : " + bar(stages));
    k.endFor();
    k.line("nvvm.fence.mbarrier.init");
    k.endIf();
    k.line("gpu.barrier");
  }

  std::string view(const std::string &off) {
    return k.op("memref.view " + dyn + "[" + off +
                "][] : memref<?xi8, #gpu.address_space<workgroup>> to " +
                tileType("64x64"));
  }

  std::string phase(const std::string &i, bool flip) {
    return parity(k, i, stages, flip);
  }

  void producer() {
    k.line("nvvm.setmaxregister decrease 40");
    k.beginIf(k.cmp("eq", lane, k.index(0)));
    k.line("nvgpu.mbarrier.arrive.expect_tx " + qFull + "[" + k.index(0) +
           "], " + k.index(qBytes()) + " : " + bar(1));
    for (int64_t c = 0; c < kConsumers; ++c)
      for (int64_t b = 0; b < boxes; ++b) {
        std::string off = k.add(pad, k.index((c * boxes + b) * kBox));
        std::string col = k.add(k.mul(head, k.index(d)), k.index(64 * b));
        std::string row = k.add(m0, k.index(64 * c));
        k.line("nvgpu.tma.async.load %dQ[" + col + ", " + row + "], " + qFull +
               "[" + k.index(0) + "] to " + view(off) + " : " + map() + ", " +
               bar(1) + " -> " + tileType("64x64"));
      }
    std::string t = k.beginFor(tileLo, tileHi, k.index(1));
    std::string i = k.sub(t, tileLo);
    std::string st = k.rem(i, k.index(stages));
    waitParity(k, empty, st, phase(i, true), bar(stages));
    k.line("nvgpu.mbarrier.arrive.expect_tx " + full + "[" + st + "], " +
           k.index(stageBytes()) + " : " + bar(stages));
    std::string stage =
        k.add(k.add(pad, k.index(qBytes())), k.mul(st, k.index(stageBytes())));
    std::string keyRow = k.mul(t, k.index(kKeys));
    for (int which = 0; which < 2; ++which)
      for (int64_t b = 0; b < boxes; ++b) {
        std::string off = k.add(stage, k.index((which * boxes + b) * kBox));
        std::string col = k.add(k.mul(kvHead, k.index(d)), k.index(64 * b));
        k.line(std::string("nvgpu.tma.async.load ") +
               (which ? "%dV[" : "%dK[") + col + ", " + keyRow + "], " + full +
               "[" + st + "] to " + view(off) + " : " + map() + ", " +
               bar(stages) + " -> " + tileType("64x64"));
      }
    k.endFor();
    k.endIf();
  }

  /// Packs two f32 into one register of bf16x2 (the low half first).
  std::string pack(const std::string &lo, const std::string &hi) {
    std::string v =
        k.op("vector.from_elements " + lo + ", " + hi + " : vector<2xf32>");
    std::string h =
        k.op("arith.truncf " + v + " : vector<2xf32> to vector<2xbf16>");
    std::string i =
        k.op("vector.bitcast " + h + " : vector<2xbf16> to vector<1xi32>");
    return k.op("vector.extract " + i + "[0] : i32 from vector<1xi32>");
  }

  /// O += P·V_tile for one k16 slice: A (P) in registers, B by descriptor.
  /// `accumulate` (i32): 0 overwrites O (scale-d 0).
  std::string pvMma(const std::string a[4], const std::string &desc,
                    const std::string &acc, const std::string &accumulate) {
    int64_t outs = d / 2;
    std::string regs, constraints, operands;
    for (int64_t r = 0; r < outs; ++r) {
      regs += (r ? ", $" : "$") + std::to_string(r);
      constraints += "=f,";
    }
    std::string asmText =
        "{ .reg .pred p; setp.ne.b32 p, $" + std::to_string(outs + 5) +
        ", 0; wgmma.mma_async.sync.aligned.m64n" + std::to_string(d) +
        "k16.f32.bf16.bf16 {" + regs + "}, {$" + std::to_string(outs) + ", $" +
        std::to_string(outs + 1) + ", $" + std::to_string(outs + 2) + ", $" +
        std::to_string(outs + 3) + "}, $" + std::to_string(outs + 4) +
        ", p, 1, 1, 1; }";
    constraints += "r,r,r,r,l,r";
    for (int64_t r = 0; r < outs; ++r)
      constraints += "," + std::to_string(r);
    operands = a[0] + ", " + a[1] + ", " + a[2] + ", " + a[3] + ", " + desc +
               ", " + accumulate;
    std::string types = "i32, i32, i32, i32, i64, i32";
    std::vector<std::string> in(outs);
    for (int64_t r = 0; r < outs; ++r) {
      in[r] = fragment(acc, r, d);
      operands += ", " + in[r];
      types += ", f32";
    }
    return k.op("llvm.inline_asm has_side_effects \"" + asmText + "\", \"" +
                constraints + "\" " + operands + " : (" + types + ") -> " +
                accType(d));
  }

  std::string fragment(const std::string &acc, int64_t i, int64_t n) {
    return k.op("llvm.extractvalue " + acc + "[" + std::to_string(i) +
                "] : " + accType(n));
  }

  void consumer() {
    k.line("nvvm.setmaxregister increase 232");
    std::string cw = k.sub(wg, k.index(1));
    Fragments frag = fragmentsOf(k, lane, m0, cw);
    std::string quad2 = frag.pairColumn;
    std::string *rowOf = frag.rows;
    std::string qpos[2], tau[2];
    for (int h = 0; h < 2; ++h) {
      std::string safe =
          k.select(k.cmp("ult", rowOf[h], rows), rowOf[h], k.index(0), "index");
      qpos[h] = loadIndex(mem(positions), ctx.memrefType(positions), safe);
      tau[h] = attentionScale(k, a, qpos[h]);
    }
    waitParity(k, qFull, k.index(0), k.op("arith.constant false"), bar(1));
    std::string base64 =
        k.op("arith.index_cast " + aligned + " : index to i64");
    std::string qAddr = addressOf(k, base64, cw, boxes * kBox);
    std::string oType = accType(d), sType = accType(kKeys);
    std::string negInf = k.f32(-std::numeric_limits<double>::infinity());
    std::string stages0 =
        k.op("arith.addi " + base64 + ", " + k.i64(qBytes()) + " : i64");
    auto stageOf = [&](const std::string &tile) {
      return k.rem(k.sub(tile, tileLo), k.index(stages));
    };
    auto awaitStage = [&](const std::string &tile) {
      std::string ti = k.sub(tile, tileLo);
      waitParity(k, full, stageOf(tile), phase(ti, false), bar(stages));
    };
    auto stageAddress = [&](const std::string &tile) {
      return addressOf(k, stages0, stageOf(tile), stageBytes());
    };
    // S = Q·Kᵀ of a stage, box by box, issued (after a fence) without
    // waiting; the first wgmma overwrites S, so S needs no zeroing.
    auto issueScores = [&](const std::string &stage) {
      std::string s = k.op("llvm.mlir.undef : " + sType);
      for (int64_t b = 0; b < boxes; ++b) {
        std::string qa = descriptor(
            k, k.op("arith.addi " + qAddr + ", " + k.i64(b * kBox) + " : i64"));
        std::string kb = descriptor(
            k, k.op("arith.addi " + stage + ", " + k.i64(b * kBox) + " : i64"));
        s = mmaKTile(k, qa, kb, s, kKeys, "col", /*overwrite=*/b == 0);
      }
      k.line("nvvm.wgmma.commit.group.sync.aligned");
      return s;
    };
    // O += P·V of a stage, issued without waiting; `first` (i1) overwrites
    // O instead, so O needs no zeroing either.
    auto issuePv = [&](const std::vector<std::string> &packs,
                       const std::string &stage, std::string o,
                       const std::string &first) {
      std::string vDesc = descriptor(
          k,
          k.op("arith.addi " + stage + ", " + k.i64(boxes * kBox) + " : i64"),
          kBox);
      std::string accumulate = k.select(first, k.i32(0), k.i32(1), "i32");
      for (int64_t step = 0; step < kKeys / 16; ++step) {
        // 16 key rows of the MN-major V boxes: 2048 bytes.
        std::string desc = step ? k.op("arith.addi " + vDesc + ", " +
                                       k.i64(128 * step) + " : i64")
                                : vDesc;
        std::string regs[4] = {packs[4 * step], packs[4 * step + 1],
                               packs[4 * step + 2], packs[4 * step + 3]};
        o = pvMma(regs, desc, o, step ? k.i32(1) : accumulate);
      }
      k.line("nvvm.wgmma.commit.group.sync.aligned");
      return o;
    };
    auto release = [&](const std::string &tile) {
      k.beginIf(k.cmp("eq", lane, k.index(0)));
      k.op("nvgpu.mbarrier.arrive " + empty + "[" + stageOf(tile) +
           "] : " + bar(stages) + " -> !nvgpu.mbarrier.token");
      k.endIf();
    };
    struct Softmax {
      std::string m[2], l[2], corr[2];
      std::vector<std::string> packs; // P as bf16 A fragments
    };
    // Online softmax of one key tile on the S fragments.
    auto softmax = [&](const std::string &s, const std::string &tile,
                       const std::string &mIn0, const std::string &mIn1,
                       const std::string &lIn0, const std::string &lIn1) {
      // Online softmax on the fragments.
      std::string keyBase = k.mul(tile, k.index(kKeys));
      std::string mIn[2] = {mIn0, mIn1}, lIn[2] = {lIn0, lIn1};
      std::string mOut[2], lOut[2], corr[2];
      std::vector<std::string> p(kKeys / 2);
      for (int h = 0; h < 2; ++h) {
        std::vector<std::string> sc(kKeys / 4);
        std::string rowMax = negInf;
        for (int64_t j = 0; j < kKeys / 8; ++j)
          for (int e = 0; e < 2; ++e) {
            std::string col =
                k.add(k.add(keyBase, k.index(8 * j)), k.add(quad2, k.index(e)));
            std::string inKeys = k.cmp("ult", col, keys);
            std::string kp =
                loadIndex("%kpos", "memref<?xi64>",
                          k.select(inKeys, col, k.index(0), "index"));
            std::string vis = k.op("arith.andi " + inKeys + ", " +
                                   k.cmp("sle", kp, qpos[h], "i64") + " : i1");
            if (chunk)
              vis = k.op("arith.andi " + vis + ", " +
                         sameChunk(k, kp, qpos[h], chunk) + " : i1");
            std::string v =
                k.fmul(fragment(s, 4 * j + 2 * h + e, kKeys), tau[h]);
            v = k.select(vis, v, negInf, "f32");
            sc[2 * j + e] = v;
            rowMax = k.fmax(rowMax, v);
          }
        // The four lanes of a quad hold a row's 64 keys.
        for (int off : {1, 2}) {
          std::string other = k.fresh();
          k.line(other + ", " + k.fresh() + " = gpu.shuffle xor " + rowMax +
                 ", " + k.i32(off) + ", " + k.i32(32) + " : f32");
          rowMax = k.fmax(rowMax, other);
        }
        mOut[h] = k.fmax(mIn[h], rowMax);
        // A row that has seen no visible key yet keeps exp(-inf) = 0 terms.
        std::string isInf =
            k.op("arith.cmpf oeq, " + mOut[h] + ", " + negInf + " : f32");
        std::string mUse = k.select(isInf, k.f32(0.0), mOut[h], "f32");
        corr[h] = k.exp(k.fsub(mIn[h], mUse));
        std::string sum = k.f32(0.0);
        for (int64_t j = 0; j < kKeys / 4; ++j) {
          std::string e = k.exp(k.fsub(sc[j], mUse));
          sum = k.fadd(sum, e);
          p[(j / 2) * 4 + 2 * h + (j % 2)] = e;
        }
        lOut[h] = k.fadd(k.fmul(lIn[h], corr[h]), sum);
      }
      Softmax out;
      for (int h = 0; h < 2; ++h) {
        out.m[h] = mOut[h];
        out.l[h] = lOut[h];
        out.corr[h] = corr[h];
      }
      for (int64_t step = 0; step < kKeys / 16; ++step) {
        // Keys 16*step.. : S blocks 2*step and 2*step+1.
        out.packs.push_back(pack(p[(2 * step) * 4 + 0], p[(2 * step) * 4 + 1]));
        out.packs.push_back(pack(p[(2 * step) * 4 + 2], p[(2 * step) * 4 + 3]));
        out.packs.push_back(
            pack(p[(2 * step + 1) * 4 + 0], p[(2 * step + 1) * 4 + 1]));
        out.packs.push_back(
            pack(p[(2 * step + 1) * 4 + 2], p[(2 * step + 1) * 4 + 3]));
      }
      return out;
    };

    // FA3's intra-warpgroup overlap: iteration t issues S(t) and the P·V of
    // tile t-1 together, waits for S(t) alone and runs its softmax while
    // the tensor cores finish P·V(t-1); O is rescaled only once that P·V
    // has completed, with no wgmma in flight, and P crosses iterations as
    // bf16 registers. ptxas sees no accumulator touched in flight.
    // (Every query sees at least its own key, so there is a first tile.)
    k.beginIf(k.cmp("ult", tileLo, tileHi));
    awaitStage(tileLo);
    k.endIf();
    k.line("nvvm.wgmma.fence.aligned");
    std::string firstS = issueScores(stageAddress(tileLo));
    k.line("nvvm.wgmma.wait.group.sync.aligned 0");
    Softmax first =
        softmax(firstS, tileLo, negInf, negInf, k.f32(0.0), k.f32(0.0));
    int64_t packCount = static_cast<int64_t>(first.packs.size());
    std::string res = k.fresh(), oIn = k.fresh();
    std::string mIn[2] = {k.fresh(), k.fresh()},
                lIn[2] = {k.fresh(), k.fresh()};
    std::vector<std::string> pIn(packCount);
    std::string carried = oIn + " = " + k.op("llvm.mlir.undef : " + oType);
    std::string types = oType;
    for (int h = 0; h < 2; ++h) {
      carried += ", " + mIn[h] + " = " + first.m[h] + ", " + lIn[h] + " = " +
                 first.l[h];
      types += ", f32, f32";
    }
    for (int64_t j = 0; j < packCount; ++j) {
      pIn[j] = k.fresh();
      carried += ", " + pIn[j] + " = " + first.packs[j];
      types += ", i32";
    }
    std::string t = k.beginFor(k.add(tileLo, k.index(1)), tileHi, k.index(1),
                               res + ":" + std::to_string(5 + packCount),
                               carried + " : " + types);
    std::string prev = k.sub(t, k.index(1));
    awaitStage(t);
    k.line("nvvm.wgmma.fence.aligned");
    std::string s = issueScores(stageAddress(t));
    std::string oPv =
        issuePv(pIn, stageAddress(prev), oIn, k.cmp("eq", prev, tileLo));
    k.line("nvvm.wgmma.wait.group.sync.aligned 1");
    Softmax cur = softmax(s, t, mIn[0], mIn[1], lIn[0], lIn[1]);
    k.line("nvvm.wgmma.wait.group.sync.aligned 0");
    release(prev);
    // Rescale O.
    std::string o = k.op("llvm.mlir.undef : " + oType);
    for (int64_t r = 0; r < d / 2; ++r) {
      int h = (r % 4) / 2;
      std::string v = k.fmul(fragment(oPv, r, d), cur.corr[h]);
      o = k.op("llvm.insertvalue " + v + ", " + o + "[" + std::to_string(r) +
               "] : " + oType);
    }
    std::string yielded = o;
    for (int h = 0; h < 2; ++h)
      yielded += ", " + cur.m[h] + ", " + cur.l[h];
    for (const std::string &pk : cur.packs)
      yielded += ", " + pk;
    k.endFor(yielded + " : " + types);
    // The last tile's P·V.
    std::vector<std::string> lastPacks;
    for (int64_t j = 0; j < packCount; ++j)
      lastPacks.push_back(res + "#" + std::to_string(5 + j));
    std::string last = k.sub(tileHi, k.index(1));
    k.line("nvvm.wgmma.fence.aligned");
    std::string finalO = issuePv(lastPacks, stageAddress(last), res + "#0",
                                 k.cmp("eq", last, tileLo));
    k.line("nvvm.wgmma.wait.group.sync.aligned 0");
    std::string finalL[2] = {res + "#2", res + "#4"};
    // O / l, the quad's partial sums added first.
    std::string element = ctx.elements[result];
    for (int h = 0; h < 2; ++h) {
      std::string total = finalL[h];
      for (int off : {1, 2}) {
        std::string other = k.fresh();
        k.line(other + ", " + k.fresh() + " = gpu.shuffle xor " + total + ", " +
               k.i32(off) + ", " + k.i32(32) + " : f32");
        total = k.fadd(total, other);
      }
      std::string inv = k.fdiv(k.f32(1.0), total);
      k.beginIf(k.cmp("ult", rowOf[h], rows));
      for (int64_t j = 0; j < d / 8; ++j) {
        std::string col =
            k.add(k.add(k.mul(head, k.index(d)), k.index(8 * j)), quad2);
        std::string v0 =
            k.fromF32(k.fmul(fragment(finalO, 4 * j + 2 * h, d), inv), element);
        std::string v1 = k.fromF32(
            k.fmul(fragment(finalO, 4 * j + 2 * h + 1, d), inv), element);
        std::string vec = k.op("vector.from_elements " + v0 + ", " + v1 +
                               " : vector<2x" + element + ">");
        k.line("vector.store " + vec + ", " + mem(result) + "[" + rowOf[h] +
               ", " + col + "] : " + ctx.memrefType(result) + ", vector<2x" +
               element + ">");
      }
      k.endIf();
    }
  }
};

} // namespace

bool mlir::kiln::cuda::flashAttentionFits(const KernelContext &ctx,
                                          AttentionOp a) {
  int q = ctx.operandOf(a.getQuery()), key = ctx.operandOf(a.getKey()),
      value = ctx.operandOf(a.getValue());
  int64_t d = ctx.width(q) / a.getNumHeads();
  return d % 64 == 0 && d <= 256 && ctx.elements[q] == "bf16" &&
         ctx.elements[key] == "bf16" && ctx.elements[value] == "bf16";
}

GpuLaunch mlir::kiln::cuda::writeFlashAttention(const KernelContext &ctx,
                                                AttentionOp a, StringRef name,
                                                std::string &text) {
  FlashWriter writer(ctx, a, name);
  text += writer.write();
  int q = ctx.operandOf(a.getQuery()), key = ctx.operandOf(a.getKey()),
      value = ctx.operandOf(a.getValue());
  GpuLaunch launch;
  launch.function = name.str();
  launch.blockThreads = 128 * (1 + kConsumers);
  launch.dynamicSharedBytes = writer.dynamicSharedBytes();
  launch.grid[0] = fixedGrid(a.getNumHeads());
  launch.grid[1] = rowsGrid(q, 64 * kConsumers);
  launch.params.push_back(
      {GpuParam::Kind::TensorMap, static_cast<unsigned>(q), 64, 64});
  GpuParam kMap{GpuParam::Kind::TensorMap, static_cast<unsigned>(key), 64, 64};
  kMap.pool = true;
  GpuParam vMap{GpuParam::Kind::TensorMap, static_cast<unsigned>(value), 64,
                64};
  vMap.pool = true;
  launch.params.push_back(kMap);
  launch.params.push_back(vMap);
  addOperandParams(ctx, launch, key, value);
  launch.params.push_back(
      {GpuParam::Kind::KeyPositions, static_cast<unsigned>(key)});
  launch.params.push_back(
      {GpuParam::Kind::KeyCount, static_cast<unsigned>(key)});
  return launch;
}
