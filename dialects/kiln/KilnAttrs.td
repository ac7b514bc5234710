//===- KilnAttrs.td - Attributes of the kiln dialect -------*- tablegen -*-===//
//
// Enumerations and attributes shared by kiln ops.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_ATTRS_TD
#define KILN_ATTRS_TD

include "dialects/kiln/KilnDialect.td"
include "mlir/IR/EnumAttr.td"

def Kiln_MaskCausal : I32EnumAttrCase<"Causal", 0, "causal">;
def Kiln_MaskChunked : I32EnumAttrCase<"Chunked", 1, "chunked">;

def Kiln_MaskKind : I32EnumAttr<"MaskKind", "attention mask kind",
                                [Kiln_MaskCausal, Kiln_MaskChunked]> {
  let cppNamespace = "::mlir::kiln";
  let genSpecializedAttr = 0;
}

// Prints as `#kiln.mask<causal>` / `#kiln.mask<chunked>`.
def Kiln_MaskKindAttr : EnumAttr<Kiln_Dialect, Kiln_MaskKind, "mask"> {
  let assemblyFormat = "`<` $value `>`";
}

def Kiln_KernelMemory : I32EnumAttrCase<"Memory", 0, "memory">;
def Kiln_KernelGemm : I32EnumAttrCase<"Gemm", 1, "gemm">;
def Kiln_KernelAttention : I32EnumAttrCase<"Attention", 2, "attention">;
def Kiln_KernelMoe : I32EnumAttrCase<"Moe", 3, "moe">;
def Kiln_KernelRouter : I32EnumAttrCase<"Router", 4, "router">;
def Kiln_KernelGroupedGemm
    : I32EnumAttrCase<"GroupedGemm", 5, "grouped_gemm">;

def Kiln_KernelKind
    : I32EnumAttr<"KernelKind", "what a partitioned kernel computes",
                  [Kiln_KernelMemory, Kiln_KernelGemm, Kiln_KernelAttention,
                   Kiln_KernelMoe, Kiln_KernelRouter,
                   Kiln_KernelGroupedGemm]> {
  let cppNamespace = "::mlir::kiln";
  let genSpecializedAttr = 0;
}

// The `kiln.kernel` attribute of a kernel function (kiln-partition-kernels):
// `#kiln.kernel<gemm>`. Code generators dispatch on it with a switch.
def Kiln_KernelKindAttr : EnumAttr<Kiln_Dialect, Kiln_KernelKind, "kernel"> {
  let assemblyFormat = "`<` $value `>`";
}

// The `kiln.shard` argument attribute of a weight in a tensor-parallel graph
// (kiln-shard-tensor-parallel): which slice of the checkpoint tensor a rank
// holds. Dimension `dim` of the checkpoint tensor is viewed as
// [groups, parts, block]; rank r of R holds block p of every group, so the
// argument's extent along `dim` is groups * block. p is r * parts / R
// (`stride` 0) or (r / stride) mod parts. `parts` is R for a plain split and
// fewer when ranks share a slice (KV heads when there are fewer than ranks;
// routed experts split into expert-parallel groups); `groups` is 2 for
// packed [gate | up] weights; `stride` 1 splits within an expert-parallel
// group. A weight split along two dimensions carries an array of two.
def Kiln_ShardAttr : AttrDef<Kiln_Dialect, "Shard"> {
  let mnemonic = "shard";
  let summary = "the slice of a checkpoint tensor one rank holds";
  let parameters = (ins "int64_t":$dim, "int64_t":$parts,
                        DefaultValuedParameter<"int64_t", "1">:$groups,
                        DefaultValuedParameter<"int64_t", "0">:$stride);
  let assemblyFormat = "`<` struct(params) `>`";
  let genVerifyDecl = 1;
}

#endif // KILN_ATTRS_TD
