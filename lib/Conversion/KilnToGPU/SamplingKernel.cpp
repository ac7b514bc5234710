//===- SamplingKernel.cpp - Temperature / top-k / top-p sampling ----------===//
//
// `kiln_sample` draws the next token from the last logits row on the GPU,
// by the host sampler's rule (runtime/src/Sampler.cpp): tokens ranked by
// logit, ties to the lower id; top-k keeps the first k; top-p keeps the
// shortest ranked prefix whose share of the kept mass reaches top_p; the
// token is the first of that prefix at which the running weight
// exp((logit - max) / temperature) exceeds u times the prefix's mass, with
// u drawn by the host's seeded generator.
//
// Nothing is sorted. Each token has a 64-bit rank key (its logit mapped to
// an unsigned order, best first, then its id), and each of the three cuts
// is a radix select on that key: five passes over the row, each building a
// shared-memory histogram of 2048 digits (11 key bits) of the candidates
// that match the digits fixed so far, then a block-wide scan of the bins
// for the one where the running count or mass crosses its target. Weights
// are summed in 2^-40 fixed point with integer atomics, so the result does
// not depend on the order the threads add in (a token below 2^-40 of the
// top weight adds nothing to a mass: at most 202k * 2^-40 of the total).
// One block of 1024 threads: the row (0.8 MB for Llama 4) stays in L2
// between passes.
//
//===----------------------------------------------------------------------===//

#include "Generators.h"
#include "GpuEmitter.h"

#include <limits>

using namespace mlir;
using namespace mlir::kiln;
using namespace mlir::kiln::cuda;

namespace {

constexpr int64_t kThreads = 1024;
constexpr int64_t kBins = 2048;
/// Bits of the rank key each pass fixes (from the top): the logit's order
/// in three passes, the id (below 2^22) in two.
constexpr std::pair<int64_t, int64_t> kPasses[] = {
    {53, 11}, {42, 11}, {32, 10}, {11, 11}, {0, 11}};
constexpr double kFixedOne = 1099511627776.0; // 2^40

using arith::CmpFPredicate;
using arith::CmpIPredicate;

class SamplerBuilder {
public:
  SamplerBuilder(gpu::GPUFuncOp fn, int64_t vocab)
      : vocab(vocab), builder(fn.getContext()), e(builder, fn) {
    logits = fn.getArgument(0);
    request = fn.getArgument(1);
    token = fn.getArgument(2);
    hist = fn.getWorkgroupAttributions()[0];
    warpSums = fn.getWorkgroupAttributions()[1];
    warpMaxes = fn.getWorkgroupAttributions()[2];
    found = fn.getWorkgroupAttributions()[3];
    i64 = builder.getI64Type();
    f64 = builder.getF64Type();
  }

  void build() {
    tid = e.threadId();
    warp = e.divIndex(tid, e.index(32));
    lane = e.remIndex(tid, e.index(32));
    row = e.subIndex(e.dim(logits, 0), e.index(1));
    auto requested = [&](int64_t i) {
      return e.loadRaw(request, {e.index(i)});
    };
    Value temperature = e.truncF(requested(0), builder.getF32Type());
    Value topK = e.fpToSI(requested(1), i64);
    Value topP = requested(2), u = requested(3);
    expScale = e.div(e.f32(1.4426950408889634), temperature);

    // The top logit: weights are relative to it.
    Value negInf = e.f32(-std::numeric_limits<double>::infinity());
    Value largest =
        e.loopWith(tid, e.index(vocab), e.index(kThreads), {negInf},
                   [&](Value c, ValueRange acc) -> SmallVector<Value> {
                     return {e.maxF(acc[0], logitAt(c))};
                   })[0];
    top = e.blockMax(largest, warpMaxes, kThreads / 32);

    // top-k: the k-th key bounds the candidates.
    Value all = e.i64(-1);
    Value limited = e.andI(e.cmpIndex(CmpIPredicate::sgt, topK, e.i64(0)),
                           e.cmpIndex(CmpIPredicate::slt, topK, e.i64(vocab)));
    Value bound = e.ifElse(
        limited, {i64},
        [&]() -> SmallVector<Value> {
          return {select(/*mass=*/false, topK, all).key};
        },
        [&]() -> SmallVector<Value> { return {all}; })[0];

    // The kept mass, then the nucleus.
    Value kept = e.loopWith(
        tid, e.index(vocab), e.index(kThreads), {e.i64(0)},
        [&](Value c, ValueRange acc) -> SmallVector<Value> {
          Value v = logitAt(c);
          Value inside = e.cmpIndex(CmpIPredicate::ule, rankKey(v, c), bound);
          return {e.addI(acc[0], e.select(inside, weight(v), e.i64(0)))};
        })[0];
    Value total = blockSum(kept);
    Value totalF = e.uiToFP(total, f64);
    Value cutsNucleus = e.cmpF(CmpFPredicate::OLT, topP, e.f64(1.0));
    ValueRange nucleus = e.ifElse(
        cutsNucleus, {i64, i64},
        [&]() -> SmallVector<Value> {
          // ceil(top_p * total); the product is positive.
          Value x = e.mul(topP, totalF);
          Value whole = e.fpToSI(x, i64);
          Value below = e.cmpF(CmpFPredicate::OLT, e.siToFP(whole, f64), x);
          Value target = clamp(e.addI(whole, e.extUI(below, i64)), total);
          Cut cut = select(/*mass=*/true, target, bound);
          return {cut.key, cut.through};
        },
        [&]() -> SmallVector<Value> {
          return {bound, total};
        });
    Value prefixEnd = nucleus[0], prefixMass = nucleus[1];

    // The draw: the first token whose running mass exceeds u * mass.
    Value r = e.mul(u, e.uiToFP(prefixMass, f64));
    // floor(r) + 1 (r is not negative).
    Value target = clamp(e.addI(e.fpToSI(r, i64), e.i64(1)), prefixMass);
    Cut drawn = select(/*mass=*/true, target, prefixEnd);
    e.when(e.cmpIndex(CmpIPredicate::eq, tid, e.index(0)), [&] {
      // Nothing with a finite logit to weigh (all -inf or NaN): the lowest
      // id, as the host rule gives.
      Value weighable = e.cmpF(CmpFPredicate::OGT, top, negInf);
      Value id =
          e.select(weighable, e.andI(drawn.key, e.i64(0xFFFFFFFF)), e.i64(0));
      e.store(id, token, {e.index(0)});
    });
  }

private:
  int64_t vocab;
  OpBuilder builder;
  GpuEmitter e;
  Type i64, f64;
  Value logits, request, token, hist, warpSums, warpMaxes, found;
  Value tid, warp, lane, row, expScale, top;

