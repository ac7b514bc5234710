//===- AttentionKernel.cpp - Decode and short-prefill attention -----------===//
//
// Three SIMT kernels around the wgmma prefill kernel
// (FlashAttentionKernel.cpp), all on the online softmax (running max and
// sum, the output rescaled when the max grows) so a key is read once:
//  - decode (up to kDecodeRows query rows): split-KV over the keys, the
//    whole GQA group of a KV head in one block, then a combine kernel;
//  - longer steps whose head_dim the wgmma kernel cannot tile: one warp
//    per (query row, query head), four consecutive (row, head) pairs of
//    one KV head per block sharing the staged key and value tiles; lanes
//    split the head dimension;
//  - the append kernel that writes a step's keys and values to the pools.
// Key tiles no query of a block can see (after every query, or before the
// chunk of the earliest query) are skipped: a slot's key positions ascend.
//
//===----------------------------------------------------------------------===//

#include "Generators.h"

#include "dialects/kiln/KilnOps.h"

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

namespace {
constexpr int64_t kWarps = 4;
constexpr int64_t kKeyTile = 16;
/// Decode (at most this many query rows) splits the keys over this many
/// blocks per (row, KV head), then combines the partial softmaxes.
constexpr int64_t kDecodeRows = 8;
constexpr int64_t kSplits = 32;
/// Keys per decode tile: one per lane.
constexpr int64_t kDecodeKeys = 32;
constexpr int64_t kStaticSharedBytes = 48 * 1024;

/// Warps of a decode block: one per query head of the group, at most 8
/// (larger groups take several blocks per row).
int64_t decodeWarps(int64_t group) { return std::min<int64_t>(group, 8); }

/// Ring stages of the decode kernel that fit in static shared memory.
int64_t decodeStages(int64_t d, int64_t warps) {
  int64_t stageBytes = kDecodeKeys * (2 * d + 8) * 2;
  int64_t fixed = warps * d * 4;
  return fixed + 2 * stageBytes <= kStaticSharedBytes ? 2 : 1;
}

/// Copies the 8 elements at column `col` of row `row` of KV pool operand
/// `m` to `dst` (an element "tile[...]" of the bf16 tile type `dstType`),
/// zeros when `inRange` is false: a cp.async for bf16 pools (the caller
/// commits and waits), through registers and narrowed for f32 pools
/// (unfused graphs).
void copyKvChunk(KernelText &k, const KernelContext &ctx, int m,
                 const std::string &row, const std::string &inRange,
                 const std::string &col, const std::string &dst,
                 const std::string &dstType) {
  std::string pool = "%o" + std::to_string(m);
  std::string safe = k.select(inRange, row, k.index(0), "index");
  if (ctx.elements[m] == "bf16") {
    std::string n = k.select(inRange, k.index(8), k.index(0), "index");
    k.op("nvgpu.device_async_copy " + pool + "[" + safe + ", " + col + "], " +
         dst + ", 8, " + n + " {bypassL1} : " + ctx.memrefType(m) + " to " +
         dstType);
    return;
  }
  std::string wide = k.op("vector.load " + pool + "[" + safe + ", " + col +
                          "] : " + ctx.memrefType(m) + ", vector<8xf32>");
  std::string v =
      k.op("arith.truncf " + wide + " : vector<8xf32> to vector<8xbf16>");
  std::string zero = k.op("arith.constant dense<0.0> : vector<8xbf16>");
  v = k.op("arith.select " + inRange + ", " + v + ", " + zero +
           " : vector<8xbf16>");
  k.line("vector.store " + v + ", " + dst + " : " + dstType +
         ", vector<8xbf16>");
}

/// Decode (split-KV): block (row, KV head, split z) holds every query head
/// of the KV head's GQA group, one warp each, so a key and value tile is
/// read from memory once for the whole group. Tiles of 32 keys stream
/// through a cp.async ring (zero-filled past the count) while the previous
/// tile is used. Lane j scores key j against the query (broadcast from
/// shared memory), so the softmax needs one max and one sum reduction per
/// tile rather than a reduction per key; P·V then runs with lanes along the
/// head dimension. Block z covers 1/kSplits of the key tiles and writes a
/// (max, sum, unnormalized output) partial that the combine kernel merges.
std::string writeDecode(const KernelContext &ctx, AttentionOp a,
                        StringRef name) {
  int q = ctx.operandOf(a.getQuery()), key = ctx.operandOf(a.getKey()),
      value = ctx.operandOf(a.getValue()),
      positions = ctx.operandOf(a.getPositions());
  int64_t heads = a.getNumHeads(), kvHeads = a.getNumKvHeads();
  int64_t d = ctx.width(q) / heads, group = heads / kvHeads;
  int64_t warps = decodeWarps(group),
          headBlocks = llvm::divideCeil(group, warps);
  int64_t perLane = std::max<int64_t>(1, d / 32);
  int64_t chunk =
      a.getMask() == MaskKind::Chunked ? a.getChunkSize().value_or(0) : 0;
  int64_t stages = decodeStages(d, warps);
  int64_t kStride = d + 8; // padded: lanes read different key rows

  std::string params = ctx.memrefParams();
  params += ", %kpos: memref<?xi64>, %kcount: memref<1xi64>, %partials: "
            "memref<?xf32>";
  KernelText k(name, params, 32 * warps);
  auto dims = [](std::initializer_list<int64_t> extents, StringRef element) {
    std::string t = "memref<";
    for (int64_t e : extents)
      t += std::to_string(e) + "x";
    return t + element.str() + ", 3>";
  };
  std::string kType = dims({stages, kDecodeKeys, kStride}, "bf16");
  std::string vType = dims({stages, kDecodeKeys, d}, "bf16");
  std::string qType = dims({warps, d}, "f32");
  std::string kTile = k.workgroup(kType), vTile = k.workgroup(vType),
              qTile = k.workgroup(qType);

  auto mem = [&](int i) { return "%o" + std::to_string(i); };
  std::string tid = k.threadId();
  std::string warp = k.div(tid, k.index(32));
  std::string lane = k.rem(tid, k.index(32));
  std::string keys =
      k.op("arith.index_cast " +
           k.op("memref.load %kcount[" + k.index(0) + "] : memref<1xi64>") +
           " : i64 to index");
  std::string row = k.div(k.blockId('x'), k.index(headBlocks));
  std::string inGroup = k.add(
      k.mul(k.rem(k.blockId('x'), k.index(headBlocks)), k.index(warps)), warp);
  std::string active = k.cmp("ult", inGroup, k.index(group));
  std::string kvHead = k.blockId('y');
  std::string head = k.add(k.mul(kvHead, k.index(group)),
                           k.select(active, inGroup, k.index(0), "index"));
  std::string qPos = k.op("memref.load " + mem(positions) + "[" + row +
                          "] : " + ctx.memrefType(positions));

  // The query, scaled (and tempered) once, into this warp's row of qTile.
  std::string scale = attentionScale(k, a, qPos);
  std::string c = k.beginFor(lane, k.index(d), k.index(32));
  std::string qv = k.toF32(k.op("memref.load " + mem(q) + "[" + row + ", " +
                                k.add(k.mul(head, k.index(d)), c) +
                                "] : " + ctx.memrefType(q)),
                           ctx.elements[q]);
  k.line("memref.store " + k.fmul(qv, scale) + ", " + qTile + "[" + warp +
         ", " + c + "] : " + qType);
  k.endFor();

  std::string laneActive =
      k.cmp("ult", k.mul(lane, k.index(perLane)), k.index(d));
  std::string laneCol =
      k.select(laneActive, k.mul(lane, k.index(perLane)), k.index(0), "index");

  // This split's key tiles.
  std::string tiles =
      k.div(k.add(keys, k.index(kDecodeKeys - 1)), k.index(kDecodeKeys));
  std::string perSplit =
      k.div(k.add(tiles, k.index(kSplits - 1)), k.index(kSplits));
  std::string firstTile = k.minIndex(tiles, k.mul(k.blockId('z'), perSplit));
  std::string endTile = k.minIndex(tiles, k.add(firstTile, perSplit));

  // Copies tile `t` (when it exists) into ring stage `stage`: key rows past
  // the count are zero-filled, so they add nothing to P·V.
  int64_t vectors = kDecodeKeys * d / 8;
  auto load = [&](const std::string &t, const std::string &stage) {
    k.beginIf(k.cmp("ult", t, endTile));
    std::string base = k.mul(t, k.index(kDecodeKeys));
    for (int64_t i0 = 0; i0 < vectors; i0 += 32 * warps) {
      std::string idx = k.add(k.index(i0), tid);
      if (i0 + 32 * warps > vectors)
        k.beginIf(k.cmp("ult", idx, k.index(vectors)));
      std::string r = k.div(idx, k.index(d / 8));
      std::string col = k.mul(k.rem(idx, k.index(d / 8)), k.index(8));
      std::string src = k.add(base, r);
      std::string inRange = k.cmp("ult", src, keys);
      std::string gcol = k.add(k.mul(kvHead, k.index(d)), col);
      for (auto [m, tile, type] :
           {std::tuple{key, kTile, kType}, std::tuple{value, vTile, vType}})
        copyKvChunk(k, ctx, m, src, inRange, gcol,
                    tile + "[" + stage + ", " + r + ", " + col + "]", type);
      if (i0 + 32 * warps > vectors)
        k.endIf();
    }
    k.endIf();
    k.line("nvvm.cp.async.commit.group");
  };
  for (int64_t s = 0; s + 1 < stages; ++s)
    load(k.add(firstTile, k.index(s)), k.index(s));
  k.line("gpu.barrier");

  std::string carriedTypes = "f32, f32";
  std::string mName = k.fresh(), lName = k.fresh();
  std::string carried =
      mName + " = " + k.f32(-1e30) + ", " + lName + " = " + k.f32(0.0);
  std::vector<std::string> oNames;
  for (int64_t e = 0; e < perLane; ++e) {
    oNames.push_back(k.fresh());
    carried += ", " + oNames.back() + " = " + k.f32(0.0);
    carriedTypes += ", f32";
  }
  std::string loop = k.fresh();
  std::string t = k.beginFor(firstTile, endTile, k.index(1),
                             loop + ":" + std::to_string(2 + perLane),
                             carried + " : " + carriedTypes);
  std::string i = k.sub(t, firstTile);
  load(k.add(t, k.index(stages - 1)),
       k.rem(k.add(i, k.index(stages - 1)), k.index(stages)));
  k.line("nvvm.cp.async.wait.group " + std::to_string(stages - 1));
  k.line("gpu.barrier");
  std::string st = k.rem(i, k.index(stages));

  // Lane j: the score of key j.
  std::string keyIndex = k.add(k.mul(t, k.index(kDecodeKeys)), lane);
  std::string inRange = k.cmp("ult", keyIndex, keys);
  std::string kp = k.op("memref.load %kpos[" +
                        k.select(inRange, keyIndex, k.index(0), "index") +
                        "] : memref<?xi64>");
  std::string visible = k.op("arith.andi " + inRange + ", " +
                             k.cmp("sle", kp, qPos, "i64") + " : i1");
  if (chunk)
    visible = k.op("arith.andi " + visible + ", " +
                   sameChunk(k, kp, qPos, chunk) + " : i1");
  std::string acc = k.op("arith.constant dense<0.0> : vector<8xf32>");
  for (int64_t c0 = 0; c0 < d; c0 += 8) {
    std::string kv = k.op("vector.load " + kTile + "[" + st + ", " + lane +
                          ", " + k.index(c0) + "] {alignment = 16} : " + kType +
                          ", vector<8xbf16>");
    kv = k.op("arith.extf " + kv + " : vector<8xbf16> to vector<8xf32>");
    std::string qs =
        k.op("vector.load " + qTile + "[" + warp + ", " + k.index(c0) +
             "] {alignment = 16} : " + qType + ", vector<8xf32>");
    acc =
        k.op("vector.fma " + kv + ", " + qs + ", " + acc + " : vector<8xf32>");
  }
  std::string score =
      k.op("vector.reduction <add>, " + acc + " : vector<8xf32> into f32");
  score = k.select(visible, score,
                   k.f32(-std::numeric_limits<double>::infinity()), "f32");

  // Online softmax: the running max starts finite, so masked keys give 0.
  std::string mNew = k.fmax(mName, k.warpMax(score));
  std::string correction = k.exp(k.fsub(mName, mNew));
  std::string p = k.exp(k.fsub(score, mNew));
  std::string l = k.fadd(k.fmul(lName, correction), k.warpSum(p));
  std::vector<std::string> o;
  for (int64_t e = 0; e < perLane; ++e)
    o.push_back(k.fmul(oNames[e], correction));
  std::string vecType = "vector<" + std::to_string(perLane) + "xbf16>";
  for (int64_t j = 0; j < kDecodeKeys; ++j) {
    std::string pj = k.fresh();
    k.line(pj + ", " + k.fresh() + " = gpu.shuffle idx " + p + ", " + k.i32(j) +
           ", " + k.i32(32) + " : f32");
    std::string vv =
        k.op("vector.load " + vTile + "[" + st + ", " + k.index(j) + ", " +
             laneCol + "] {alignment = " + std::to_string(2 * perLane) +
             "} : " + vType + ", " + vecType);
    for (int64_t e = 0; e < perLane; ++e) {
      std::string x = k.op("vector.extract " + vv + "[" + std::to_string(e) +
                           "] : bf16 from " + vecType);
      o[e] = k.fma(pj, k.toF32(x, "bf16"), o[e]);
    }
  }
  // The stage is refilled next round.
  k.line("gpu.barrier");
  std::string yielded = mNew + ", " + l;
  for (const std::string &oe : o)
    yielded += ", " + oe;
  k.endFor(yielded + " : " + carriedTypes);
  k.line("nvvm.cp.async.wait.group 0");

  // Partial of pair (row, head) from split z: [max, sum, o_0 .. o_{d-1}].
  std::string slotIndex =
      k.add(k.mul(k.add(k.mul(row, k.index(heads)), head), k.index(kSplits)),
            k.blockId('z'));
  std::string base = k.mul(slotIndex, k.index(d + 2));
  k.beginIf(k.op("arith.andi " + active + ", " + k.cmp("eq", lane, k.index(0)) +
                 " : i1"));
  k.line("memref.store " + loop + "#0, %partials[" + base +
         "] : memref<?xf32>");
  k.line("memref.store " + loop + "#1, %partials[" + k.add(base, k.index(1)) +
         "] : memref<?xf32>");
  k.endIf();
  k.beginIf(k.op("arith.andi " + active + ", " + laneActive + " : i1"));
  for (int64_t e = 0; e < perLane; ++e)
    k.line("memref.store " + loop + "#" + std::to_string(2 + e) +
           ", %partials[" + k.add(base, k.add(k.index(2 + e), laneCol)) +
           "] : memref<?xf32>");
  k.endIf();
  return k.finish();
}

/// Writes the attention function for steps of up to 64 rows.
std::string writeAttention(const KernelContext &ctx, AttentionOp a,
                           StringRef name) {
  int q = ctx.operandOf(a.getQuery()), key = ctx.operandOf(a.getKey()),
      value = ctx.operandOf(a.getValue()),
      positions = ctx.operandOf(a.getPositions()),
      result = ctx.operandOf(a.getResult());
  int64_t heads = a.getNumHeads(), kvHeads = a.getNumKvHeads();
  int64_t d = ctx.width(q) / heads, group = heads / kvHeads;
  int64_t perLane = std::max<int64_t>(1, d / 32);
  int64_t chunk =
      a.getMask() == MaskKind::Chunked ? a.getChunkSize().value_or(0) : 0;

  std::string params;
  params += ctx.memrefParams();
  params += ", %kpos: memref<?xi64>, %kcount: memref<1xi64>";
  KernelText k(name, params, 32 * kWarps);
  std::string smemType = "memref<" + std::to_string(kKeyTile) + "x" +
                         std::to_string(d) + "xbf16, 3>";
  std::string kTile = k.workgroup(smemType), vTile = k.workgroup(smemType);
  std::string kposTile =
      k.workgroup("memref<" + std::to_string(kKeyTile) + "xi64, 3>");

  auto mem = [&](int i) { return "%o" + std::to_string(i); };
  std::string tid = k.threadId();
  std::string warp = k.div(tid, k.index(32));
  std::string lane = k.rem(tid, k.index(32));
  std::string rows = k.op("memref.dim " + mem(q) + ", " + k.index(0) + " : " +
                          ctx.memrefType(q));
  // The pool's rows past the count are stale: the count comes from device
  // memory (see GpuParam::Kind::KeyCount).
  std::string keys =
      k.op("arith.index_cast " +
           k.op("memref.load %kcount[" + k.index(0) + "] : memref<1xi64>") +
           " : i64 to index");
  std::string kvHead = k.blockId('y');
  // Pair p = row * group + head-in-group.
  std::string firstPair = k.mul(k.blockId('x'), k.index(kWarps));
  std::string pair = k.add(firstPair, warp);
  std::string pairs = k.mul(rows, k.index(group));
  std::string active = k.cmp("ult", pair, pairs);
  std::string safePair =
      k.select(active, pair, k.sub(pairs, k.index(1)), "index");
  std::string row = k.div(safePair, k.index(group));
  std::string head =
      k.add(k.mul(kvHead, k.index(group)), k.rem(safePair, k.index(group)));
  std::string lastPair = k.minIndex(k.add(firstPair, k.index(kWarps - 1)),
                                    k.sub(pairs, k.index(1)));
  std::string firstRow = k.div(firstPair, k.index(group));
  std::string lastRow = k.div(lastPair, k.index(group));
  auto loadPos = [&](const std::string &m, const std::string &type,
                     const std::string &at) {
    return k.op("memref.load " + m + "[" + at + "] : " + type);
  };
  std::string qPos = loadPos(mem(positions), ctx.memrefType(positions), row);
  std::string minPos =
      loadPos(mem(positions), ctx.memrefType(positions), firstRow);
  std::string maxPos =
      loadPos(mem(positions), ctx.memrefType(positions), lastRow);
  std::string chunkStart = k.i64(0);
  if (chunk)
    chunkStart =
        k.op("arith.muli " +
             k.op("arith.divsi " + minPos + ", " + k.i64(chunk) + " : i64") +
             ", " + k.i64(chunk) + " : i64");

  // This lane's slice of the query, scaled (and tempered) once.
  std::string scale = attentionScale(k, a, qPos);
  std::string laneActive =
      k.cmp("ult", k.mul(lane, k.index(perLane)), k.index(d));
  std::string laneCol =
      k.select(laneActive, k.mul(lane, k.index(perLane)), k.index(0), "index");
  std::vector<std::string> qv;
  std::string qCol = k.add(k.mul(head, k.index(d)), laneCol);
  for (int64_t e = 0; e < perLane; ++e) {
    std::string v =
        k.toF32(k.op("memref.load " + mem(q) + "[" + row + ", " +
                     k.add(qCol, k.index(e)) + "] : " + ctx.memrefType(q)),
                ctx.elements[q]);
    v = k.fmul(v, scale);
    qv.push_back(k.select(laneActive, v, k.f32(0.0), "f32"));
  }

  // Online softmax state: max, sum, output slice.
  std::string carriedTypes = "f32, f32";
  for (int64_t e = 0; e < perLane; ++e)
    carriedTypes += ", f32";
  std::string mName = k.fresh(), lName = k.fresh();
  std::vector<std::string> oNames;
  std::string carried =
      mName + " = " + k.f32(-1e30) + ", " + lName + " = " + k.f32(0.0);
  for (int64_t e = 0; e < perLane; ++e) {
    oNames.push_back(k.fresh());
    carried += ", " + oNames.back() + " = " + k.f32(0.0);
  }
  std::string loopResult = k.fresh();
  std::string tiles =
      k.div(k.add(keys, k.index(kKeyTile - 1)), k.index(kKeyTile));
  std::string t = k.beginFor(k.index(0), tiles, k.index(1),
                             loopResult + ":" + std::to_string(2 + perLane),
                             carried + " : " + carriedTypes);
  std::string kBase = k.mul(t, k.index(kKeyTile));
  std::string kLast =
      k.minIndex(k.add(kBase, k.index(kKeyTile - 1)), k.sub(keys, k.index(1)));
  // Ascending positions: the tile is visible to someone iff its first key
  // is not after the latest query and its last key is not before the
  // earliest query's chunk.
  std::string firstKeyPos = loadPos("%kpos", "memref<?xi64>", kBase);
  std::string lastKeyPos = loadPos("%kpos", "memref<?xi64>", kLast);
  std::string useful = k.cmp("sle", firstKeyPos, maxPos, "i64");
  if (chunk)
    useful = k.op("arith.andi " + useful + ", " +
                  k.cmp("sge", lastKeyPos, chunkStart, "i64") + " : i1");
  std::string stepResult = k.fresh();
  std::string stateNames = mName + ", " + lName;
  for (const std::string &o : oNames)
    stateNames += ", " + o;
  k.line(stepResult + ":" + std::to_string(2 + perLane) + " = scf.if " +
         useful + " -> (" + carriedTypes + ") {");
  {
    // Stage K, V (bf16) and the key positions.
    int64_t vectors = kKeyTile * d / 8;
    for (int64_t i0 = 0; i0 < vectors; i0 += 32 * kWarps) {
      std::string idx = k.add(k.index(i0), tid);
      k.beginIf(k.cmp("ult", idx, k.index(vectors)));
      std::string kr = k.div(idx, k.index(d / 8));
      std::string kc = k.mul(k.rem(idx, k.index(d / 8)), k.index(8));
      std::string src = k.add(kBase, kr);
      std::string inRange = k.cmp("ult", src, keys);
      std::string gcol = k.add(k.mul(kvHead, k.index(d)), kc);
      for (auto [m, tile] : {std::pair{key, kTile}, std::pair{value, vTile}})
        copyKvChunk(k, ctx, m, src, inRange, gcol,
                    tile + "[" + kr + ", " + kc + "]", smemType);
      k.endIf();
    }
    k.line("nvvm.cp.async.commit.group");
    k.line("nvvm.cp.async.wait.group 0");
    k.beginIf(k.cmp("ult", tid, k.index(kKeyTile)));
    std::string src = k.add(kBase, tid);
    std::string inRange = k.cmp("ult", src, keys);
    std::string safe = k.select(inRange, src, k.index(0), "index");
    std::string p = loadPos("%kpos", "memref<?xi64>", safe);
    // Keys past the end get a position no query sees.
    p = k.select(inRange, p, k.i64(std::numeric_limits<int64_t>::max()), "i64");
    k.line("memref.store " + p + ", " + kposTile + "[" + tid + "] : memref<" +
           std::to_string(kKeyTile) + "xi64, 3>");
    k.endIf();
    k.line("gpu.barrier");

    std::vector<std::string> scores;
    std::string tileMax = k.f32(-1e30);
    std::vector<std::string> visible;
    for (int64_t j = 0; j < kKeyTile; ++j) {
      std::string dot = k.f32(0.0);
      for (int64_t e = 0; e < perLane; ++e) {
        std::string kv = k.op("memref.load " + kTile + "[" + k.index(j) + ", " +
                              k.add(laneCol, k.index(e)) + "] : " + smemType);
        dot = k.fadd(dot, k.fmul(qv[e], k.toF32(kv, "bf16")));
      }
      std::string score = k.warpSum(dot);
      std::string kp =
          k.op("memref.load " + kposTile + "[" + k.index(j) + "] : memref<" +
               std::to_string(kKeyTile) + "xi64, 3>");
      std::string vis = k.cmp("sle", kp, qPos, "i64");
      if (chunk)
        vis = k.op("arith.andi " + vis + ", " + sameChunk(k, kp, qPos, chunk) +
                   " : i1");
      visible.push_back(vis);
      scores.push_back(score);
      tileMax = k.select(vis, k.fmax(tileMax, score), tileMax, "f32");
    }
    std::string mNew = k.fmax(mName, tileMax);
    std::string correction = k.exp(k.fsub(mName, mNew));
    std::string l = k.fmul(lName, correction);
    std::vector<std::string> o;
    for (int64_t e = 0; e < perLane; ++e)
      o.push_back(k.fmul(oNames[e], correction));
    for (int64_t j = 0; j < kKeyTile; ++j) {
      std::string p = k.select(visible[j], k.exp(k.fsub(scores[j], mNew)),
                               k.f32(0.0), "f32");
      l = k.fadd(l, p);
      for (int64_t e = 0; e < perLane; ++e) {
        std::string vv = k.op("memref.load " + vTile + "[" + k.index(j) + ", " +
                              k.add(laneCol, k.index(e)) + "] : " + smemType);
        o[e] = k.fadd(o[e], k.fmul(p, k.toF32(vv, "bf16")));
      }
    }
    // The tiles are reloaded next round.
    k.line("gpu.barrier");
    std::string yielded = mNew + ", " + l;
    for (const std::string &oe : o)
      yielded += ", " + oe;
    k.line("  scf.yield " + yielded + " : " + carriedTypes);
  }
  k.line("} else {");
  k.line("  scf.yield " + stateNames + " : " + carriedTypes);
  k.line("}");
  std::string yielded;
  for (int64_t i = 0; i < 2 + perLane; ++i)
    yielded += (i ? ", " : "") + stepResult + "#" + std::to_string(i);
  k.endFor(yielded + " : " + carriedTypes);

  std::string total = loopResult + "#1";
  std::string inv = k.fdiv(k.f32(1.0), total);
  k.beginIf(k.op("arith.andi " + active + ", " + laneActive + " : i1"));
  for (int64_t e = 0; e < perLane; ++e) {
    std::string v = k.fmul(loopResult + "#" + std::to_string(2 + e), inv);
    k.line("memref.store " + k.fromF32(v, ctx.elements[result]) + ", " +
           mem(result) + "[" + row + ", " + k.add(qCol, k.index(e)) +
           "] : " + ctx.memrefType(result));
  }
  k.endIf();
  return k.finish();
}

/// Combines the kSplits partials of each (row, head): one warp per pair,
/// lanes along the head dimension.
std::string writeCombine(const KernelContext &ctx, AttentionOp a,
                         StringRef name) {
  int q = ctx.operandOf(a.getQuery()), result = ctx.operandOf(a.getResult());
  int64_t heads = a.getNumHeads();
  int64_t d = ctx.width(q) / heads;
  int64_t perLane = std::max<int64_t>(1, d / 32);
  std::string params;
  params += ctx.memrefParams();
  params += ", %partials: memref<?xf32>";
  KernelText k(name, params, 32 * kWarps);
  std::string tid = k.threadId();
  std::string lane = k.rem(tid, k.index(32));
  std::string rows = k.op("memref.dim %o" + std::to_string(q) + ", " +
                          k.index(0) + " : " + ctx.memrefType(q));
  std::string pair =
      k.add(k.mul(k.blockId('x'), k.index(kWarps)), k.div(tid, k.index(32)));
  std::string active = k.cmp("ult", pair, k.mul(rows, k.index(heads)));
  std::string laneActive =
      k.cmp("ult", k.mul(lane, k.index(perLane)), k.index(d));
  k.beginIf(k.op("arith.andi " + active + ", " + laneActive + " : i1"));
  std::string row = k.div(pair, k.index(heads));
  std::string head = k.rem(pair, k.index(heads));
  std::string first = k.mul(pair, k.index(kSplits * (d + 2)));
  auto at = [&](int64_t split, const std::string &offset) {
    std::string i = k.add(first, k.add(k.index(split * (d + 2)), offset));
    return k.op("memref.load %partials[" + i + "] : memref<?xf32>");
  };
  std::string m = k.f32(-1e30);
  std::vector<std::string> maxes;
  for (int64_t sp = 0; sp < kSplits; ++sp) {
    maxes.push_back(at(sp, k.index(0)));
    m = k.fmax(m, maxes.back());
  }
  std::string l = k.f32(0.0);
  std::vector<std::string> o(perLane, k.f32(0.0));
  std::string laneCol = k.mul(lane, k.index(perLane));
  for (int64_t sp = 0; sp < kSplits; ++sp) {
    std::string w = k.exp(k.fsub(maxes[sp], m));
    l = k.fadd(l, k.fmul(w, at(sp, k.index(1))));
    for (int64_t e = 0; e < perLane; ++e)
      o[e] = k.fadd(o[e], k.fmul(w, at(sp, k.add(k.index(2 + e), laneCol))));
  }
  std::string inv = k.fdiv(k.f32(1.0), l);
  for (int64_t e = 0; e < perLane; ++e) {
    std::string col =
        k.add(k.mul(head, k.index(d)), k.add(laneCol, k.index(e)));
    k.line("memref.store " +
           k.fromF32(k.fmul(o[e], inv), ctx.elements[result]) + ", %o" +
           std::to_string(result) + "[" + row + ", " + col +
           "] : " + ctx.memrefType(result));
  }
  k.endIf();
  return k.finish();
}

/// Appends the step's new key and value rows (and their positions) to the
/// call site's pools, after the `count - rows` cached ones: one block per
/// new row, 16-byte copies.
std::string writeAppend(const KernelContext &ctx, AttentionOp a,
                        StringRef name) {
  int key = ctx.operandOf(a.getKey()), value = ctx.operandOf(a.getValue()),
      positions = ctx.operandOf(a.getPositions());
  int64_t width = ctx.width(key);
  std::string params;
  params += ctx.memrefParams();
  std::string pool = ctx.memrefType(key);
  params += ", %poolK: " + pool + ", %poolV: " + pool +
            ", %kpos: memref<?xi64>, %kcount: memref<1xi64>";
  KernelText k(name, params, 128);
  std::string row = k.blockId('x');
  std::string rows = k.op("memref.dim %o" + std::to_string(key) + ", " +
                          k.index(0) + " : " + ctx.memrefType(key));
  std::string count =
      k.op("arith.index_cast " +
           k.op("memref.load %kcount[" + k.index(0) + "] : memref<1xi64>") +
           " : i64 to index");
  std::string dst = k.add(k.sub(count, rows), row);
  std::string element = ctx.elements[key];
  std::string vec = "vector<8x" + element + ">";
  std::string c = k.beginFor(k.mul(k.threadId(), k.index(8)), k.index(width),
                             k.index(8 * 128));
  for (auto [from, to] : {std::pair{key, std::string("%poolK")},
                          std::pair{value, std::string("%poolV")}}) {
    std::string v = k.op("vector.load %o" + std::to_string(from) + "[" + row +
                         ", " + c + "] : " + ctx.memrefType(from) + ", " + vec);
    k.line("vector.store " + v + ", " + to + "[" + dst + ", " + c +
           "] : " + pool + ", " + vec);
  }
  k.endFor();
  k.beginIf(k.cmp("eq", k.threadId(), k.index(0)));
  std::string p = k.op("memref.load %o" + std::to_string(positions) + "[" +
                       row + "] : " + ctx.memrefType(positions));
  k.line("memref.store " + p + ", %kpos[" + dst + "] : memref<?xi64>");
  k.endIf();
  return k.finish();
}

} // namespace

