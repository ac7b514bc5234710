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

class SamplerWriter {
public:
  SamplerWriter(int64_t vocab)
      : vocab(vocab), logitsType("memref<?x" + std::to_string(vocab) + "xf32>"),
        k("kiln_sample",
          "%logits: " + logitsType +
              ", %request: memref<4xf64>, %token: memref<1xi64>",
          kThreads) {}

  std::string write() {
    hist = k.workgroup("memref<" + std::to_string(kBins) + "xi64, 3>");
    warpSums = k.workgroup("memref<32xi64, 3>");
    warpMaxes = k.workgroup("memref<32xf32, 3>");
    found = k.workgroup("memref<3xi64, 3>");
    tid = k.threadId();
    warp = k.div(tid, k.index(32));
    lane = k.rem(tid, k.index(32));
    row = k.sub(k.op("memref.dim %logits, " + k.index(0) + " : " + logitsType),
                k.index(1));
    auto request = [&](int i) {
      return k.op("memref.load %request[" + k.index(i) + "] : memref<4xf64>");
    };
    std::string temperature =
        k.op("arith.truncf " + request(0) + " : f64 to f32");
    std::string topK = k.op("arith.fptosi " + request(1) + " : f64 to i64");
    std::string topP = request(2), u = request(3);
    expScale = k.fdiv(k.f32(1.4426950408889634), temperature);

    // The top logit: weights are relative to it.
    std::string res = k.fresh(), acc = k.fresh();
    std::string c = k.beginFor(
        tid, k.index(vocab), k.index(kThreads), res,
        acc + " = " + k.f32(-std::numeric_limits<double>::infinity()) +
            " : f32");
    k.endFor(k.fmax(acc, logitAt(c)) + " : f32");
    top = k.blockCombine(res, /*max=*/true, warpMaxes, "memref<32xf32, 3>",
                         kThreads / 32);

    // top-k: the k-th key bounds the candidates.
    std::string all = k.i64(-1);
    std::string limited =
        k.op("arith.andi " + k.cmp("sgt", topK, k.i64(0), "i64") + ", " +
             k.cmp("slt", topK, k.i64(vocab), "i64") + " : i1");
    std::string bound = k.fresh();
    k.line(bound + " = scf.if " + limited + " -> (i64) {");
    {
      Cut cut = select(/*mass=*/false, topK, all);
      k.line("  scf.yield " + cut.key + " : i64");
    }
    k.line("} else {");
    k.line("  scf.yield " + all + " : i64");
    k.line("}");

    // The kept mass, then the nucleus.
    std::string totalRes = k.fresh(), totalAcc = k.fresh();
    c = k.beginFor(tid, k.index(vocab), k.index(kThreads), totalRes,
                   totalAcc + " = " + k.i64(0) + " : i64");
    std::string v = logitAt(c);
    std::string kept = k.cmp("ule", rankKey(v, c), bound, "i64");
    k.endFor(k.op("arith.addi " + totalAcc + ", " +
                  k.select(kept, weight(v), k.i64(0), "i64") + " : i64") +
             " : i64");
    std::string total = blockSum(totalRes);
    std::string totalF = k.op("arith.uitofp " + total + " : i64 to f64");
    std::string cutsNucleus =
        k.op("arith.cmpf olt, " + topP + ", " + k.f64(1.0) + " : f64");
    std::string nucleus = k.fresh();
    k.line(nucleus + ":2 = scf.if " + cutsNucleus + " -> (i64, i64) {");
    {
      // ceil(top_p * total); the product is positive.
      std::string x = k.op("arith.mulf " + topP + ", " + totalF + " : f64");
      std::string whole = k.op("arith.fptosi " + x + " : f64 to i64");
      std::string below = k.op("arith.cmpf olt, " +
                               k.op("arith.sitofp " + whole + " : i64 to f64") +
                               ", " + x + " : f64");
      std::string target =
          k.op("arith.addi " + whole + ", " +
               k.op("arith.extui " + below + " : i1 to i64") + " : i64");
      target = clamp(target, total);
      Cut cut = select(/*mass=*/true, target, bound);
      k.line("  scf.yield " + cut.key + ", " + cut.through + " : i64, i64");
    }
    k.line("} else {");
    k.line("  scf.yield " + bound + ", " + total + " : i64, i64");
    k.line("}");
    std::string prefixEnd = nucleus + "#0", prefixMass = nucleus + "#1";

    // The draw: the first token whose running mass exceeds u * mass.
    std::string r =
        k.op("arith.mulf " + u + ", " +
             k.op("arith.uitofp " + prefixMass + " : i64 to f64") + " : f64");
    // floor(r) + 1 (r is not negative).
    std::string target =
        k.op("arith.addi " + k.op("arith.fptosi " + r + " : f64 to i64") +
             ", " + k.i64(1) + " : i64");
    target = clamp(target, prefixMass);
    Cut drawn = select(/*mass=*/true, target, prefixEnd);
    k.beginIf(k.cmp("eq", tid, k.index(0)));
    // Nothing with a finite logit to weigh (all -inf or NaN): the lowest id,
    // as the host rule gives.
    std::string weighable =
        k.op("arith.cmpf ogt, " + top + ", " +
             k.f32(-std::numeric_limits<double>::infinity()) + " : f32");
    std::string id = k.select(
        weighable,
        k.op("arith.andi " + drawn.key + ", " + k.i64(0xFFFFFFFF) + " : i64"),
        k.i64(0), "i64");
    k.line("memref.store " + id + ", %token[" + k.index(0) +
           "] : memref<1xi64>");
    k.endIf();
    return k.finish();
  }

private:
  int64_t vocab;
  std::string logitsType;
  KernelText k;
  std::string hist, warpSums, warpMaxes, found, tid, warp, lane, row;
  std::string expScale, top;