  struct Cut {
    Value key;     // rank key of the token where the target is met
    Value through; // count or mass up to and including it
  };

  /// The logit of token `c`: NaN ranks last (as -inf) and -0 ties with +0.
  Value logitAt(Value c) {
    Value v = e.load(logits, {row, c});
    Value isNan = e.cmpF(CmpFPredicate::UNO, v, v);
    v = e.select(isNan, e.f32(-std::numeric_limits<double>::infinity()), v);
    return e.add(v, e.f32(0.0));
  }

  /// (order of the logit, best first) << 32 | id, compared unsigned.
  Value rankKey(Value v, Value c) {
    Value bits = e.bitcast(v, builder.getI32Type());
    Value negative = e.cmpIndex(CmpIPredicate::slt, bits, e.i32(0));
    // Ascending unsigned order of floats, then flipped.
    Value ascending = e.select(negative, e.xorI(bits, e.i32(-1)),
                               e.orI(bits, e.i32(INT32_MIN)));
    Value order = e.xorI(ascending, e.i32(-1));
    Value high = e.shlI(e.extUI(order, i64), e.i64(32));
    return e.orI(high, e.toI64(c));
  }

  /// exp((v - top) / temperature) in 2^-40 fixed point.
  Value weight(Value v) {
    Value w = e.exp2(e.mul(e.sub(v, top), expScale));
    return e.fpToUI(e.mul(w, e.f32(kFixedOne)), i64);
  }

  Value clamp(Value target, Value limit) {
    return e.maxSI(e.minSI(target, limit), e.i64(1));
  }

  /// 64-bit shuffles as two 32-bit ones.
  Value shuffle(Value v, gpu::ShuffleMode mode, int64_t offset) {
    Type i32 = builder.getI32Type();
    Value lo = e.truncI(v, i32);
    Value hi = e.truncI(e.shrUI(v, e.i64(32)), i32);
    Value wideLo = e.extUI(e.shuffle(lo, mode, offset), i64);
    Value wideHi = e.shlI(e.extUI(e.shuffle(hi, mode, offset), i64), e.i64(32));
    return e.orI(wideHi, wideLo);
  }

  /// The sum over the block, in every thread.
  Value blockSum(Value v) {
    Value s = v;
    for (int64_t off = 16; off >= 1; off /= 2)
      s = e.addI(s, shuffle(s, gpu::ShuffleMode::XOR, off));
    e.when(e.cmpIndex(CmpIPredicate::eq, lane, e.index(0)),
           [&] { e.store(s, warpSums, {warp}); });
    e.barrier();
    Value total = e.i64(0);
    for (int64_t w = 0; w < kThreads / 32; ++w)
      total = e.addI(total, e.loadRaw(warpSums, {e.index(w)}));
    e.barrier();
    return total;
  }

