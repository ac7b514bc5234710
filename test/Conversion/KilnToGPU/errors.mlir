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

// -----

// sm_90a engines are not tensor-parallel yet: an expert-parallel route is
// refused by name.
module {
  func.func private @router_0(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %rank: tensor<1xi64>)
      -> (tensor<?xi64>, tensor<3xi64>, tensor<?xf32>) attributes {kiln.kernel = #kiln.kernel<router>} {
    // expected-error @+1 {{'kiln.moe_route' op is expert-parallel; sm_90a engines are not tensor-parallel yet}}
    %idx, %off, %g = kiln.moe_route %u, %r rank %rank {expert_groups = 2 : i64, ranks = 2 : i64, top_k = 1 : i64}
        : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<3xi64>, tensor<?xf32>
    return %idx, %off, %g : tensor<?xi64>, tensor<3xi64>, tensor<?xf32>
  }
  func.func @forward(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %rank: tensor<1xi64>) -> tensor<3xi64> {
    %0:3 = call @router_0(%u, %r, %rank) : (tensor<?x16xf32>, tensor<4x16xbf16>, tensor<1xi64>) -> (tensor<?xi64>, tensor<3xi64>, tensor<?xf32>)
    return %0#1 : tensor<3xi64>
  }
}