LogicalResult
mlir::kiln::cuda::generateAttentionKernel(const KernelContext &ctx,
                                          GpuKernel &out, std::string &text) {
  AttentionOp a;
  for (Operation &op : ctx.kernel.getBody().front().without_terminator()) {
    a = dyn_cast<AttentionOp>(op);
    if (!a)
      return op.emitOpError("cannot be part of an sm_90a attention kernel");
  }
  int q = ctx.operandOf(a.getQuery()), key = ctx.operandOf(a.getKey());
  int64_t heads = a.getNumHeads(), kvHeads = a.getNumKvHeads();
  int64_t d = ctx.width(q) / heads, group = heads / kvHeads;
  if (d % 8 != 0 || (d > 32 && d % 32 != 0))
    return a.emitOpError() << "the sm_90a attention kernel needs a head "
                              "dimension that is a multiple of 8 (up to 32) "
                              "or of 32 (got "
                           << d << ")";
  int value = ctx.operandOf(a.getValue());
  if (ctx.width(key) % 8 != 0 || ctx.elements[key] != ctx.elements[value])
    return a.emitOpError("the sm_90a KV pools need rows of a multiple of 8 "
                         "elements of one type");
  std::string name = ctx.name();
  text += writeAppend(ctx, a, name + "_append");
  text += writeDecode(ctx, a, name + "_split");
  // Steps past the decode rows take the wgmma kernel where it fits (even a
  // half-empty 128-row tile beats a warp per (row, head) well before 64
  // rows), else the SIMT one.
  bool flashFits = flashAttentionFits(ctx, a);
  if (!flashFits)
    text += writeAttention(ctx, a, name);
  text += writeCombine(ctx, a, name + "_combine");

  // Attention reads the pools where the launch's key and value operands are.
  auto memrefs = [&](GpuLaunch &launch) {
    addOperandParams(ctx, launch, key, value);
  };
  GpuParam keyCount{GpuParam::Kind::KeyCount, static_cast<unsigned>(key)};
  GpuParam partials{GpuParam::Kind::Scratch, static_cast<unsigned>(q)};
  partials.perRow = heads * kSplits * (d + 2);
  partials.floatScratch = true;
  GpuParam keyPositions{GpuParam::Kind::KeyPositions,
                        static_cast<unsigned>(key)};

  GpuLaunch split;
  split.function = name + "_split";
  int64_t warps = decodeWarps(group);
  split.blockThreads = 32 * warps;
  split.grid[0] = rowsGrid(q, 1, llvm::divideCeil(group, warps));
  split.grid[1] = fixedGrid(kvHeads);
  split.grid[2] = fixedGrid(kSplits);
  memrefs(split);
  split.params.push_back(keyPositions);
  split.params.push_back(keyCount);
  split.params.push_back(partials);
  split.selectOperand = q;
  split.maxRows = kDecodeRows;

  GpuLaunch combine;
  combine.function = name + "_combine";
  combine.blockThreads = 32 * kWarps;
  combine.grid[0] = rowsGrid(q, kWarps, heads);
  memrefs(combine);
  combine.params.push_back(partials);
  combine.selectOperand = q;
  combine.maxRows = kDecodeRows;
  GpuLaunch nothing; // prefill: no combine step

  GpuLaunch append;
  append.function = name + "_append";
  append.blockThreads = 128;
  append.grid[0] = rowsGrid(key);
  addOperandParams(ctx, append);
  append.params.push_back({GpuParam::Kind::KvPool, static_cast<unsigned>(key)});
  append.params.push_back(
      {GpuParam::Kind::KvPool, static_cast<unsigned>(value)});
  append.params.push_back(keyPositions);
  append.params.push_back(keyCount);

  out.steps.push_back({{append}});
  if (flashFits) {
    out.steps.push_back(
        {{split, writeFlashAttention(ctx, a, name + "_flash", text)}});
  } else {
    GpuLaunch whole;
    whole.function = name;
    whole.blockThreads = 32 * kWarps;
    whole.grid[0] = rowsGrid(q, kWarps, group);
    whole.grid[1] = fixedGrid(kvHeads);
    memrefs(whole);
    whole.params.push_back(keyPositions);
    whole.params.push_back(keyCount);
    out.steps.push_back({{split, whole}});
  }
  out.steps.push_back({{combine, nothing}});
  return success();
}