  struct Cut {
    std::string key;     // rank key of the token where the target is met
    std::string through; // count or mass up to and including it
  };

  /// The logit of token `c`: NaN ranks last (as -inf) and -0 ties with +0.
  std::string logitAt(const std::string &c) {
    std::string v =
        k.op("memref.load %logits[" + row + ", " + c + "] : " + logitsType);
    std::string isNan = k.op("arith.cmpf uno, " + v + ", " + v + " : f32");
    v = k.select(isNan, k.f32(-std::numeric_limits<double>::infinity()), v,
                 "f32");
    return k.fadd(v, k.f32(0.0));
  }

  /// (order of the logit, best first) << 32 | id, compared unsigned.
  std::string rankKey(const std::string &v, const std::string &c) {
    std::string bits = k.op("arith.bitcast " + v + " : f32 to i32");
    std::string negative = k.cmp("slt", bits, k.i32(0), "i32");
    // Ascending unsigned order of floats, then flipped.
    std::string ascending = k.select(
        negative, k.op("arith.xori " + bits + ", " + k.i32(-1) + " : i32"),
        k.op("arith.ori " + bits + ", " + k.i32(INT32_MIN) + " : i32"), "i32");
    std::string order =
        k.op("arith.xori " + ascending + ", " + k.i32(-1) + " : i32");
    std::string high =
        k.op("arith.shli " + k.op("arith.extui " + order + " : i32 to i64") +
             ", " + k.i64(32) + " : i64");
    std::string id = k.op("arith.index_cast " + c + " : index to i64");
    return k.op("arith.ori " + high + ", " + id + " : i64");
  }

  /// exp((v - top) / temperature) in 2^-40 fixed point.
  std::string weight(const std::string &v) {
    std::string w = k.exp2(k.fmul(k.fsub(v, top), expScale));
    return k.op("arith.fptoui " + k.fmul(w, k.f32(kFixedOne)) +
                " : f32 to i64");
  }

  std::string clamp(const std::string &target, const std::string &limit) {
    std::string t = k.op("arith.minsi " + target + ", " + limit + " : i64");
    return k.op("arith.maxsi " + t + ", " + k.i64(1) + " : i64");
  }

