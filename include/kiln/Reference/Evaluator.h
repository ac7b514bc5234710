//===- Evaluator.h - Reference evaluator of kiln graphs ---------*- C++ -*-===//
//
// Evaluates a kiln function on the CPU in float32 or float64, weights widened
// exactly from the checkpoint, no intermediate rounding. Every kiln op except
// kiln.attention acts on each token independently, so a sequence can be
// evaluated in steps: each call appends its tokens to a per-attention-op KV
// state (kept in the evaluation precision), and the result equals evaluating
// the whole sequence at once.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_REFERENCE_EVALUATOR_H
#define KILN_REFERENCE_EVALUATOR_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/ArrayRef.h"
#include "llvm/Support/Error.h"

#include <memory>
#include <vector>

namespace kiln {
class Checkpoint;

namespace ref {

enum class Precision { F32, F64 };

class Evaluator {
public:
  virtual ~Evaluator();

  /// Binds the weights of `func` (arguments with `kiln.weight`) from
  /// `checkpoint`, checking names, shapes and dtypes. `func` must have one
  /// "tokens" and one "positions" input and return one 2-D tensor.
  static llvm::Expected<std::unique_ptr<Evaluator>>
  create(mlir::func::FuncOp func, const Checkpoint &checkpoint,
         Precision precision);

  /// Evaluates `tokens` at absolute `positions`, after every token passed to
  /// earlier calls since the last reset(). `result` receives the returned
  /// [tokens, width] tensor, row-major, widened to double.
  virtual llvm::Error run(llvm::ArrayRef<int64_t> tokens,
                          llvm::ArrayRef<int64_t> positions,
                          std::vector<double> &result, int64_t &width) = 0;

  /// Data-parallel attention replicas of the graph (module attribute
  /// kiln.attention_replicas), each running its own sequence; 1 otherwise.
  virtual int64_t numReplicas() const { return 1; }

  /// One step of every replica together: replica d evaluates `tokens[d]` at
  /// `positions[d]` (a replica may have none in a step, not all of them)
  /// and `results[d]` receives its rows. With one replica this is run().
  virtual llvm::Error
  runReplicas(llvm::ArrayRef<std::vector<int64_t>> tokens,
              llvm::ArrayRef<std::vector<int64_t>> positions,
              std::vector<std::vector<double>> &results, int64_t &width);

  /// Forgets every token seen so far.
  virtual void reset() = 0;

  /// Tokens held in the KV state.
  virtual int64_t numCachedTokens() const = 0;
};

/// A tensor passed to or returned by evaluateKernel: float data (weights
/// already widened) or, for index tensors, integers.
struct KernelValue {
  std::vector<int64_t> shape;
  std::vector<double> floats;
  std::vector<int64_t> ints;
};

/// Evaluates one kernel function (from kiln-partition-kernels) on explicit
/// arguments, as a fresh sequence (attention sees only these tokens). Index
/// arguments read by a `kiln.embedding` are its tokens; any other index
/// argument is the positions. Used to check generated kernels one by one.
llvm::Expected<std::vector<KernelValue>>
evaluateKernel(mlir::func::FuncOp kernel, llvm::ArrayRef<KernelValue> args,
               Precision precision);

} // namespace ref
} // namespace kiln

#endif // KILN_REFERENCE_EVALUATOR_H
