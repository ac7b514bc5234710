//===- Llama4Import.h - Hugging Face Llama 4 -> kiln ------------*- C++ -*-===//
//
// Builds the kiln graph of a Llama 4 text decoder from its configuration and,
// when present, checks every checkpoint tensor's presence, shape and dtype.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_IMPORT_LLAMA4IMPORT_H
#define KILN_IMPORT_LLAMA4IMPORT_H

#include "kiln/Import/Llama4Config.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

#include <string>
#include <vector>

namespace kiln {
class Checkpoint;

/// One weight the graph binds: checkpoint name, shape and storage dtype.
struct Llama4Weight {
  std::string name;
  std::vector<int64_t> shape;
};

/// Every tensor the text decoder of `config` reads, in graph order.
std::vector<Llama4Weight> listLlama4Weights(const Llama4Config &config);

/// Checks the checkpoint's tensors against `config`: presence, shape and a
/// float dtype. Errors name the file and the tensor.
llvm::Error checkLlama4Weights(const Llama4Config &config,
                               const Checkpoint &checkpoint);

/// Builds `func.func @forward(tokens, positions, weights...) -> logits`.
/// Weight element types come from `checkpoint` when it holds weights, else
/// from the config's torch_dtype.
mlir::OwningOpRef<mlir::ModuleOp>
buildLlama4Module(mlir::MLIRContext &context, const Llama4Config &config,
                  const Checkpoint *checkpoint);

/// Reads `<dir>/config.json` and the safetensors files of `dir` (if any),
/// checks them and builds the verified module.
llvm::Expected<mlir::OwningOpRef<mlir::ModuleOp>>
importLlama4Checkpoint(mlir::MLIRContext &context, const std::string &dir);

} // namespace kiln

#endif // KILN_IMPORT_LLAMA4IMPORT_H