  /// 64-bit shuffles as two 32-bit ones.
  std::string shuffle(const std::string &v, StringRef mode, int64_t offset) {
    std::string lo = k.op("arith.trunci " + v + " : i64 to i32");
    std::string hi =
        k.op("arith.trunci " +
             k.op("arith.shrui " + v + ", " + k.i64(32) + " : i64") +
             " : i64 to i32");
    std::string parts[2];
    for (int i = 0; i < 2; ++i) {
      parts[i] = k.fresh();
      k.line(parts[i] + ", " + k.fresh() + " = gpu.shuffle " + mode.str() +
             " " + (i ? hi : lo) + ", " + k.i32(offset) + ", " + k.i32(32) +
             " : i32");
    }
    std::string wideLo = k.op("arith.extui " + parts[0] + " : i32 to i64");
    std::string wideHi =
        k.op("arith.shli " + k.op("arith.extui " + parts[1] + " : i32 to i64") +
             ", " + k.i64(32) + " : i64");
    return k.op("arith.ori " + wideHi + ", " + wideLo + " : i64");
  }

  /// The sum over the block, in every thread.
  std::string blockSum(const std::string &v) {
    std::string s = v;
    for (int64_t off = 16; off >= 1; off /= 2)
      s = k.op("arith.addi " + s + ", " + shuffle(s, "xor", off) + " : i64");
    k.beginIf(k.cmp("eq", lane, k.index(0)));
    k.line("memref.store " + s + ", " + warpSums + "[" + warp +
           "] : memref<32xi64, 3>");
    k.endIf();
    k.line("gpu.barrier");
    std::string total = k.i64(0);
    for (int64_t w = 0; w < kThreads / 32; ++w)
      total = k.op("arith.addi " + total + ", " +
                   k.op("memref.load " + warpSums + "[" + k.index(w) +
                        "] : memref<32xi64, 3>") +
                   " : i64");
    k.line("gpu.barrier");
    return total;
  }

