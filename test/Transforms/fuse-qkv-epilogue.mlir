// RUN: kiln-opt %s -split-input-file -kiln-fuse-qkv-epilogue | FileCheck %s

// A RoPE layer with QK norm: split, ropes and norms become one epilogue.
// CHECK-LABEL: func.func @rope_qk_norm
// CHECK-SAME: (%[[QKV:.*]]: tensor<?x32xf32>, %[[POS:.*]]: tensor<?xi64>)
// CHECK: %[[Q:.*]], %[[K:.*]], %[[V:.*]] = kiln.qkv_epilogue %[[QKV]], %[[POS]] {inv_freq = array<f64: 1.000000e+00, 5.000000e-01>, num_heads = 4 : i64, num_kv_heads = 2 : i64, qk_norm_epsilon = 1.000000e-05 : f64} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
// CHECK-NEXT: kiln.attention %[[Q]], %[[K]], %[[V]], %[[POS]] {chunk_size = 4 : i64, mask = #kiln.mask<chunked>
// CHECK-NOT: kiln.split
// CHECK-NOT: kiln.rope
// CHECK-NOT: kiln.qk_norm
func.func @rope_qk_norm(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) -> tensor<?x16xf32> {
  %q, %k, %v = kiln.split %qkv : tensor<?x32xf32> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
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

// A NoPE layer: the temperature moves from the attention to the epilogue.
// CHECK-LABEL: func.func @nope_temperature
// CHECK: %[[Q:.*]], %[[K:.*]], %[[V:.*]] = kiln.qkv_epilogue %{{.*}}, %{{.*}} {attn_scale = 1.000000e-01 : f64, floor_scale = 8 : i64, num_heads = 4 : i64, num_kv_heads = 2 : i64}
// CHECK-NEXT: kiln.attention %[[Q]], %[[K]], %[[V]], %{{.*}} {mask = #kiln.mask<causal>, num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 5.000000e-01 : f64}
func.func @nope_temperature(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) -> tensor<?x16xf32> {
  %q, %k, %v = kiln.split %qkv : tensor<?x32xf32> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  %o = kiln.attention %q, %k, %v, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64,
      scale = 0.5 : f64, mask = #kiln.mask<causal>, attn_scale = 0.1 : f64, floor_scale = 8 : i64}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return %o : tensor<?x16xf32>
}

// -----

// q and k rotated with different frequencies cannot share one epilogue.
// CHECK-LABEL: func.func @different_frequencies
// CHECK-NOT: kiln.qkv_epilogue
// CHECK: kiln.split
func.func @different_frequencies(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) -> tensor<?x16xf32> {
  %q, %k, %v = kiln.split %qkv : tensor<?x32xf32> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  %qr = kiln.rope %q, %pos {num_heads = 4 : i64, inv_freq = array<f64: 1.0, 0.5>} : tensor<?x16xf32>, tensor<?xi64>
  %kr = kiln.rope %k, %pos {num_heads = 2 : i64, inv_freq = array<f64: 1.0, 0.25>} : tensor<?x8xf32>, tensor<?xi64>
  %o = kiln.attention %qr, %kr, %v, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64,
      scale = 0.5 : f64, mask = #kiln.mask<causal>}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return %o : tensor<?x16xf32>
}

// -----

// The rotated q is also returned: the rope must stay.
// CHECK-LABEL: func.func @intermediate_escapes
// CHECK-NOT: kiln.qkv_epilogue
func.func @intermediate_escapes(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) -> (tensor<?x16xf32>, tensor<?x16xf32>) {
  %q, %k, %v = kiln.split %qkv : tensor<?x32xf32> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  %qr = kiln.rope %q, %pos {num_heads = 4 : i64, inv_freq = array<f64: 1.0, 0.5>} : tensor<?x16xf32>, tensor<?xi64>
  %kr = kiln.rope %k, %pos {num_heads = 2 : i64, inv_freq = array<f64: 1.0, 0.5>} : tensor<?x8xf32>, tensor<?xi64>
  %o = kiln.attention %qr, %kr, %v, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64,
      scale = 0.5 : f64, mask = #kiln.mask<causal>}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return %o, %qr : tensor<?x16xf32>, tensor<?x16xf32>
}
