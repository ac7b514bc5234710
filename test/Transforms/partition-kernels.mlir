// RUN: kiln-opt %s -split-input-file -kiln-partition-kernels | FileCheck %s

// Two layers of the same shape share their kernels; the GEMM takes its
// epilogue along; weight repacking stays in the graph.
// CHECK-LABEL: func.func @two_layers
// CHECK-SAME: (%[[X:.*]]: tensor<?x16xf32>, %[[W0:.*]]: tensor<24x16xbf16>, %[[W1:.*]]: tensor<24x16xbf16>, %[[D0:.*]]: tensor<16x24xbf16>, %[[D1:.*]]: tensor<16x24xbf16>)
// CHECK: %[[C0:.*]] = kiln.concat %[[W0]], %[[W0]]
// CHECK: %[[H0:.*]] = call @gemm_0(%[[X]], %[[C0]]) : (tensor<?x16xf32>, tensor<48x16xbf16>) -> tensor<?x24xf32>
// CHECK: %[[Z0:.*]] = call @gemm_1(%[[H0]], %[[D0]]) : (tensor<?x24xf32>, tensor<16x24xbf16>) -> tensor<?x16xf32>
// CHECK: %[[R0:.*]] = call @memory_0(%[[X]], %[[Z0]])
// CHECK: %[[C1:.*]] = kiln.concat %[[W1]], %[[W1]]
// CHECK: %[[H1:.*]] = call @gemm_0(%[[R0]], %[[C1]])
// CHECK: %[[Z1:.*]] = call @gemm_1(%[[H1]], %[[D1]])
// CHECK: %[[R1:.*]] = call @memory_0(%[[R0]], %[[Z1]])
// CHECK: return %[[R1]]

// CHECK: func.func private @gemm_0(%{{.*}}: tensor<?x16xf32>, %{{.*}}: tensor<48x16xbf16>) -> tensor<?x24xf32> attributes {kiln.kernel = #kiln.kernel<gemm>}
// CHECK-NEXT: kiln.linear
// CHECK-NEXT: kiln.packed_swiglu
// CHECK-NEXT: return
// CHECK: func.func private @gemm_1({{.*}}) -> tensor<?x16xf32> attributes {kiln.kernel = #kiln.kernel<gemm>}
// CHECK: func.func private @memory_0({{.*}}) -> tensor<?x16xf32> attributes {kiln.kernel = #kiln.kernel<memory>}
// CHECK-NEXT: kiln.add
// CHECK-NOT: func.func private
func.func @two_layers(%x: tensor<?x16xf32>, %w0: tensor<24x16xbf16>, %w1: tensor<24x16xbf16>,
                      %d0: tensor<16x24xbf16>, %d1: tensor<16x24xbf16>) -> tensor<?x16xf32> {
  %c0 = kiln.concat %w0, %w0 {axis = 0 : i64} : tensor<24x16xbf16>, tensor<24x16xbf16> -> tensor<48x16xbf16>
  %gu0 = kiln.linear %x, %c0 : tensor<?x16xf32>, tensor<48x16xbf16> -> tensor<?x48xf32>
  %h0 = kiln.packed_swiglu %gu0 : tensor<?x48xf32> -> tensor<?x24xf32>
  %z0 = kiln.linear %h0, %d0 : tensor<?x24xf32>, tensor<16x24xbf16> -> tensor<?x16xf32>
  %r0 = kiln.add %x, %z0 : tensor<?x16xf32>
  %c1 = kiln.concat %w1, %w1 {axis = 0 : i64} : tensor<24x16xbf16>, tensor<24x16xbf16> -> tensor<48x16xbf16>
  %gu1 = kiln.linear %r0, %c1 : tensor<?x16xf32>, tensor<48x16xbf16> -> tensor<?x48xf32>
  %h1 = kiln.packed_swiglu %gu1 : tensor<?x48xf32> -> tensor<?x24xf32>
  %z1 = kiln.linear %h1, %d1 : tensor<?x24xf32>, tensor<16x24xbf16> -> tensor<?x16xf32>
  %r1 = kiln.add %r0, %z1 : tensor<?x16xf32>
  return %r1 : tensor<?x16xf32>
}

// -----

// Attention, MoE and a GEMM whose result has two users (no epilogue joins).
// CHECK-LABEL: func.func @kinds
// CHECK: call @gemm_0
// CHECK: call @memory_0
// CHECK: call @attention_0
// CHECK: call @moe_0
// CHECK-DAG: func.func private @attention_0({{.*}}attributes {kiln.kernel = #kiln.kernel<attention>}
// CHECK-DAG: func.func private @moe_0({{.*}}attributes {kiln.kernel = #kiln.kernel<moe>}
// CHECK-DAG: func.func private @gemm_0(%{{.*}}: tensor<?x16xf32>, %{{.*}}: tensor<16x16xbf16>) -> tensor<?x16xf32> attributes {kiln.kernel = #kiln.kernel<gemm>}
func.func @kinds(%x: tensor<?x16xf32>, %pos: tensor<?xi64>, %w: tensor<16x16xbf16>,
                 %wr: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>)
    -> (tensor<?x16xf32>, tensor<?x16xf32>) {
  %y = kiln.linear %x, %w : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
  %s = kiln.add %y, %y : tensor<?x16xf32>
  %o = kiln.attention %s, %s, %s, %pos {num_heads = 2 : i64, num_kv_heads = 2 : i64,
      scale = 0.5 : f64, mask = #kiln.mask<causal>}
      : tensor<?x16xf32>, tensor<?x16xf32>, tensor<?x16xf32>, tensor<?xi64>
  %m = kiln.moe %o router %wr experts %gu, %dn {top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  return %m, %y : tensor<?x16xf32>, tensor<?x16xf32>
}

// -----

// The token exchange of data-parallel attention is made of steps between
// kernels: the gather and the scatter stay in the graph around the MoE
// kernel.
// CHECK-LABEL: func.func @token_exchange
// CHECK: %[[G:.*]] = kiln.all_gather
// CHECK-NEXT: %[[M:.*]] = call @moe_0(%[[G]]
// CHECK-NEXT: kiln.reduce_scatter %[[M]] like
module attributes {kiln.tensor_parallel = 2 : i64, kiln.attention_replicas = 2 : i64} {
func.func @token_exchange(%x: tensor<?x16xf32>, %wr: tensor<4x16xbf16>,
                          %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>)
    -> tensor<?x16xf32> {
  %g = kiln.all_gather %x {ranks = 2 : i64, replicas = 2 : i64} : tensor<?x16xf32> -> tensor<?x16xf32>
  %m = kiln.moe %g router %wr experts %gu, %dn {top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  %y = kiln.reduce_scatter %m like %x {ranks = 2 : i64, replicas = 2 : i64} : tensor<?x16xf32> -> tensor<?x16xf32>
  return %y : tensor<?x16xf32>
}
}