  /// Radix select: the smallest rank key K among the candidates (keys up
  /// to `bound`) whose running count (or mass) through K reaches `target`,
  /// which must lie in [1, the candidates' total].
  Cut select(bool mass, const std::string &target, const std::string &bound) {
    std::string prefix = k.i64(0), mask = k.i64(0), before = k.i64(0);
    std::string through = before;
    std::string hType = "memref<" + std::to_string(kBins) + "xi64, 3>";
    for (auto [shift, bits] : kPasses) {
      std::string z = k.beginFor(tid, k.index(kBins), k.index(kThreads));
      k.line("memref.store " + k.i64(0) + ", " + hist + "[" + z +
             "] : " + hType);
      k.endFor();
      k.line("gpu.barrier");
      std::string c = k.beginFor(tid, k.index(vocab), k.index(kThreads));
      std::string v = logitAt(c);
      std::string key = rankKey(v, c);
      std::string candidate =
          k.op("arith.andi " + k.cmp("ule", key, bound, "i64") + ", " +
               k.cmp("eq", k.op("arith.andi " + key + ", " + mask + " : i64"),
                     prefix, "i64") +
               " : i1");
      k.beginIf(candidate);
      std::string digit = k.op(
          "arith.index_cast " +
          k.op("arith.andi " +
               k.op("arith.shrui " + key + ", " + k.i64(shift) + " : i64") +
               ", " + k.i64((int64_t(1) << bits) - 1) + " : i64") +
          " : i64 to index");
      std::string q = mass ? weight(v) : k.i64(1);
      k.op("memref.atomic_rmw addi " + q + ", " + hist + "[" + digit +
           "] : (i64, " + hType + ") -> i64");
      k.endIf();
      k.endFor();
      k.line("gpu.barrier");

      // Thread t owns bins 2t and 2t+1: a block-wide exclusive scan of
      // their sums finds the bin where the running total meets the target.
      std::string b0 = k.mul(tid, k.index(2)), b1 = k.add(b0, k.index(1));
      std::string h0 = k.op("memref.load " + hist + "[" + b0 + "] : " + hType);
      std::string h1 = k.op("memref.load " + hist + "[" + b1 + "] : " + hType);
      std::string own = k.op("arith.addi " + h0 + ", " + h1 + " : i64");
      std::string inclusive = own;
      for (int64_t off = 1; off < 32; off *= 2) {
        std::string up = shuffle(inclusive, "up", off);
        std::string valid = k.cmp("uge", lane, k.index(off));
        inclusive = k.op("arith.addi " + inclusive + ", " +
                         k.select(valid, up, k.i64(0), "i64") + " : i64");
      }
      k.beginIf(k.cmp("eq", lane, k.index(31)));
      k.line("memref.store " + inclusive + ", " + warpSums + "[" + warp +
             "] : memref<32xi64, 3>");
      k.endIf();
      k.line("gpu.barrier");
      std::string earlier = k.i64(0);
      for (int64_t w = 0; w < kThreads / 32; ++w) {
        std::string s = k.op("memref.load " + warpSums + "[" + k.index(w) +
                             "] : memref<32xi64, 3>");
        earlier = k.select(k.cmp("ult", k.index(w), warp),
                           k.op("arith.addi " + earlier + ", " + s + " : i64"),
                           earlier, "i64");
      }
      std::string start =
          k.op("arith.addi " + before + ", " +
               k.op("arith.addi " + earlier + ", " +
                    k.op("arith.subi " + inclusive + ", " + own + " : i64") +
                    " : i64") +
               " : i64");
      std::string end0 = k.op("arith.addi " + start + ", " + h0 + " : i64");
      std::string end1 = k.op("arith.addi " + end0 + ", " + h1 + " : i64");
      auto crosses = [&](const std::string &from, const std::string &to) {
        return k.op("arith.andi " + k.cmp("slt", from, target, "i64") + ", " +
                    k.cmp("sle", target, to, "i64") + " : i1");
      };
      auto record = [&](const std::string &bin, const std::string &from,
                        const std::string &to) {
        std::string d = k.op("arith.index_cast " + bin + " : index to i64");
        for (auto [i, x] :
             {std::pair{0, d}, std::pair{1, from}, std::pair{2, to}})
          k.line("memref.store " + x + ", " + found + "[" + k.index(i) +
                 "] : memref<3xi64, 3>");
      };
      k.beginIf(crosses(start, end0));
      record(b0, start, end0);
      k.endIf();
      k.beginIf(crosses(end0, end1));
      record(b1, end0, end1);
      k.endIf();
      k.line("gpu.barrier");
      std::string d = k.op("memref.load " + found + "[" + k.index(0) +
                           "] : memref<3xi64, 3>");
      before = k.op("memref.load " + found + "[" + k.index(1) +
                    "] : memref<3xi64, 3>");
      through = k.op("memref.load " + found + "[" + k.index(2) +
                     "] : memref<3xi64, 3>");
      // Every thread has read the bins and the result before either is
      // rewritten.
      k.line("gpu.barrier");
      prefix = k.op("arith.ori " + prefix + ", " +
                    k.op("arith.shli " + d + ", " + k.i64(shift) + " : i64") +
                    " : i64");
      uint64_t digitMask = ((uint64_t(1) << bits) - 1) << shift;
      mask = k.op("arith.ori " + mask + ", " +
                  k.i64(static_cast<int64_t>(digitMask)) + " : i64");
    }
    return {prefix, through};
  }
};

} // namespace

GpuLaunch mlir::kiln::cuda::writeSampler(int64_t vocab, std::string &text) {
  GpuLaunch launch;
  // Token ids must fit the key's low 22 bits.
  if (vocab >= (int64_t(1) << 22))
    return launch;
  SamplerWriter writer(vocab);
  text += writer.write();
  launch.function = "kiln_sample";
  launch.blockThreads = kThreads;
  return launch;
}
