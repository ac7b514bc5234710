//===- KilnDialect.td - The kiln dialect -------------------*- tablegen -*-===//
//
// The kiln dialect describes a transformer decoder at the level a model
// author thinks in: embedding lookup, norms, projections, RoPE, attention,
// SwiGLU and mixture-of-experts blocks. Weights are never embedded: they are
// function arguments bound to checkpoint tensors by name.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_DIALECT_TD
#define KILN_DIALECT_TD

include "mlir/IR/OpBase.td"

def Kiln_Dialect : Dialect {
  let name = "kiln";
  let cppNamespace = "::mlir::kiln";
  let summary = "Transformer graph dialect of the Kiln compiler";
  let description = [{
    Ops for Llama 4 class decoder graphs on tensors. Activations are
    `tensor<?xNxf32>` (the token dimension is dynamic); weights are function
    arguments carrying a `kiln.weight = "<checkpoint tensor name>"` argument
    attribute; runtime inputs carry `kiln.input = "tokens" | "positions"`.
    See docs/dialect.md.
  }];
  let useDefaultAttributePrinterParser = 1;
  let hasRegionArgAttrVerify = 1;
  let hasOperationAttrVerify = 1;
  let extraClassDeclaration = [{
    /// Argument attribute naming the checkpoint tensor bound to an argument.
    static constexpr ::llvm::StringLiteral getWeightAttrName() {
      return ::llvm::StringLiteral("kiln.weight");
    }
    /// Function attribute marking a kernel function and its kind
    /// (#kiln.kernel<...>).
    static constexpr ::llvm::StringLiteral getKernelAttrName() {
      return ::llvm::StringLiteral("kiln.kernel");
    }
    /// Argument attribute of a weight: the slice a rank holds
    /// (#kiln.shard<...>), in a tensor-parallel graph.
    static constexpr ::llvm::StringLiteral getShardAttrName() {
      return ::llvm::StringLiteral("kiln.shard");
    }
    /// Module attribute: the ranks of a tensor-parallel graph.
    static constexpr ::llvm::StringLiteral getTensorParallelAttrName() {
      return ::llvm::StringLiteral("kiln.tensor_parallel");
    }
    /// Module attribute: the data-parallel attention replicas of a
    /// tensor-parallel graph (each runs its own sequence).
    static constexpr ::llvm::StringLiteral getAttentionReplicasAttrName() {
      return ::llvm::StringLiteral("kiln.attention_replicas");
    }
    /// Module attribute: the pipeline stages of a pipeline-parallel graph.
    static constexpr ::llvm::StringLiteral getPipelineStagesAttrName() {
      return ::llvm::StringLiteral("kiln.pipeline_stages");
    }
    /// Argument attribute of a lowered host kernel: the weight argument
    /// [E, K, N] is read as panels of this many columns, [E, N / p, K, p],
    /// which the runtime lays out at load.
    static constexpr ::llvm::StringLiteral getHostPanelAttrName() {
      return ::llvm::StringLiteral("kiln.host_panel");
    }
    /// Argument attribute naming a runtime input ("tokens" or "positions").
    static constexpr ::llvm::StringLiteral getInputAttrName() {
      return ::llvm::StringLiteral("kiln.input");
    }
  }];
}

class Kiln_Op<string mnemonic, list<Trait> traits = []>
    : Op<Kiln_Dialect, mnemonic, traits>;

#endif // KILN_DIALECT_TD
