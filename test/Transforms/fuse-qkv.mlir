// RUN: kiln-opt %s -split-input-file -kiln-fuse-qkv | FileCheck %s

// CHECK-LABEL: func.func @rope_layer
// CHECK-SAME: (%[[H:.*]]: tensor<?x16xf32>, %[[POS:.*]]: tensor<?xi64>, %[[WQ:.*]]: tensor<16x16xbf16>, %[[WK:.*]]: tensor<8x16xbf16>, %[[WV:.*]]: tensor<8x16xbf16>)
// CHECK: %[[W:.*]] = kiln.concat %[[WQ]], %[[WK]], %[[WV]] {axis = 0 : i64} : tensor<16x16xbf16>, tensor<8x16xbf16>, tensor<8x16xbf16> -> tensor<32x16xbf16>
// CHECK-NEXT: %[[QKV:.*]] = kiln.linear %[[H]], %[[W]] : tensor<?x16xf32>, tensor<32x16xbf16> -> tensor<?x32xf32>
// CHECK-NEXT: %[[S:.*]]:3 = kiln.split %[[QKV]] : tensor<?x32xf32> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
// CHECK-NOT: kiln.linear
// CHECK: %[[QR:.*]] = kiln.rope %[[S]]#0
// CHECK: %[[KR:.*]] = kiln.rope %[[S]]#1
// CHECK: %[[QN:.*]] = kiln.qk_norm %[[QR]]
// CHECK: %[[KN:.*]] = kiln.qk_norm %[[KR]]
// CHECK: kiln.attention %[[QN]], %[[KN]], %[[S]]#2, %[[POS]]
func.func @rope_layer(%h: tensor<?x16xf32>, %pos: tensor<?xi64>, %wq: tensor<16x16xbf16>,
                      %wk: tensor<8x16xbf16>, %wv: tensor<8x16xbf16>) -> tensor<?x16xf32> {
  %q = kiln.linear %h, %wq : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
  %k = kiln.linear %h, %wk : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %v = kiln.linear %h, %wv : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %qr = kiln.rope %q, %pos {num_heads = 4 : i64, inv_freq = array<f64: 1.0, 0.5>} : tensor<?x16xf32>, tensor<?xi64>
  %kr = kiln.rope %k, %pos {num_heads = 2 : i64, inv_freq = array<f64: 1.0, 0.5>} : tensor<?x8xf32>, tensor<?xi64>
  %qn = kiln.qk_norm %qr {num_heads = 4 : i64, epsilon = 1.0e-05 : f64} : tensor<?x16xf32>
  %kn = kiln.qk_norm %kr {num_heads = 2 : i64, epsilon = 1.0e-05 : f64} : tensor<?x8xf32>
  %o = kiln.attention %qn, %kn, %v, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64,
      scale = 0.5 : f64, mask = #kiln.mask<chunked>, chunk_size = 4 : i64}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return %o : tensor<?x16xf32>
}

// -----

// Projections of different inputs are left alone.
// CHECK-LABEL: func.func @different_inputs
// CHECK-NOT: kiln.concat
// CHECK-COUNT-3: kiln.linear
func.func @different_inputs(%h: tensor<?x16xf32>, %g: tensor<?x16xf32>, %pos: tensor<?xi64>,
                            %wq: tensor<16x16xbf16>, %wk: tensor<8x16xbf16>, %wv: tensor<8x16xbf16>) -> tensor<?x16xf32> {
  %q = kiln.linear %h, %wq : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
  %k = kiln.linear %g, %wk : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %v = kiln.linear %h, %wv : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %o = kiln.attention %q, %k, %v, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64,
      scale = 0.5 : f64, mask = #kiln.mask<causal>}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return %o : tensor<?x16xf32>
}

// -----

// Weights of different element types cannot be concatenated.
// CHECK-LABEL: func.func @mixed_weight_types
// CHECK-NOT: kiln.concat
func.func @mixed_weight_types(%h: tensor<?x16xf32>, %pos: tensor<?xi64>, %wq: tensor<16x16xbf16>,
                              %wk: tensor<8x16xf32>, %wv: tensor<8x16xbf16>) -> tensor<?x16xf32> {
  %q = kiln.linear %h, %wq : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
  %k = kiln.linear %h, %wk : tensor<?x16xf32>, tensor<8x16xf32> -> tensor<?x8xf32>
  %v = kiln.linear %h, %wv : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %o = kiln.attention %q, %k, %v, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64,
      scale = 0.5 : f64, mask = #kiln.mask<causal>}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return %o : tensor<?x16xf32>
}
