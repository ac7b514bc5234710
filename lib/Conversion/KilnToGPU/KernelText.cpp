//===- KernelText.cpp - Writing GPU kernels as MLIR text ------------------===//

#include "KernelText.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/raw_ostream.h"

#include <cmath>
#include <cstring>
#include <limits>

using namespace mlir::kiln::cuda;

KernelText::KernelText(llvm::StringRef name, llvm::StringRef args,
                       int64_t blockThreads, llvm::StringRef extraAttributes)
    : name(name.str()), args(args.str()) {
  attributes =
      "nvvm.reqntid = array<i32: " + std::to_string(blockThreads) + ", 1, 1>";
  if (!extraAttributes.empty())
    attributes += ", " + extraAttributes.str();
}

std::string KernelText::fresh() { return "%v" + std::to_string(next++); }

std::string KernelText::op(const llvm::Twine &rhs) {
  std::string n = fresh();
  line(n + " = " + rhs);
  return n;
}

void KernelText::line(const llvm::Twine &text) {
  body.append(2 * depth + 2, ' ');
  body += text.str();
  body += '\n';
}

std::string KernelText::constant(const std::string &key,
                                 const llvm::Twine &text) {
  auto it = constants.find(key);
  if (it != constants.end())
    return it->second;
  std::string n = "%c" + std::to_string(constants.size());
  constants[key] = n;
  prologue += "    " + n + " = " + text.str() + "\n";
  return n;
}

std::string KernelText::index(int64_t v) {
  return constant("index" + std::to_string(v),
                  "arith.constant " + std::to_string(v) + " : index");
}
std::string KernelText::i32(int64_t v) {
  return constant("i32" + std::to_string(v),
                  "arith.constant " + std::to_string(v) + " : i32");
}
std::string KernelText::i64(int64_t v) {
  return constant("i64" + std::to_string(v),
                  "arith.constant " + std::to_string(v) + " : i64");
}

static std::string floatLiteral(double v) {
  if (std::isinf(v))
    return v > 0 ? "0x7F800000" : "0xFF800000";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.17g", v);
  std::string s = buffer;
  // MLIR float literals need a decimal point before any exponent.
  if (s.find_first_of(".") == std::string::npos) {
    size_t e = s.find_first_of("eE");
    if (e == std::string::npos)
      s += ".0";
    else
      s.insert(e, ".0");
  }
  return s;
}

std::string KernelText::f32(double v) {
  return constant("f32" + floatLiteral(v),
                  "arith.constant " + floatLiteral(v) + " : f32");
}
std::string KernelText::f64(double v) {
  std::string lit = floatLiteral(v);
  if (std::isinf(v))
    lit = v > 0 ? "0x7FF0000000000000" : "0xFFF0000000000000";
  return constant("f64" + lit, "arith.constant " + lit + " : f64");
}

std::string KernelText::add(const std::string &a, const std::string &b) {
  return op("arith.addi " + a + ", " + b + " : index");
}
std::string KernelText::mul(const std::string &a, const std::string &b) {
  return op("arith.muli " + a + ", " + b + " : index");
}
std::string KernelText::sub(const std::string &a, const std::string &b) {
  return op("arith.subi " + a + ", " + b + " : index");
}
std::string KernelText::div(const std::string &a, const std::string &b) {
  return op("arith.divui " + a + ", " + b + " : index");
}
std::string KernelText::rem(const std::string &a, const std::string &b) {
  return op("arith.remui " + a + ", " + b + " : index");
}
std::string KernelText::cmp(llvm::StringRef pred, const std::string &a,
                            const std::string &b, llvm::StringRef type) {
  return op("arith.cmpi " + pred + ", " + a + ", " + b + " : " + type);
}
std::string KernelText::minIndex(const std::string &a, const std::string &b) {
  return op("arith.minui " + a + ", " + b + " : index");
}

std::string KernelText::fadd(const std::string &a, const std::string &b) {
  return op("arith.addf " + a + ", " + b + " : f32");
}
std::string KernelText::fsub(const std::string &a, const std::string &b) {
  return op("arith.subf " + a + ", " + b + " : f32");
}
std::string KernelText::fmul(const std::string &a, const std::string &b) {
  return op("arith.mulf " + a + ", " + b + " : f32");
}
std::string KernelText::fma(const std::string &a, const std::string &b,
                            const std::string &c) {
  return op("llvm.intr.fma(" + a + ", " + b + ", " + c +
            ") : (f32, f32, f32) -> f32");
}
std::string KernelText::fdiv(const std::string &a, const std::string &b) {
  return op("arith.divf " + a + ", " + b + " : f32");
}
std::string KernelText::fmax(const std::string &a, const std::string &b) {
  return op("arith.maximumf " + a + ", " + b + " : f32");
}
std::string KernelText::select(const std::string &c, const std::string &a,
                               const std::string &b, llvm::StringRef type) {
  return op("arith.select " + c + ", " + a + ", " + b + " : " + type);
}

static std::string unaryPtx(KernelText &k, llvm::StringRef instruction,
                            const std::string &x) {
  // Pure inline assembly: CSE and loop-invariant motion still apply.
  return k.op("llvm.inline_asm \"" + instruction + " $0, $1;\", \"=f,f\" " + x +
              " : (f32) -> f32");
}

