//===- KernelText.h - Writing GPU kernels as MLIR text ----------*- C++ -*-===//
//
// The sm_90a kernels are written as MLIR text in the gpu, nvgpu, nvvm, scf,
// arith, memref and vector dialects and parsed into the kernel module. Text
// keeps each generator close to the IR it produces (the shape of a kernel can
// be read off the generator), and the parser verifies every op. The helper
// hands out fresh SSA names and nests regions; the generators decide
// everything else from the kernel's shapes.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_LIB_CONVERSION_KILNTOGPU_KERNELTEXT_H
#define KILN_LIB_CONVERSION_KILNTOGPU_KERNELTEXT_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/ADT/Twine.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mlir::kiln::cuda {

/// One gpu.func being written.
class KernelText {
public:
  /// `args` are the printed argument list ("%a: memref<?xf32>, ...").
  KernelText(llvm::StringRef name, llvm::StringRef args, int64_t blockThreads,
             llvm::StringRef extraAttributes = "");

  /// `%vN = rhs`, returning "%vN".
  std::string op(const llvm::Twine &rhs);
  /// A line without a result.
  void line(const llvm::Twine &text);

  std::string index(int64_t v);
  std::string i32(int64_t v);
  std::string i64(int64_t v);
  std::string f32(double v);
  std::string f64(double v);

  // Index arithmetic.
  std::string add(const std::string &a, const std::string &b);
  std::string mul(const std::string &a, const std::string &b);
  std::string sub(const std::string &a, const std::string &b);
  std::string div(const std::string &a, const std::string &b);
  std::string rem(const std::string &a, const std::string &b);
  std::string cmp(llvm::StringRef pred, const std::string &a,
                  const std::string &b, llvm::StringRef type = "index");
  std::string minIndex(const std::string &a, const std::string &b);

  // f32 arithmetic.
  std::string fadd(const std::string &a, const std::string &b);
  std::string fsub(const std::string &a, const std::string &b);
  std::string fmul(const std::string &a, const std::string &b);
  std::string fdiv(const std::string &a, const std::string &b);
  /// a * b + c, rounded once (arith keeps mulf and addf apart).
  std::string fma(const std::string &a, const std::string &b,
                  const std::string &c);
  std::string fmax(const std::string &a, const std::string &b);
  std::string select(const std::string &c, const std::string &a,
                     const std::string &b, llvm::StringRef type);
  /// 2^x with the hardware approximation (no libdevice needed).
  std::string exp2(const std::string &x);
  /// e^x as 2^(x log2 e).
  std::string exp(const std::string &x);
  /// Natural log through lg2.approx.
  std::string log(const std::string &x);
  std::string rsqrt(const std::string &x);
  std::string sin(const std::string &x);
  std::string cos(const std::string &x);
  /// x / (1 + e^-x) * u, as the reference writes SwiGLU.
  std::string swiglu(const std::string &gate, const std::string &up);
  /// Sum over the `width` lanes of each aligned lane group (xor butterfly).
  std::string warpSum(const std::string &v, int64_t width = 32);
  std::string warpMax(const std::string &v, int64_t width = 32);
  /// `v` summed (or with `max`, maxed) over the block's `warps` warps, in
  /// every thread, through `scratch` (a workgroup memref<Nxf32, 3>, N >=
  /// warps); ends on a barrier, so the scratch may be reused.
  std::string blockCombine(const std::string &v, bool max,
                           const std::string &scratch,
                           llvm::StringRef scratchType, int64_t warps);

  /// Widens a loaded float to f32 / narrows an f32 for a store.
  std::string toF32(const std::string &v, llvm::StringRef from);
  std::string fromF32(const std::string &v, llvm::StringRef to);

  std::string threadId();
  std::string blockId(char dim);

  /// `scf.for %iv = lb to ub step s iter_args(...)`: returns the induction
  /// variable; the iter_args are named by `carried` ("%acc = %init : f32").
  std::string beginFor(const std::string &lb, const std::string &ub,
                       const std::string &step, llvm::StringRef results = "",
                       llvm::StringRef carried = "");
  void endFor(llvm::StringRef yielded = "");
  void beginIf(const std::string &cond);
  void beginElse();
  void endIf();
  /// A fresh name not bound yet (for iter_args and region results).
  std::string fresh();

  /// Workgroup (shared) memory declared on the function.
  std::string workgroup(llvm::StringRef memrefType);

  std::string finish();

private:
  std::string name, args, attributes;
  std::vector<std::string> workgroupTypes;
  std::string prologue, body, tid;
  unsigned next = 0;
  unsigned depth = 1;
  std::map<std::string, std::string> constants;
  std::string constant(const std::string &key, const llvm::Twine &text);
};

/// A memref of `element` with every dimension dynamic except the static
/// ones of `shape` past the first (the row count is the step's).
std::string memrefOf(llvm::StringRef element, llvm::ArrayRef<int64_t> shape);

} // namespace mlir::kiln::cuda

#endif // KILN_LIB_CONVERSION_KILNTOGPU_KERNELTEXT_H
