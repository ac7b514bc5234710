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
#include "GpuEmitter.h"
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

using arith::CmpIPredicate;

class FlashBuilder {
public:
  FlashBuilder(const KernelContext &ctx, AttentionOp a) : ctx(ctx), a(a) {
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

  void build(gpu::GPUModuleOp module, StringRef name) {
    MLIRContext *context = module.getContext();
    OpBuilder builder(context);
    SmallVector<Type> params = ctx.memrefTypes();
    Type i64 = builder.getI64Type();
    params.push_back(MemRefType::get({ShapedType::kDynamic}, i64));
    params.push_back(MemRefType::get({1}, i64));
    fn = createTmaKernel(module, ctx.kernel.getLoc(), name, /*maps=*/3, params,
                         128 * (1 + kConsumers));
    keyPositions = fn.getArgument(fn.getNumArguments() - 2);
    keyCount = fn.getArgument(fn.getNumArguments() - 1);
    GpuEmitter emitter(builder, fn);
    e = &emitter;
    setup();
    e->ifThenElse(
        e->cmpIndex(CmpIPredicate::eq, wg, e->index(0)), [&] { producer(); },
        [&] { consumer(); });
    e = nullptr;
  }

private:
  const KernelContext &ctx;
  AttentionOp a;
  int q, key, value, positions, result;
  int64_t heads, d, group, boxes, chunk, stages;
  gpu::GPUFuncOp fn;
  GpuEmitter *e = nullptr;
  Value keyPositions, keyCount, mapQ, mapK, mapV;
  Value wg, lane, dyn, pad, aligned, qFull, full, empty, head, kvHead, m0, rows,
      keys, tileLo, tileHi;

  Value mem(int i) { return fn.getArgument(3 + i); }

  void setup() {
    MLIRContext *context = fn.getContext();
    auto map = tensorMapType(context, {64, 64});
    mapQ = tensorMapOf(*e, fn.getArgument(0), map);
    mapK = tensorMapOf(*e, fn.getArgument(1), map);
    mapV = tensorMapOf(*e, fn.getArgument(2), map);
    SharedBase arena = alignedDynamicShared(*e);
    dyn = arena.memory;
    pad = arena.pad;
    aligned = arena.aligned;
    qFull =
        nvgpu::MBarrierCreateOp::create(*e->b, e->loc, barrierType(context, 1));
    full = nvgpu::MBarrierCreateOp::create(*e->b, e->loc,
                                           barrierType(context, stages));
    empty = nvgpu::MBarrierCreateOp::create(*e->b, e->loc,
                                            barrierType(context, stages));
    Value tid = e->threadId();
    wg = e->divIndex(tid, e->index(128));
    lane = e->remIndex(tid, e->index(128));
    // Heads vary fastest, so the blocks in flight share a KV head's tiles
    // in L2; row tiles run last to first, so the longest (causal) ones
    // start first and the short ones fill the tail.
    head = e->blockId(gpu::Dimension::x);
    kvHead = e->divIndex(head, e->index(group));
    Value rowTile =
        e->subIndex(e->subIndex(e->gridDim(gpu::Dimension::y), e->index(1)),
                    e->blockId(gpu::Dimension::y));
    m0 = e->mulI(rowTile, e->index(64 * kConsumers));
    rows = e->dim(mem(q), 0);
    keys = e->loadIndex(keyCount, {e->index(0)});
    // Key tiles this block can see: positions ascend in the pool.
    Value lastRow = e->minUI(e->addIndex(m0, e->index(64 * kConsumers - 1)),
                             e->subIndex(rows, e->index(1)));
    Value maxPos = e->loadRaw(mem(positions), {lastRow});
    Value minPos = e->loadRaw(mem(positions), {m0});
    Value tiles =
        e->divIndex(e->addIndex(keys, e->index(kKeys - 1)), e->index(kKeys));
    // hi: tiles whose first key is not after the last query.
    tileHi = e->loopWith(
        e->index(0), tiles, {e->index(0)},
        [&](Value t, ValueRange acc) -> SmallVector<Value> {
          Value firstPos =
              e->loadRaw(keyPositions, {e->mulI(t, e->index(kKeys))});
          Value before = e->cmpIndex(CmpIPredicate::sle, firstPos, maxPos);
          return {e->select(before, e->addIndex(t, e->index(1)), acc[0])};
        })[0];
    tileLo = e->index(0);
    if (chunk) {
      Value start = e->mulI(e->divSI(minPos, e->i64(chunk)), e->i64(chunk));
      // lo: tiles whose last key is before the first query's chunk.
      tileLo = e->loopWith(
          e->index(0), tileHi, {e->index(0)},
          [&](Value u, ValueRange acc) -> SmallVector<Value> {
            Value last = e->minUI(
                e->addIndex(e->mulI(u, e->index(kKeys)), e->index(kKeys - 1)),
                e->subIndex(keys, e->index(1)));
            Value lastPos = e->loadRaw(keyPositions, {last});
            Value stale = e->cmpIndex(CmpIPredicate::slt, lastPos, start);
            return {e->select(stale, e->addIndex(u, e->index(1)), acc[0])};
          })[0];
    }
    e->when(e->cmpIndex(CmpIPredicate::eq, tid, e->index(0)), [&] {
      nvgpu::MBarrierInitOp::create(*e->b, e->loc, qFull, e->index(1),
                                    e->index(0), /*predicate=*/nullptr);
      e->loopStep(e->index(0), e->index(stages), e->index(1), [&](Value st) {
        nvgpu::MBarrierInitOp::create(*e->b, e->loc, full, e->index(1), st,
                                      /*predicate=*/nullptr);
        nvgpu::MBarrierInitOp::create(*e->b, e->loc, empty,
                                      e->index(kConsumers), st,
                                      /*predicate=*/nullptr);
      });
      NVVM::FenceMbarrierInitOp::create(*e->b, e->loc);
    });
    e->barrier();
  }

  Value phase(Value i, bool flip) { return parity(*e, i, stages, flip); }

  void load(Value map, Value barrier, Value index, Value offset, Value col,
            Value row) {
    nvgpu::TmaAsyncLoadOp::create(*e->b, e->loc,
                                  viewTile(*e, dyn, offset, {64, 64}), barrier,
                                  map, ValueRange{col, row}, index,
                                  /*multicastMask=*/nullptr,
                                  /*predicate=*/nullptr);
  }

  void producer() {
    NVVM::SetMaxRegisterOp::create(*e->b, e->loc, 40,
                                   NVVM::SetMaxRegisterAction::decrease);
    e->when(e->cmpIndex(CmpIPredicate::eq, lane, e->index(0)), [&] {
      nvgpu::MBarrierArriveExpectTxOp::create(*e->b, e->loc, qFull,
                                              e->index(qBytes()), e->index(0),
                                              /*predicate=*/nullptr);
      for (int64_t c = 0; c < kConsumers; ++c)
        for (int64_t b = 0; b < boxes; ++b) {
          Value off = e->addIndex(pad, e->index((c * boxes + b) * kBox));
          Value col = e->addIndex(e->mulI(head, e->index(d)), e->index(64 * b));
          Value row = e->addIndex(m0, e->index(64 * c));
          load(mapQ, qFull, e->index(0), off, col, row);
        }
      e->loopStep(tileLo, tileHi, e->index(1), [&](Value t) {
        Value i = e->subIndex(t, tileLo);
        Value st = e->remIndex(i, e->index(stages));
        waitParity(*e, empty, st, phase(i, true));
        nvgpu::MBarrierArriveExpectTxOp::create(*e->b, e->loc, full,
                                                e->index(stageBytes()), st,
                                                /*predicate=*/nullptr);
        Value stage = e->addIndex(e->addIndex(pad, e->index(qBytes())),
                                  e->mulI(st, e->index(stageBytes())));
        Value keyRow = e->mulI(t, e->index(kKeys));
        for (int which = 0; which < 2; ++which)
          for (int64_t b = 0; b < boxes; ++b) {
            Value off =
                e->addIndex(stage, e->index((which * boxes + b) * kBox));
            Value col =
                e->addIndex(e->mulI(kvHead, e->index(d)), e->index(64 * b));
            load(which ? mapV : mapK, full, st, off, col, keyRow);
          }
      });
    });
  }

  /// Packs two f32 into one register of bf16x2 (the low half first).
  Value pack(Value lo, Value hi) {
    MLIRContext *context = fn.getContext();
    Value v = vector::FromElementsOp::create(
        *e->b, e->loc, VectorType::get({2}, Float32Type::get(context)),
        ValueRange{lo, hi});
    Value h = e->truncF(v, VectorType::get({2}, BFloat16Type::get(context)));
    Value i = vector::BitCastOp::create(
        *e->b, e->loc, VectorType::get({1}, IntegerType::get(context, 32)), h);
    return vector::ExtractOp::create(*e->b, e->loc, i, ArrayRef<int64_t>{0});
  }

  /// O += P·V_tile for one k16 slice: A (P) in registers, B by descriptor.
  /// `accumulate` (i32): 0 overwrites O (scale-d 0). Inline PTX, as no op
  /// takes the A operand from registers.
  Value pvMma(ArrayRef<Value> a, Value desc, Value acc, Value accumulate) {
    int64_t outs = d / 2;
    std::string regs, constraints;
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
    SmallVector<Value> operands(a.begin(), a.end());
    operands.push_back(desc);
    operands.push_back(accumulate);
    for (int64_t r = 0; r < outs; ++r)
      operands.push_back(fragment(acc, r));
    MLIRContext *context = fn.getContext();
    return LLVM::InlineAsmOp::create(
               *e->b, e->loc, accType(context, d), operands,
               e->b->getStringAttr(asmText), e->b->getStringAttr(constraints),
               /*has_side_effects=*/e->b->getUnitAttr(),
               /*is_align_stack=*/nullptr,
               LLVM::TailCallKindAttr::get(
                   context, LLVM::tailcallkind::TailCallKind::None),
               /*asm_dialect=*/nullptr, /*operand_attrs=*/nullptr)
        .getResult(0);
  }

  Value fragment(Value acc, int64_t i) {
    return LLVM::ExtractValueOp::create(*e->b, e->loc, acc,
                                        ArrayRef<int64_t>{i});
  }

  struct Softmax {
    Value m[2], l[2], corr[2];
    SmallVector<Value> packs; // P as bf16 A fragments
  };

  void consumer() {
    MLIRContext *context = fn.getContext();
    NVVM::SetMaxRegisterOp::create(*e->b, e->loc, 232,
                                   NVVM::SetMaxRegisterAction::increase);
    Value cw = e->subIndex(wg, e->index(1));
    FragmentCoords frag = fragmentsOf(*e, lane, m0, cw);
    Value quad2 = frag.pairColumn;
    Value qpos[2], tau[2];
    for (int h = 0; h < 2; ++h) {
      Value safe =
          e->select(e->cmpIndex(CmpIPredicate::ult, frag.rows[h], rows),
                    frag.rows[h], e->index(0));
      qpos[h] = e->loadRaw(mem(positions), {safe});
      tau[h] = attentionScale(*e, a, qpos[h]);
    }
    waitParity(*e, qFull, e->index(0), e->boolean(false));
    Value base64 = e->toI64(aligned);
    Value qAddr = addressOf(*e, base64, cw, boxes * kBox);
    Type oType = accType(context, d), sType = accType(context, kKeys);
    Value negInf = e->f32(-std::numeric_limits<double>::infinity());
    Value stages0 = e->addI(base64, e->i64(qBytes()));
    auto stageOf = [&](Value tile) {
      return e->remIndex(e->subIndex(tile, tileLo), e->index(stages));
    };
    auto awaitStage = [&](Value tile) {
      Value ti = e->subIndex(tile, tileLo);
      waitParity(*e, full, stageOf(tile), phase(ti, false));
    };
    auto stageAddress = [&](Value tile) {
      return addressOf(*e, stages0, stageOf(tile), stageBytes());
    };
    // S = Q·Kᵀ of a stage, box by box, issued (after a fence) without
    // waiting; the first wgmma overwrites S, so S needs no zeroing.
    auto issueScores = [&](Value stage) {
      Value s = LLVM::UndefOp::create(*e->b, e->loc, sType);
      for (int64_t b = 0; b < boxes; ++b) {
        Value qa = descriptor(*e, e->addI(qAddr, e->i64(b * kBox)));
        Value kb = descriptor(*e, e->addI(stage, e->i64(b * kBox)));
        s = mmaKTile(*e, qa, kb, s, kKeys, NVVM::MMALayout::col,
                     /*overwrite=*/b == 0);
      }
      NVVM::WgmmaGroupSyncAlignedOp::create(*e->b, e->loc);
      return s;
    };
    // O += P·V of a stage, issued without waiting; `first` (i1) overwrites
    // O instead, so O needs no zeroing either.
    auto issuePv = [&](ArrayRef<Value> packs, Value stage, Value o,
                       Value first) {
      Value vDesc = descriptor(*e, e->addI(stage, e->i64(boxes * kBox)), kBox);
      Value accumulate = e->select(first, e->i32(0), e->i32(1));
      for (int64_t step = 0; step < kKeys / 16; ++step) {
        // 16 key rows of the MN-major V boxes: 2048 bytes.
        Value desc = step ? e->addI(vDesc, e->i64(128 * step)) : vDesc;
        o = pvMma(packs.slice(4 * step, 4), desc, o,
                  step ? e->i32(1) : accumulate);
      }
      NVVM::WgmmaGroupSyncAlignedOp::create(*e->b, e->loc);
      return o;
    };
    auto release = [&](Value tile) {
      e->when(e->cmpIndex(CmpIPredicate::eq, lane, e->index(0)),
              [&] { arrive(*e, empty, stageOf(tile)); });
    };
    // Online softmax of one key tile on the S fragments.
    auto softmax = [&](Value s, Value tile, ArrayRef<Value> mIn,
                       ArrayRef<Value> lIn) {
      Value keyBase = e->mulI(tile, e->index(kKeys));
      Softmax out;
      SmallVector<Value> p(kKeys / 2);
      for (int h = 0; h < 2; ++h) {
        SmallVector<Value> sc(kKeys / 4);
        Value rowMax = negInf;
        for (int64_t j = 0; j < kKeys / 8; ++j)
          for (int el = 0; el < 2; ++el) {
            Value col = e->addIndex(e->addIndex(keyBase, e->index(8 * j)),
                                    e->addIndex(quad2, e->index(el)));
            Value inKeys = e->cmpIndex(CmpIPredicate::ult, col, keys);
            Value kp =
                e->loadRaw(keyPositions, {e->select(inKeys, col, e->index(0))});
            Value vis =
                e->andI(inKeys, e->cmpIndex(CmpIPredicate::sle, kp, qpos[h]));
            if (chunk)
              vis = e->andI(vis, sameChunk(*e, kp, qpos[h], chunk));
            Value v = e->mul(fragment(s, 4 * j + 2 * h + el), tau[h]);
            v = e->select(vis, v, negInf);
            sc[2 * j + el] = v;
            rowMax = e->maxF(rowMax, v);
          }
        // The four lanes of a quad hold a row's 64 keys.
        for (int off : {1, 2})
          rowMax = e->maxF(rowMax, e->shuffleXor(rowMax, off));
        out.m[h] = e->maxF(mIn[h], rowMax);
        // A row that has seen no visible key yet keeps exp(-inf) = 0 terms.
        Value isInf = e->cmpF(arith::CmpFPredicate::OEQ, out.m[h], negInf);
        Value mUse = e->select(isInf, e->f32(0.0), out.m[h]);
        out.corr[h] = e->exp(e->sub(mIn[h], mUse));
        Value sum = e->f32(0.0);
        for (int64_t j = 0; j < kKeys / 4; ++j) {
          Value x = e->exp(e->sub(sc[j], mUse));
          sum = e->add(sum, x);
          p[(j / 2) * 4 + 2 * h + (j % 2)] = x;
        }
        out.l[h] = e->add(e->mul(lIn[h], out.corr[h]), sum);
      }
      for (int64_t step = 0; step < kKeys / 16; ++step) {
        // Keys 16*step.. : S blocks 2*step and 2*step+1.
        for (int64_t block : {2 * step, 2 * step + 1}) {
          out.packs.push_back(pack(p[block * 4 + 0], p[block * 4 + 1]));
          out.packs.push_back(pack(p[block * 4 + 2], p[block * 4 + 3]));
        }
      }
      return out;
    };

    // FA3's intra-warpgroup overlap: iteration t issues S(t) and the P·V of
    // tile t-1 together, waits for S(t) alone and runs its softmax while
    // the tensor cores finish P·V(t-1); O is rescaled only once that P·V
    // has completed, with no wgmma in flight, and P crosses iterations as
    // bf16 registers. ptxas sees no accumulator touched in flight.
    // (Every query sees at least its own key, so there is a first tile.)
    e->when(e->cmpIndex(CmpIPredicate::ult, tileLo, tileHi),
            [&] { awaitStage(tileLo); });
    NVVM::WgmmaFenceAlignedOp::create(*e->b, e->loc);
    Value firstS = issueScores(stageAddress(tileLo));
    NVVM::WgmmaWaitGroupSyncOp::create(*e->b, e->loc, 0);
    Softmax first =
        softmax(firstS, tileLo, {negInf, negInf}, {e->f32(0.0), e->f32(0.0)});
    // Carried: O, then (m, l) per row half, then P.
    SmallVector<Value> init = {LLVM::UndefOp::create(*e->b, e->loc, oType)};
    for (int h = 0; h < 2; ++h) {
      init.push_back(first.m[h]);
      init.push_back(first.l[h]);
    }
    llvm::append_range(init, first.packs);
    ValueRange res =
        e->loopWith(e->addIndex(tileLo, e->index(1)), tileHi, init,
                    [&](Value t, ValueRange carried) -> SmallVector<Value> {
                      Value oIn = carried[0];
                      Value mIn[2] = {carried[1], carried[3]};
                      Value lIn[2] = {carried[2], carried[4]};
                      SmallVector<Value> pIn(carried.drop_front(5));
                      Value prev = e->subIndex(t, e->index(1));
                      awaitStage(t);
                      NVVM::WgmmaFenceAlignedOp::create(*e->b, e->loc);
                      Value s = issueScores(stageAddress(t));
                      Value oPv =
                          issuePv(pIn, stageAddress(prev), oIn,
                                  e->cmpIndex(CmpIPredicate::eq, prev, tileLo));
                      NVVM::WgmmaWaitGroupSyncOp::create(*e->b, e->loc, 1);
                      Softmax cur = softmax(s, t, mIn, lIn);
                      NVVM::WgmmaWaitGroupSyncOp::create(*e->b, e->loc, 0);
                      release(prev);
                      // Rescale O.
                      Value o = LLVM::UndefOp::create(*e->b, e->loc, oType);
                      for (int64_t r = 0; r < d / 2; ++r) {
                        int h = (r % 4) / 2;
                        Value v = e->mul(fragment(oPv, r), cur.corr[h]);
                        o = LLVM::InsertValueOp::create(*e->b, e->loc, o, v,
                                                        ArrayRef<int64_t>{r});
                      }
                      SmallVector<Value> yielded = {o};
                      for (int h = 0; h < 2; ++h) {
                        yielded.push_back(cur.m[h]);
                        yielded.push_back(cur.l[h]);
                      }
                      llvm::append_range(yielded, cur.packs);
                      return yielded;
                    });
    // The last tile's P·V.
    SmallVector<Value> lastPacks(res.drop_front(5));
    Value last = e->subIndex(tileHi, e->index(1));
    NVVM::WgmmaFenceAlignedOp::create(*e->b, e->loc);
    Value finalO = issuePv(lastPacks, stageAddress(last), res[0],
                           e->cmpIndex(CmpIPredicate::eq, last, tileLo));
    NVVM::WgmmaWaitGroupSyncOp::create(*e->b, e->loc, 0);
    Value finalL[2] = {res[2], res[4]};
    // O / l, the quad's partial sums added first.
    Type element = ctx.elementTypes[result];
    for (int h = 0; h < 2; ++h) {
      Value total = finalL[h];
      for (int off : {1, 2})
        total = e->add(total, e->shuffleXor(total, off));
      Value inv = e->div(e->f32(1.0), total);
      e->when(e->cmpIndex(CmpIPredicate::ult, frag.rows[h], rows), [&] {
        for (int64_t j = 0; j < d / 8; ++j) {
          Value col = e->addIndex(
              e->addIndex(e->mulI(head, e->index(d)), e->index(8 * j)), quad2);
          Value v0 =
              e->truncF(e->mul(fragment(finalO, 4 * j + 2 * h), inv), element);
          Value v1 = e->truncF(e->mul(fragment(finalO, 4 * j + 2 * h + 1), inv),
                               element);
          Value pair = vector::FromElementsOp::create(
              *e->b, e->loc, VectorType::get({2}, element), ValueRange{v0, v1});
          e->vectorStore(pair, mem(result), {frag.rows[h], col},
                         /*alignment=*/0);
        }
      });
    }
  }
};

} // namespace

bool mlir::kiln::cuda::flashAttentionFits(const KernelContext &ctx,
                                          AttentionOp a) {
  int q = ctx.operandOf(a.getQuery()), key = ctx.operandOf(a.getKey()),
      value = ctx.operandOf(a.getValue());
  int64_t d = ctx.width(q) / a.getNumHeads();
  return d % 64 == 0 && d <= 256 && ctx.isBF16(q) && ctx.isBF16(key) &&
         ctx.isBF16(value);
}

GpuLaunch mlir::kiln::cuda::buildFlashAttention(const KernelContext &ctx,
                                                AttentionOp a, StringRef name,
                                                gpu::GPUModuleOp module) {
  FlashBuilder writer(ctx, a);
  writer.build(module, name);
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