std::string KernelText::exp2(const std::string &x) {
  return unaryPtx(*this, "ex2.approx.ftz.f32", x);
}
std::string KernelText::exp(const std::string &x) {
  return exp2(fmul(x, f32(1.4426950408889634)));
}
std::string KernelText::log(const std::string &x) {
  return fmul(unaryPtx(*this, "lg2.approx.ftz.f32", x),
              f32(0.69314718055994531));
}
std::string KernelText::rsqrt(const std::string &x) {
  return unaryPtx(*this, "rsqrt.approx.ftz.f32", x);
}
std::string KernelText::sin(const std::string &x) {
  return unaryPtx(*this, "sin.approx.ftz.f32", x);
}
std::string KernelText::cos(const std::string &x) {
  return unaryPtx(*this, "cos.approx.ftz.f32", x);
}
std::string KernelText::swiglu(const std::string &gate, const std::string &up) {
  std::string negated = op("arith.negf " + gate + " : f32");
  std::string denominator = fadd(f32(1.0), exp(negated));
  return fmul(fdiv(gate, denominator), up);
}

std::string KernelText::warpSum(const std::string &v, int64_t width) {
  std::string acc = v;
  for (int64_t offset = width / 2; offset >= 1; offset /= 2) {
    std::string shuffled = fresh();
    line(shuffled + ", " + fresh() + " = gpu.shuffle xor " + acc + ", " +
         i32(offset) + ", " + i32(32) + " : f32");
    acc = fadd(acc, shuffled);
  }
  return acc;
}

std::string KernelText::warpMax(const std::string &v, int64_t width) {
  std::string acc = v;
  for (int64_t offset = width / 2; offset >= 1; offset /= 2) {
    std::string shuffled = fresh();
    line(shuffled + ", " + fresh() + " = gpu.shuffle xor " + acc + ", " +
         i32(offset) + ", " + i32(32) + " : f32");
    acc = fmax(acc, shuffled);
  }
  return acc;
}

std::string KernelText::blockCombine(const std::string &v, bool max,
                                     const std::string &scratch,
                                     llvm::StringRef scratchType,
                                     int64_t warps) {
  std::string warpValue = max ? warpMax(v) : warpSum(v);
  std::string tidValue = threadId();
  std::string warp = div(tidValue, index(32));
  beginIf(cmp("eq", rem(tidValue, index(32)), index(0)));
  line("memref.store " + warpValue + ", " + scratch + "[" + warp +
       "] : " + scratchType.str());
  endIf();
  line("gpu.barrier");
  std::string total =
      max ? f32(-std::numeric_limits<double>::infinity()) : f32(0.0);
  for (int64_t w = 0; w < warps; ++w) {
    std::string x = op("memref.load " + scratch + "[" + index(w) +
                       "] : " + scratchType.str());
    total = max ? fmax(total, x) : fadd(total, x);
  }
  line("gpu.barrier");
  return total;
}

std::string KernelText::toF32(const std::string &v, llvm::StringRef from) {
  if (from == "f32")
    return v;
  return op("arith.extf " + v + " : " + from + " to f32");
}
std::string KernelText::fromF32(const std::string &v, llvm::StringRef to) {
  if (to == "f32")
    return v;
  return op("arith.truncf " + v + " : f32 to " + to);
}

std::string KernelText::threadId() {
  if (tid.empty()) {
    tid = "%tid";
    prologue += "    %tid = gpu.thread_id x\n";
  }
  return tid;
}
std::string KernelText::blockId(char dim) {
  std::string n = std::string("%bid_") + dim;
  if (prologue.find(n + " =") == std::string::npos)
    prologue += "    " + n + " = gpu.block_id " + dim + "\n";
  return n;
}

std::string KernelText::beginFor(const std::string &lb, const std::string &ub,
                                 const std::string &step,
                                 llvm::StringRef results,
                                 llvm::StringRef carried) {
  std::string iv = fresh();
  std::string head;
  if (!results.empty())
    head += results.str() + " = ";
  head += "scf.for " + iv + " = " + lb + " to " + ub + " step " + step;
  if (!carried.empty()) {
    // carried: "%a = %x, %b = %y : f32, f32"
    auto [names, types] = carried.split(" : ");
    head += " iter_args(" + names.str() + ") -> (" + types.str() + ")";
  }
  line(head + " {");
  ++depth;
  return iv;
}

void KernelText::endFor(llvm::StringRef yielded) {
  if (!yielded.empty())
    line("scf.yield " + yielded);
  --depth;
  line("}");
}

void KernelText::beginIf(const std::string &cond) {
  line("scf.if " + cond + " {");
  ++depth;
}
void KernelText::beginElse() {
  --depth;
  line("} else {");
  ++depth;
}
void KernelText::endIf() {
  --depth;
  line("}");
}

std::string KernelText::workgroup(llvm::StringRef memrefType) {
  std::string n = "%wg" + std::to_string(workgroupTypes.size());
  workgroupTypes.push_back(memrefType.str());
  return n;
}

std::string KernelText::finish() {
  std::string text = "  gpu.func @" + name + "(" + args + ")";
  if (!workgroupTypes.empty()) {
    text += " workgroup(";
    // 16-byte aligned, as 16-byte vector accesses and cp.async need (the
    // lowering would otherwise align a buffer to its element only).
    for (size_t i = 0; i < workgroupTypes.size(); ++i)
      text += (i ? ", %wg" : "%wg") + std::to_string(i) + " : " +
              workgroupTypes[i] + " {llvm.align = 16 : i64}";
    text += ")";
  }
  text += " kernel attributes {" + attributes + "} {\n";
  text += prologue + body + "    gpu.return\n  }\n";
  return text;
}

std::string mlir::kiln::cuda::memrefOf(llvm::StringRef element,
                                       llvm::ArrayRef<int64_t> shape) {
  std::string text = "memref<";
  for (size_t d = 0; d < shape.size(); ++d)
    text +=
        (d == 0 || shape[d] < 0 ? std::string("?") : std::to_string(shape[d])) +
        "x";
  return text + element.str() + ">";
}
