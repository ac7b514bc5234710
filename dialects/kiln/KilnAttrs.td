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

#endif // KILN_ATTRS_TD
