// RUN: kiln-opt %s --kiln-convert-kernels-to-gpu -split-input-file -verify-diagnostics

// The pass needs the graph that launches the kernels.
// expected-error @+1 {{no graph function to compile}}
module {
}

// -----

// An undecomposed MoE has no sm_90a generator.
module {
  // expected-error @+1 {{no sm_90a code generator for an undecomposed MoE kernel (run kiln-decompose-moe first)}}
  func.func private @moe_0(%x: tensor<?x16xf32>) -> tensor<?x16xf32> attributes {kiln.kernel = #kiln.kernel<moe>} {
    return %x : tensor<?x16xf32>
  }
  func.func @forward(%x: tensor<?x16xf32>) -> tensor<?x16xf32> {
    %0 = call @moe_0(%x) : (tensor<?x16xf32>) -> tensor<?x16xf32>
    return %0 : tensor<?x16xf32>
  }
}
