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
#include "GpuEmitter.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"

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

using arith::CmpIPredicate;

/// A static shared-memory buffer type.
MemRefType sharedOf(ArrayRef<int64_t> shape, Type element) {
  return MemRefType::get(shape, element, MemRefLayoutAttrInterface(),
                         Builder(element.getContext()).getI64IntegerAttr(3));
}

/// Parameters: every operand's memref, then `extra`.
SmallVector<Type> paramsWith(const KernelContext &ctx, ArrayRef<Type> extra) {
  SmallVector<Type> params = ctx.memrefTypes();
  llvm::append_range(params, extra);
  return params;
}

/// Copies the 8 elements at column `col` of row `row` of KV pool operand
/// `m` (the kernel argument `pool`) to `dst[at]` (a bf16 tile), zeros when
/// `inRange` is false: a cp.async for bf16 pools (the caller commits and
/// waits), through registers and narrowed for f32 pools (unfused graphs).
void copyKvChunk(GpuEmitter &e, const KernelContext &ctx, int m, Value pool,
                 Value row, Value inRange, Value col, Value dst,
                 ValueRange at) {
  Value safe = e.select(inRange, row, e.index(0));
  MLIRContext *context = pool.getContext();
  if (ctx.elementTypes[m].isBF16()) {
    Value n = e.select(inRange, e.index(8), e.index(0));
    nvgpu::DeviceAsyncCopyOp::create(
        *e.b, e.loc, nvgpu::DeviceAsyncTokenType::get(context), dst, at, pool,
        ValueRange{safe, col}, e.b->getIndexAttr(8), n, e.b->getUnitAttr());
    return;
  }
  auto narrow = VectorType::get({8}, BFloat16Type::get(context));
  Value wide = e.vectorLoad(VectorType::get({8}, Float32Type::get(context)),
                            pool, {safe, col}, /*alignment=*/0);
  Value v = e.select(inRange, e.truncF(wide, narrow), e.splat(narrow, 0.0));
  e.vectorStore(v, dst, at, /*alignment=*/0);
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
void buildDecode(const KernelContext &ctx, AttentionOp a, StringRef name,
                 gpu::GPUModuleOp module) {
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

  MLIRContext *context = module.getContext();
  OpBuilder builder(context);
  Type i64 = builder.getI64Type(), f32 = builder.getF32Type(),
       bf16 = builder.getBF16Type();
  gpu::GPUFuncOp fn = GpuEmitter::createKernel(
      module, ctx.kernel.getLoc(), name,
      paramsWith(ctx, {MemRefType::get({ShapedType::kDynamic}, i64),
                       MemRefType::get({1}, i64),
                       MemRefType::get({ShapedType::kDynamic}, f32)}),
      {sharedOf({stages, kDecodeKeys, kStride}, bf16),
       sharedOf({stages, kDecodeKeys, d}, bf16), sharedOf({warps, d}, f32)},
      32 * warps);
  unsigned n = fn.getNumArguments();
  Value keyPositions = fn.getArgument(n - 3), keyCount = fn.getArgument(n - 2),
        partials = fn.getArgument(n - 1);
  Value kTile = fn.getWorkgroupAttributions()[0],
        vTile = fn.getWorkgroupAttributions()[1],
        qTile = fn.getWorkgroupAttributions()[2];
  GpuEmitter e(builder, fn);
  auto mem = [&](int i) { return fn.getArgument(i); };

  Value tid = e.threadId();
  Value warp = e.divIndex(tid, e.index(32));
  Value lane = e.remIndex(tid, e.index(32));
  Value keys = e.loadIndex(keyCount, {e.index(0)});
  Value blockX = e.blockId(gpu::Dimension::x);
  Value row = e.divIndex(blockX, e.index(headBlocks));
  Value inGroup = e.addIndex(
      e.mulI(e.remIndex(blockX, e.index(headBlocks)), e.index(warps)), warp);
  Value active = e.cmpIndex(CmpIPredicate::ult, inGroup, e.index(group));
  Value kvHead = e.blockId(gpu::Dimension::y);
  Value head = e.addIndex(e.mulI(kvHead, e.index(group)),
                          e.select(active, inGroup, e.index(0)));
  Value qPos = e.loadRaw(mem(positions), {row});

  // The query, scaled (and tempered) once, into this warp's row of qTile.
  Value scale = attentionScale(e, a, qPos);
  e.loopStep(lane, e.index(d), e.index(32), [&](Value c) {
    Value qv = e.load(mem(q), {row, e.addIndex(e.mulI(head, e.index(d)), c)});
    e.store(e.mul(qv, scale), qTile, {warp, c});
  });

  Value laneActive = e.cmpIndex(CmpIPredicate::ult,
                                e.mulI(lane, e.index(perLane)), e.index(d));
  Value laneCol =
      e.select(laneActive, e.mulI(lane, e.index(perLane)), e.index(0));

  // This split's key tiles.
  Value tiles = e.divIndex(e.addIndex(keys, e.index(kDecodeKeys - 1)),
                           e.index(kDecodeKeys));
  Value perSplit =
      e.divIndex(e.addIndex(tiles, e.index(kSplits - 1)), e.index(kSplits));
  Value split = e.blockId(gpu::Dimension::z);
  Value firstTile = e.minUI(tiles, e.mulI(split, perSplit));
  Value endTile = e.minUI(tiles, e.addIndex(firstTile, perSplit));

  // Copies tile `t` (when it exists) into ring stage `stage`: key rows past
  // the count are zero-filled, so they add nothing to P·V.
  int64_t vectors = kDecodeKeys * d / 8;
  auto load = [&](Value t, Value stage) {
    e.when(e.cmpIndex(CmpIPredicate::ult, t, endTile), [&] {
      Value base = e.mulI(t, e.index(kDecodeKeys));
      for (int64_t i0 = 0; i0 < vectors; i0 += 32 * warps) {
        Value idx = e.addIndex(e.index(i0), tid);
        auto copy = [&] {
          Value r = e.divIndex(idx, e.index(d / 8));
          Value col = e.mulI(e.remIndex(idx, e.index(d / 8)), e.index(8));
          Value src = e.addIndex(base, r);
          Value inRange = e.cmpIndex(CmpIPredicate::ult, src, keys);
          Value gcol = e.addIndex(e.mulI(kvHead, e.index(d)), col);
          copyKvChunk(e, ctx, key, mem(key), src, inRange, gcol, kTile,
                      {stage, r, col});
          copyKvChunk(e, ctx, value, mem(value), src, inRange, gcol, vTile,
                      {stage, r, col});
        };
        if (i0 + 32 * warps > vectors)
          e.when(e.cmpIndex(CmpIPredicate::ult, idx, e.index(vectors)), copy);
        else
          copy();
      }
    });
    NVVM::CpAsyncCommitGroupOp::create(*e.b, e.loc);
  };
  for (int64_t s = 0; s + 1 < stages; ++s)
    load(e.addIndex(firstTile, e.index(s)), e.index(s));
  e.barrier();

  // Online softmax state: max, sum, this lane's output slice.
  SmallVector<Value> init = {e.f32(-1e30), e.f32(0.0)};
  init.append(perLane, e.f32(0.0));
  ValueRange state = e.loopWith(
      firstTile, endTile, init,
      [&](Value t, ValueRange carried) -> SmallVector<Value> {
        Value mPrev = carried[0], lPrev = carried[1];
        Value i = e.subIndex(t, firstTile);
        load(e.addIndex(t, e.index(stages - 1)),
             e.remIndex(e.addIndex(i, e.index(stages - 1)), e.index(stages)));
        NVVM::CpAsyncWaitGroupOp::create(*e.b, e.loc, stages - 1);
        e.barrier();
        Value st = e.remIndex(i, e.index(stages));

        // Lane j: the score of key j.
        Value keyIndex = e.addIndex(e.mulI(t, e.index(kDecodeKeys)), lane);
        Value inRange = e.cmpIndex(CmpIPredicate::ult, keyIndex, keys);
        Value kp =
            e.loadRaw(keyPositions, {e.select(inRange, keyIndex, e.index(0))});
        Value visible =
            e.andI(inRange, e.cmpIndex(CmpIPredicate::sle, kp, qPos));
        if (chunk)
          visible = e.andI(visible, sameChunk(e, kp, qPos, chunk));
        auto f32x8 = VectorType::get({8}, f32);
        Value acc = e.splat(f32x8, 0.0);
        for (int64_t c0 = 0; c0 < d; c0 += 8) {
          Value kv = e.vectorLoad(VectorType::get({8}, bf16), kTile,
                                  {st, lane, e.index(c0)}, 16);
          Value qs = e.vectorLoad(f32x8, qTile, {warp, e.index(c0)}, 16);
          acc = vector::FMAOp::create(*e.b, e.loc, e.extF(kv, f32x8), qs, acc);
        }
        Value score = e.select(visible, e.reduceAdd(acc),
                               e.f32(-std::numeric_limits<double>::infinity()));

        // Online softmax: the running max starts finite, so masked keys
        // give 0.
        Value mNew = e.maxF(mPrev, e.warpMax(score));
        Value correction = e.exp(e.sub(mPrev, mNew));
        Value p = e.exp(e.sub(score, mNew));
        Value l = e.add(e.mul(lPrev, correction), e.warpSum(p));
        SmallVector<Value> o;
        for (int64_t el = 0; el < perLane; ++el)
          o.push_back(e.mul(carried[2 + el], correction));
        auto vecType = VectorType::get({perLane}, bf16);
        for (int64_t j = 0; j < kDecodeKeys; ++j) {
          Value pj = e.shuffle(p, gpu::ShuffleMode::IDX, j);
          Value vv = e.vectorLoad(vecType, vTile, {st, e.index(j), laneCol},
                                  2 * perLane);
          for (int64_t el = 0; el < perLane; ++el) {
            Value x = vector::ExtractOp::create(*e.b, e.loc, vv,
                                                ArrayRef<int64_t>{el});
            o[el] = e.fma(pj, e.extF(x, f32), o[el]);
          }
        }
        // The stage is refilled next round.
        e.barrier();
        SmallVector<Value> yielded = {mNew, l};
        llvm::append_range(yielded, o);
        return yielded;
      });
  NVVM::CpAsyncWaitGroupOp::create(*e.b, e.loc, 0);

  // Partial of pair (row, head) from split z: [max, sum, o_0 .. o_{d-1}].
  Value slotIndex = e.addIndex(
      e.mulI(e.addIndex(e.mulI(row, e.index(heads)), head), e.index(kSplits)),
      split);
  Value base = e.mulI(slotIndex, e.index(d + 2));
  e.when(e.andI(active, e.cmpIndex(CmpIPredicate::eq, lane, e.index(0))), [&] {
    e.store(state[0], partials, {base});
    e.store(state[1], partials, {e.addIndex(base, e.index(1))});
  });
  e.when(e.andI(active, laneActive), [&] {
    for (int64_t el = 0; el < perLane; ++el)
      e.store(state[2 + el], partials,
              {e.addIndex(base, e.addIndex(e.index(2 + el), laneCol))});
  });
}

/// The attention function for steps of up to 64 rows whose head_dim the
/// wgmma kernel cannot tile.
void buildAttention(const KernelContext &ctx, AttentionOp a, StringRef name,
                    gpu::GPUModuleOp module) {
  int q = ctx.operandOf(a.getQuery()), key = ctx.operandOf(a.getKey()),
      value = ctx.operandOf(a.getValue()),
      positions = ctx.operandOf(a.getPositions()),
      result = ctx.operandOf(a.getResult());
  int64_t heads = a.getNumHeads(), kvHeads = a.getNumKvHeads();
  int64_t d = ctx.width(q) / heads, group = heads / kvHeads;
  int64_t perLane = std::max<int64_t>(1, d / 32);
  int64_t chunk =
      a.getMask() == MaskKind::Chunked ? a.getChunkSize().value_or(0) : 0;

  MLIRContext *context = module.getContext();
  OpBuilder builder(context);
  Type i64 = builder.getI64Type(), f32 = builder.getF32Type(),
       bf16 = builder.getBF16Type();
  gpu::GPUFuncOp fn = GpuEmitter::createKernel(
      module, ctx.kernel.getLoc(), name,
      paramsWith(ctx, {MemRefType::get({ShapedType::kDynamic}, i64),
                       MemRefType::get({1}, i64)}),
      {sharedOf({kKeyTile, d}, bf16), sharedOf({kKeyTile, d}, bf16),
       sharedOf({kKeyTile}, i64)},
      32 * kWarps);
  unsigned n = fn.getNumArguments();
  Value keyPositions = fn.getArgument(n - 2), keyCount = fn.getArgument(n - 1);
  Value kTile = fn.getWorkgroupAttributions()[0],
        vTile = fn.getWorkgroupAttributions()[1],
        kposTile = fn.getWorkgroupAttributions()[2];
  GpuEmitter e(builder, fn);
  auto mem = [&](int i) { return fn.getArgument(i); };

  Value tid = e.threadId();
  Value warp = e.divIndex(tid, e.index(32));
  Value lane = e.remIndex(tid, e.index(32));
  Value rows = e.dim(mem(q), 0);
  // The pool's rows past the count are stale: the count comes from device
  // memory (see GpuParam::Kind::KeyCount).
  Value keys = e.loadIndex(keyCount, {e.index(0)});
  Value kvHead = e.blockId(gpu::Dimension::y);
  // Pair p = row * group + head-in-group.
  Value firstPair = e.mulI(e.blockId(gpu::Dimension::x), e.index(kWarps));
  Value pair = e.addIndex(firstPair, warp);
  Value pairs = e.mulI(rows, e.index(group));
  Value active = e.cmpIndex(CmpIPredicate::ult, pair, pairs);
  Value safePair = e.select(active, pair, e.subIndex(pairs, e.index(1)));
  Value row = e.divIndex(safePair, e.index(group));
  Value head = e.addIndex(e.mulI(kvHead, e.index(group)),
                          e.remIndex(safePair, e.index(group)));
  Value lastPair = e.minUI(e.addIndex(firstPair, e.index(kWarps - 1)),
                           e.subIndex(pairs, e.index(1)));
  Value firstRow = e.divIndex(firstPair, e.index(group));
  Value lastRow = e.divIndex(lastPair, e.index(group));
  Value qPos = e.loadRaw(mem(positions), {row});
  Value minPos = e.loadRaw(mem(positions), {firstRow});
  Value maxPos = e.loadRaw(mem(positions), {lastRow});
  Value chunkStart = e.i64(0);
  if (chunk)
    chunkStart = e.mulI(e.divSI(minPos, e.i64(chunk)), e.i64(chunk));

  // This lane's slice of the query, scaled (and tempered) once.
  Value scale = attentionScale(e, a, qPos);
  Value laneActive = e.cmpIndex(CmpIPredicate::ult,
                                e.mulI(lane, e.index(perLane)), e.index(d));
  Value laneCol =
      e.select(laneActive, e.mulI(lane, e.index(perLane)), e.index(0));
  SmallVector<Value> qv;
  Value qCol = e.addIndex(e.mulI(head, e.index(d)), laneCol);
  for (int64_t el = 0; el < perLane; ++el) {
    Value v = e.load(mem(q), {row, e.addIndex(qCol, e.index(el))});
    qv.push_back(e.select(laneActive, e.mul(v, scale), e.f32(0.0)));
  }

  // Online softmax state: max, sum, output slice.
  SmallVector<Value> init = {e.f32(-1e30), e.f32(0.0)};
  init.append(perLane, e.f32(0.0));
  SmallVector<Type> stateTypes(init.size(), f32);
  Value tiles =
      e.divIndex(e.addIndex(keys, e.index(kKeyTile - 1)), e.index(kKeyTile));
  ValueRange state = e.loopWith(
      e.index(0), tiles, init,
      [&](Value t, ValueRange carried) -> SmallVector<Value> {
        Value kBase = e.mulI(t, e.index(kKeyTile));
        Value kLast = e.minUI(e.addIndex(kBase, e.index(kKeyTile - 1)),
                              e.subIndex(keys, e.index(1)));
        // Ascending positions: the tile is visible to someone iff its first
        // key is not after the latest query and its last key is not before
        // the earliest query's chunk.
        Value firstKeyPos = e.loadRaw(keyPositions, {kBase});
        Value lastKeyPos = e.loadRaw(keyPositions, {kLast});
        Value useful = e.cmpIndex(CmpIPredicate::sle, firstKeyPos, maxPos);
        if (chunk)
          useful = e.andI(
              useful, e.cmpIndex(CmpIPredicate::sge, lastKeyPos, chunkStart));
        return e.ifElse(
            useful, stateTypes,
            [&]() -> SmallVector<Value> {
              // Stage K, V (bf16) and the key positions.
              int64_t vectors = kKeyTile * d / 8;
              for (int64_t i0 = 0; i0 < vectors; i0 += 32 * kWarps) {
                Value idx = e.addIndex(e.index(i0), tid);
                e.when(
                    e.cmpIndex(CmpIPredicate::ult, idx, e.index(vectors)), [&] {
                      Value kr = e.divIndex(idx, e.index(d / 8));
                      Value kc =
                          e.mulI(e.remIndex(idx, e.index(d / 8)), e.index(8));
                      Value src = e.addIndex(kBase, kr);
                      Value inRange = e.cmpIndex(CmpIPredicate::ult, src, keys);
                      Value gcol = e.addIndex(e.mulI(kvHead, e.index(d)), kc);
                      copyKvChunk(e, ctx, key, mem(key), src, inRange, gcol,
                                  kTile, {kr, kc});
                      copyKvChunk(e, ctx, value, mem(value), src, inRange, gcol,
                                  vTile, {kr, kc});
                    });
              }
              NVVM::CpAsyncCommitGroupOp::create(*e.b, e.loc);
              NVVM::CpAsyncWaitGroupOp::create(*e.b, e.loc, 0);
              e.when(
                  e.cmpIndex(CmpIPredicate::ult, tid, e.index(kKeyTile)), [&] {
                    Value src = e.addIndex(kBase, tid);
                    Value inRange = e.cmpIndex(CmpIPredicate::ult, src, keys);
                    Value p = e.loadRaw(keyPositions,
                                        {e.select(inRange, src, e.index(0))});
                    // Keys past the end get a position no query sees.
                    p = e.select(inRange, p,
                                 e.i64(std::numeric_limits<int64_t>::max()));
                    e.store(p, kposTile, {tid});
                  });
              e.barrier();

              SmallVector<Value> scores, visible;
              Value tileMax = e.f32(-1e30);
              for (int64_t j = 0; j < kKeyTile; ++j) {
                Value dot = e.f32(0.0);
                for (int64_t el = 0; el < perLane; ++el) {
                  Value kv = e.load(
                      kTile, {e.index(j), e.addIndex(laneCol, e.index(el))});
                  dot = e.add(dot, e.mul(qv[el], kv));
                }
                Value score = e.warpSum(dot);
                Value kp = e.loadRaw(kposTile, {e.index(j)});
                Value vis = e.cmpIndex(CmpIPredicate::sle, kp, qPos);
                if (chunk)
                  vis = e.andI(vis, sameChunk(e, kp, qPos, chunk));
                visible.push_back(vis);
                scores.push_back(score);
                tileMax = e.select(vis, e.maxF(tileMax, score), tileMax);
              }
              Value mNew = e.maxF(carried[0], tileMax);
              Value correction = e.exp(e.sub(carried[0], mNew));
              Value l = e.mul(carried[1], correction);
              SmallVector<Value> o;
              for (int64_t el = 0; el < perLane; ++el)
                o.push_back(e.mul(carried[2 + el], correction));
              for (int64_t j = 0; j < kKeyTile; ++j) {
                Value p = e.select(visible[j], e.exp(e.sub(scores[j], mNew)),
                                   e.f32(0.0));
                l = e.add(l, p);
                for (int64_t el = 0; el < perLane; ++el) {
                  Value vv = e.load(
                      vTile, {e.index(j), e.addIndex(laneCol, e.index(el))});
                  o[el] = e.add(o[el], e.mul(p, vv));
                }
              }
              // The tiles are reloaded next round.
              e.barrier();
              SmallVector<Value> yielded = {mNew, l};
              llvm::append_range(yielded, o);
              return yielded;
            },
            [&]() -> SmallVector<Value> {
              return SmallVector<Value>(carried);
            });
      });

  Value inv = e.div(e.f32(1.0), state[1]);
  e.when(e.andI(active, laneActive), [&] {
    for (int64_t el = 0; el < perLane; ++el)
      e.store(e.mul(state[2 + el], inv), mem(result),
              {row, e.addIndex(qCol, e.index(el))});
  });
}

/// Combines the kSplits partials of each (row, head): one warp per pair,
/// lanes along the head dimension.
void buildCombine(const KernelContext &ctx, AttentionOp a, StringRef name,
                  gpu::GPUModuleOp module) {
  int q = ctx.operandOf(a.getQuery()), result = ctx.operandOf(a.getResult());
  int64_t heads = a.getNumHeads();
  int64_t d = ctx.width(q) / heads;
  int64_t perLane = std::max<int64_t>(1, d / 32);
  MLIRContext *context = module.getContext();
  OpBuilder builder(context);
  gpu::GPUFuncOp fn = GpuEmitter::createKernel(
      module, ctx.kernel.getLoc(), name,
      paramsWith(
          ctx, {MemRefType::get({ShapedType::kDynamic}, builder.getF32Type())}),
      /*workgroup=*/{}, 32 * kWarps);
  Value partials = fn.getArgument(fn.getNumArguments() - 1);
  GpuEmitter e(builder, fn);
  Value tid = e.threadId();
  Value lane = e.remIndex(tid, e.index(32));
  Value rows = e.dim(fn.getArgument(q), 0);
  Value pair = e.addIndex(e.mulI(e.blockId(gpu::Dimension::x), e.index(kWarps)),
                          e.divIndex(tid, e.index(32)));
  Value active =
      e.cmpIndex(CmpIPredicate::ult, pair, e.mulI(rows, e.index(heads)));
  Value laneActive = e.cmpIndex(CmpIPredicate::ult,
                                e.mulI(lane, e.index(perLane)), e.index(d));
  e.when(e.andI(active, laneActive), [&] {
    Value row = e.divIndex(pair, e.index(heads));
    Value head = e.remIndex(pair, e.index(heads));
    Value first = e.mulI(pair, e.index(kSplits * (d + 2)));
    auto at = [&](int64_t split, Value offset) {
      return e.loadRaw(
          partials,
          {e.addIndex(first, e.addIndex(e.index(split * (d + 2)), offset))});
    };
    Value m = e.f32(-1e30);
    SmallVector<Value> maxes;
    for (int64_t sp = 0; sp < kSplits; ++sp) {
      maxes.push_back(at(sp, e.index(0)));
      m = e.maxF(m, maxes.back());
    }
    Value l = e.f32(0.0);
    SmallVector<Value> o(perLane, e.f32(0.0));
    Value laneCol = e.mulI(lane, e.index(perLane));
    for (int64_t sp = 0; sp < kSplits; ++sp) {
      Value w = e.exp(e.sub(maxes[sp], m));
      l = e.add(l, e.mul(w, at(sp, e.index(1))));
      for (int64_t el = 0; el < perLane; ++el)
        o[el] = e.add(o[el],
                      e.mul(w, at(sp, e.addIndex(e.index(2 + el), laneCol))));
    }
    Value inv = e.div(e.f32(1.0), l);
    for (int64_t el = 0; el < perLane; ++el) {
      Value col = e.addIndex(e.mulI(head, e.index(d)),
                             e.addIndex(laneCol, e.index(el)));
      e.store(e.mul(o[el], inv), fn.getArgument(result), {row, col});
    }
  });
}

/// Appends the step's new key and value rows (and their positions) to the
/// call site's pools, after the `count - rows` cached ones: one block per
/// new row, 16-byte copies.
void buildAppend(const KernelContext &ctx, AttentionOp a, StringRef name,
                 gpu::GPUModuleOp module) {
  int key = ctx.operandOf(a.getKey()), value = ctx.operandOf(a.getValue()),
      positions = ctx.operandOf(a.getPositions());
  int64_t width = ctx.width(key);
  MLIRContext *context = module.getContext();
  OpBuilder builder(context);
  Type i64 = builder.getI64Type();
  MemRefType pool = ctx.memrefTypeOf(key);
  gpu::GPUFuncOp fn = GpuEmitter::createKernel(
      module, ctx.kernel.getLoc(), name,
      paramsWith(ctx, {pool, pool, MemRefType::get({ShapedType::kDynamic}, i64),
                       MemRefType::get({1}, i64)}),
      /*workgroup=*/{}, 128);
  unsigned n = fn.getNumArguments();
  Value poolK = fn.getArgument(n - 4), poolV = fn.getArgument(n - 3),
        keyPositions = fn.getArgument(n - 2), keyCount = fn.getArgument(n - 1);
  GpuEmitter e(builder, fn);
  Value row = e.blockId(gpu::Dimension::x);
  Value rows = e.dim(fn.getArgument(key), 0);
  Value count = e.loadIndex(keyCount, {e.index(0)});
  Value dst = e.addIndex(e.subIndex(count, rows), row);
  auto vec = VectorType::get({8}, ctx.elementTypes[key]);
  e.loopStep(e.mulI(e.threadId(), e.index(8)), e.index(width), e.index(8 * 128),
             [&](Value c) {
               for (auto [from, to] :
                    {std::pair{key, poolK}, std::pair{value, poolV}}) {
                 Value v = e.vectorLoad(vec, fn.getArgument(from), {row, c},
                                        /*alignment=*/0);
                 e.vectorStore(v, to, {dst, c}, /*alignment=*/0);
               }
             });
  e.when(e.cmpIndex(CmpIPredicate::eq, e.threadId(), e.index(0)), [&] {
    e.store(e.loadRaw(fn.getArgument(positions), {row}), keyPositions, {dst});
  });
}

} // namespace

LogicalResult mlir::kiln::cuda::generateAttentionKernel(
    const KernelContext &ctx, GpuKernel &out, gpu::GPUModuleOp module) {
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
  if (ctx.width(key) % 8 != 0 ||
      ctx.elementTypes[key] != ctx.elementTypes[value])
    return a.emitOpError("the sm_90a KV pools need rows of a multiple of 8 "
                         "elements of one type");
  std::string name = ctx.name();
  buildAppend(ctx, a, name + "_append", module);
  buildDecode(ctx, a, name + "_split", module);
  // Steps past the decode rows take the wgmma kernel where it fits (even a
  // half-empty 128-row tile beats a warp per (row, head) well before 64
  // rows), else the SIMT one.
  bool flashFits = flashAttentionFits(ctx, a);
  if (!flashFits)
    buildAttention(ctx, a, name, module);
  buildCombine(ctx, a, name + "_combine", module);

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
        {{split, buildFlashAttention(ctx, a, name + "_flash", module)}});
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