  /// Radix select: the smallest rank key K among the candidates (keys up
  /// to `bound`) whose running count (or mass) through K reaches `target`,
  /// which must lie in [1, the candidates' total].
  Cut select(bool mass, Value target, Value bound) {
    Value prefix = e.i64(0), mask = e.i64(0), before = e.i64(0);
    Value through = before;
    for (auto pass : kPasses) {
      int64_t shift = pass.first, bits = pass.second;
      e.loopStep(tid, e.index(kBins), e.index(kThreads),
                 [&](Value z) { e.store(e.i64(0), hist, {z}); });
      e.barrier();
      e.loopStep(tid, e.index(vocab), e.index(kThreads), [&](Value c) {
        Value v = logitAt(c);
        Value key = rankKey(v, c);
        Value candidate =
            e.andI(e.cmpIndex(CmpIPredicate::ule, key, bound),
                   e.cmpIndex(CmpIPredicate::eq, e.andI(key, mask), prefix));
        e.when(candidate, [&] {
          Value digit = e.toIndex(e.andI(e.shrUI(key, e.i64(shift)),
                                         e.i64((int64_t(1) << bits) - 1)));
          e.atomicAdd(mass ? weight(v) : e.i64(1), hist, {digit});
        });
      });
      e.barrier();

      // Thread t owns bins 2t and 2t+1: a block-wide exclusive scan of
      // their sums finds the bin where the running total meets the target.
      Value b0 = e.mulIndex(tid, 2), b1 = e.addIndex(b0, e.index(1));
      Value h0 = e.loadRaw(hist, {b0}), h1 = e.loadRaw(hist, {b1});
      Value own = e.addI(h0, h1);
      Value inclusive = own;
      for (int64_t off = 1; off < 32; off *= 2) {
        Value up = shuffle(inclusive, gpu::ShuffleMode::UP, off);
        Value valid = e.cmpIndex(CmpIPredicate::uge, lane, e.index(off));
        inclusive = e.addI(inclusive, e.select(valid, up, e.i64(0)));
      }
      e.when(e.cmpIndex(CmpIPredicate::eq, lane, e.index(31)),
             [&] { e.store(inclusive, warpSums, {warp}); });
      e.barrier();
      Value earlier = e.i64(0);
      for (int64_t w = 0; w < kThreads / 32; ++w) {
        Value s = e.loadRaw(warpSums, {e.index(w)});
        earlier = e.select(e.cmpIndex(CmpIPredicate::ult, e.index(w), warp),
                           e.addI(earlier, s), earlier);
      }
      Value start = e.addI(before, e.addI(earlier, e.subIndex(inclusive, own)));
      Value end0 = e.addI(start, h0);
      Value end1 = e.addI(end0, h1);
      auto crosses = [&](Value from, Value to) {
        return e.andI(e.cmpIndex(CmpIPredicate::slt, from, target),
                      e.cmpIndex(CmpIPredicate::sle, target, to));
      };
      auto record = [&](Value bin, Value from, Value to) {
        Value d = e.toI64(bin);
        for (auto [i, x] :
             {std::pair{0, d}, std::pair{1, from}, std::pair{2, to}})
          e.store(x, found, {e.index(i)});
      };
      e.when(crosses(start, end0), [&] { record(b0, start, end0); });
      e.when(crosses(end0, end1), [&] { record(b1, end0, end1); });
      e.barrier();
      Value d = e.loadRaw(found, {e.index(0)});
      before = e.loadRaw(found, {e.index(1)});
      through = e.loadRaw(found, {e.index(2)});
      // Every thread has read the bins and the result before either is
      // rewritten.
      e.barrier();
      prefix = e.orI(prefix, e.shlI(d, e.i64(shift)));
      uint64_t digitMask = ((uint64_t(1) << bits) - 1) << shift;
      mask = e.orI(mask, e.i64(static_cast<int64_t>(digitMask)));
    }
    return {prefix, through};
  }
};

} // namespace

GpuLaunch mlir::kiln::cuda::buildSampler(gpu::GPUModuleOp module, Location loc,
                                         int64_t vocab) {
  GpuLaunch launch;
  // Token ids must fit the key's low 22 bits.
  if (vocab >= (int64_t(1) << 22))
    return launch;
  Builder types(module.getContext());
  Type i64 = types.getI64Type(), f32 = types.getF32Type();
  Attribute shared = types.getI64IntegerAttr(3);
  auto sharedOf = [&](int64_t n, Type element) {
    return MemRefType::get({n}, element, MemRefLayoutAttrInterface(), shared);
  };
  gpu::GPUFuncOp fn = GpuEmitter::createKernel(
      module, loc, "kiln_sample",
      {MemRefType::get({ShapedType::kDynamic, vocab}, f32),
       MemRefType::get({4}, types.getF64Type()), MemRefType::get({1}, i64)},
      {sharedOf(kBins, i64), sharedOf(32, i64), sharedOf(32, f32),
       sharedOf(3, i64)},
      kThreads);
  SamplerBuilder(fn, vocab).build();
  launch.function = "kiln_sample";
  launch.blockThreads = kThreads;
  return launch;
}
