// RUN: kiln-opt %s | kiln-opt | FileCheck %s
// RUN: kiln-opt %s -mlir-print-op-generic | kiln-opt | FileCheck %s

// CHECK-LABEL: func.func @decoder_layer
// CHECK-SAME: {kiln.input = "tokens"}
// CHECK-SAME: {kiln.weight = "model.embed_tokens.weight"}
func.func @decoder_layer(
    %tokens: tensor<?xi32> {kiln.input = "tokens"},
    %pos: tensor<?xi64> {kiln.input = "positions"},
    %emb: tensor<32x16xbf16> {kiln.weight = "model.embed_tokens.weight"},
    %ln: tensor<16xbf16> {kiln.weight = "model.layers.0.input_layernorm.weight"},
    %wq: tensor<16x16xbf16> {kiln.weight = "model.layers.0.self_attn.q_proj.weight"},
    %wk: tensor<8x16xbf16> {kiln.weight = "model.layers.0.self_attn.k_proj.weight"},
    %wv: tensor<8x16xbf16> {kiln.weight = "model.layers.0.self_attn.v_proj.weight"},
    %wr: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>,
    %sg: tensor<12x16xbf16>, %su: tensor<12x16xbf16>, %sd: tensor<16x12xbf16>)
    -> tensor<?x16xf32> {
  // CHECK: kiln.embedding %{{.*}}[%{{.*}}] : tensor<32x16xbf16>, tensor<?xi32> -> tensor<?x16xf32>
  %x = kiln.embedding %emb[%tokens] : tensor<32x16xbf16>, tensor<?xi32> -> tensor<?x16xf32>
  // CHECK: kiln.rms_norm %{{.*}}, %{{.*}} {epsilon = 1.000000e-05 : f64}
  %h = kiln.rms_norm %x, %ln {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  // CHECK: kiln.linear
  %q = kiln.linear %h, %wq : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
  %k = kiln.linear %h, %wk : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %v = kiln.linear %h, %wv : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  // CHECK: kiln.rope %{{.*}}, %{{.*}} {inv_freq = array<f64: 1.000000e+00, 1.250000e-01>, num_heads = 4 : i64}
  %qr = kiln.rope %q, %pos {num_heads = 4 : i64, inv_freq = array<f64: 1.0, 0.125>} : tensor<?x16xf32>, tensor<?xi64>
  %kr = kiln.rope %k, %pos {num_heads = 2 : i64, inv_freq = array<f64: 1.0, 0.125>} : tensor<?x8xf32>, tensor<?xi64>
  // CHECK: kiln.qk_norm %{{.*}} {epsilon = 1.000000e-05 : f64, num_heads = 4 : i64} : tensor<?x16xf32>
  %qn = kiln.qk_norm %qr {num_heads = 4 : i64, epsilon = 1.0e-05 : f64} : tensor<?x16xf32>
  %kn = kiln.qk_norm %kr {num_heads = 2 : i64, epsilon = 1.0e-05 : f64} : tensor<?x8xf32>
  // CHECK: kiln.attention {{.*}}chunk_size = 4 : i64, mask = #kiln.mask<chunked>
  %o = kiln.attention %qn, %kn, %v, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64,
      scale = 0.5 : f64, mask = #kiln.mask<chunked>, chunk_size = 4 : i64}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  // CHECK: kiln.attention {{.*}}attn_scale = 1.000000e-01 : f64, floor_scale = 8 : i64, mask = #kiln.mask<causal>
  %o2 = kiln.attention %q, %k, %v, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64,
      scale = 0.5 : f64, mask = #kiln.mask<causal>, attn_scale = 0.1 : f64, floor_scale = 8 : i64}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  // CHECK: kiln.add %{{.*}}, %{{.*}} : tensor<?x16xf32>
  %r = kiln.add %x, %o : tensor<?x16xf32>
  %r2 = kiln.add %r, %o2 : tensor<?x16xf32>
  // CHECK: kiln.moe %{{.*}} router %{{.*}} experts %{{.*}}, %{{.*}} shared %{{.*}}, %{{.*}}, %{{.*}} {top_k = 1 : i64}
  %m = kiln.moe %r2 router %wr experts %gu, %dn shared %sg, %su, %sd {top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>,
        tensor<12x16xbf16>, tensor<12x16xbf16>, tensor<16x12xbf16>
  // CHECK: kiln.moe %{{.*}} router %{{.*}} experts %{{.*}}, %{{.*}} {top_k = 2 : i64} :
  %m2 = kiln.moe %m router %wr experts %gu, %dn {top_k = 2 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  %g = kiln.linear %m2, %sg : tensor<?x16xf32>, tensor<12x16xbf16> -> tensor<?x12xf32>
  // CHECK: kiln.swiglu %{{.*}}, %{{.*}} : tensor<?x12xf32>
  %s = kiln.swiglu %g, %g : tensor<?x12xf32>
  %y = kiln.linear %s, %sd : tensor<?x12xf32>, tensor<16x12xbf16> -> tensor<?x16xf32>
  return %y : tensor<?x16xf32>
}

// CHECK-LABEL: func.func @fused_forms
func.func @fused_forms(%x: tensor<?x16xf32>, %r: tensor<?x16xf32>, %ln: tensor<16xbf16>,
                       %wq: tensor<16x16xbf16>, %wk: tensor<8x16xbf16>)
    -> (tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x4xf32>) {
  // CHECK: %[[S:.*]], %[[N:.*]] = kiln.add_rms_norm %{{.*}}, %{{.*}}, %{{.*}} {epsilon = 1.000000e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  %s, %n = kiln.add_rms_norm %x, %r, %ln {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  // CHECK: kiln.concat %{{.*}}, %{{.*}} {axis = 0 : i64} : tensor<16x16xbf16>, tensor<8x16xbf16> -> tensor<24x16xbf16>
  %w = kiln.concat %wq, %wk {axis = 0 : i64} : tensor<16x16xbf16>, tensor<8x16xbf16> -> tensor<24x16xbf16>
  %qk = kiln.linear %n, %w : tensor<?x16xf32>, tensor<24x16xbf16> -> tensor<?x24xf32>
  // CHECK: kiln.split %{{.*}} : tensor<?x24xf32> -> tensor<?x16xf32>, tensor<?x8xf32>
  %q, %k = kiln.split %qk : tensor<?x24xf32> -> tensor<?x16xf32>, tensor<?x8xf32>
  // CHECK: kiln.packed_swiglu %{{.*}} : tensor<?x8xf32> -> tensor<?x4xf32>
  %h = kiln.packed_swiglu %k : tensor<?x8xf32> -> tensor<?x4xf32>
  %y = kiln.add %q, %s : tensor<?x16xf32>
  return %y, %k, %h : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x4xf32>
}

// CHECK-LABEL: func.func @qkv_epilogue
// CHECK: kiln.qkv_epilogue %{{.*}}, %{{.*}} {attn_scale = 1.000000e-01 : f64, floor_scale = 8 : i64, inv_freq = array<f64: 1.000000e+00, 5.000000e-01>, num_heads = 4 : i64, num_kv_heads = 2 : i64, qk_norm_epsilon = 1.000000e-05 : f64} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
func.func @qkv_epilogue(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) -> tensor<?x16xf32> {
  %q, %k, %v = kiln.qkv_epilogue %qkv, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64,
      inv_freq = array<f64: 1.0, 0.5>, qk_norm_epsilon = 1.0e-05 : f64,
      attn_scale = 0.1 : f64, floor_scale = 8 : i64}
      : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  return %q : tensor<?x16xf32>
}

// CHECK-LABEL: func.func @decomposed_moe
func.func @decomposed_moe(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>,
                          %dn: tensor<4x12x16xbf16>, %shared: tensor<?x16xf32>) -> tensor<?x16xf32> {
  // CHECK: kiln.moe_route %{{.*}}, %{{.*}} {top_k = 2 : i64} : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<5xi64>, tensor<?xf32>
  %idx, %off, %g = kiln.moe_route %u, %r {top_k = 2 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<5xi64>, tensor<?xf32>
  // CHECK: kiln.expert_gate_up
  %h = kiln.expert_gate_up %u, %idx, %off, %g, %gu
      : tensor<?x16xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<4x16x24xbf16> -> tensor<?x12xf32>
  // CHECK: kiln.expert_down
  %y = kiln.expert_down %h, %idx, %off, %dn, %shared
      : tensor<?x12xf32>, tensor<?xi64>, tensor<5xi64>, tensor<4x12x16xbf16>, tensor<?x16xf32>
  return %y : tensor<?x16xf32>
}

// A tensor-parallel graph: a rank's weight slice and the all-reduce.
// CHECK: module attributes {kiln.tensor_parallel = 4 : i64}
// CHECK-LABEL: func.func @tensor_parallel
// CHECK-SAME: kiln.shard = #kiln.shard<dim = 2, parts = 4, groups = 2>
// CHECK: kiln.all_reduce %{{.*}} {ranks = 4 : i64} : tensor<?x8xf32>
module attributes {kiln.tensor_parallel = 4 : i64} {
func.func @tensor_parallel(%x: tensor<?x8xf32>, %w: tensor<4x8x6xbf16> {kiln.weight = "w", kiln.shard = #kiln.shard<dim = 2, parts = 4, groups = 2>}) -> tensor<?x8xf32> {
  %y = kiln.all_reduce %x {ranks = 4 : i64} : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// The all-to-all exchange of a MoE block: 2 replicas over 4 ranks, 4
// experts in 2 groups; the received pairs' experts, one output row a pair.
// CHECK-LABEL: func.func @token_all_to_all
// CHECK: kiln.token_dispatch %{{.*}} rank %{{.*}} {expert_groups = 2 : i64, ranks = 4 : i64, replicas = 2 : i64} : (tensor<?x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<1xi64>) -> (tensor<?x8xf32>, tensor<?xi64>, tensor<3xi64>, tensor<?xf32>)
// CHECK: kiln.expert_down_pairs %{{.*}} : tensor<?x6xf32>, tensor<3xi64>, tensor<2x6x8xbf16> -> tensor<?x8xf32>
// CHECK: kiln.token_combine
module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 2 : i64} {
func.func @token_all_to_all(%u: tensor<?x8xf32>, %idx: tensor<?xi64>, %off: tensor<5xi64>, %g: tensor<?xf32>,
                            %rank: tensor<1xi64>, %gu: tensor<2x8x12xbf16>, %dn: tensor<2x6x8xbf16>) -> tensor<?x8xf32> {
  %rows, %pairs, %roff, %rg = kiln.token_dispatch %u, %idx, %off, %g rank %rank {ranks = 4 : i64, replicas = 2 : i64, expert_groups = 2 : i64}
      : (tensor<?x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<1xi64>) -> (tensor<?x8xf32>, tensor<?xi64>, tensor<3xi64>, tensor<?xf32>)
  %h = kiln.expert_gate_up %rows, %pairs, %roff, %rg, %gu
      : tensor<?x8xf32>, tensor<?xi64>, tensor<3xi64>, tensor<?xf32>, tensor<2x8x12xbf16> -> tensor<?x6xf32>
  %o = kiln.expert_down_pairs %h, %roff, %dn : tensor<?x6xf32>, tensor<3xi64>, tensor<2x6x8xbf16> -> tensor<?x8xf32>
  %y = kiln.token_combine %o, %u, %idx, %off rank %rank {ranks = 4 : i64, replicas = 2 : i64, expert_groups = 2 : i64}
      : (tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<1xi64>) -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// A fused all-reduce: the 4 ranks' partials gathered (all-reduced above 16
// rows per rank) and summed by the residual add + norm.
// CHECK-LABEL: func.func @fused_all_reduce
// CHECK: %[[P:.*]] = kiln.gather_partials %{{.*}} {max_rows = 16 : i64, ranks = 4 : i64} : tensor<?x8xf32>
// CHECK: kiln.add_rms_norm %[[P]], %{{.*}}, %{{.*}} {epsilon = 1.000000e-05 : f64, partials = 4 : i64} : tensor<?x8xf32>, tensor<8xbf16>
module attributes {kiln.tensor_parallel = 4 : i64} {
func.func @fused_all_reduce(%x: tensor<?x8xf32>, %r: tensor<?x8xf32>, %w: tensor<8xbf16>) -> tensor<?x8xf32> {
  %p = kiln.gather_partials %x {ranks = 4 : i64, max_rows = 16 : i64} : tensor<?x8xf32>
  %s, %h = kiln.add_rms_norm %p, %r, %w {epsilon = 1.0e-05 : f64, partials = 4 : i64} : tensor<?x8xf32>, tensor<8xbf16>
  return %h : tensor<?x8xf32>
}
}

// Data-parallel attention: 2 replicas of 2 ranks; the MoE block's rows
// gathered from both replicas and scattered back, attention all-reduced
// within a replica.
// CHECK: module attributes {kiln.attention_replicas = 2 : i64, kiln.tensor_parallel = 4 : i64}
// CHECK-LABEL: func.func @attention_replicas
// CHECK: %[[A:.*]] = kiln.all_reduce %{{.*}} {ranks = 2 : i64} : tensor<?x8xf32>
// CHECK: %[[G:.*]] = kiln.all_gather %[[A]] {ranks = 4 : i64, replicas = 2 : i64} : tensor<?x8xf32> -> tensor<?x8xf32>
// CHECK: kiln.reduce_scatter %[[G]] like %[[A]] {ranks = 4 : i64, replicas = 2 : i64} : tensor<?x8xf32> -> tensor<?x8xf32>
module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 2 : i64} {
func.func @attention_replicas(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %a = kiln.all_reduce %x {ranks = 2 : i64} : tensor<?x8xf32>
  %g = kiln.all_gather %a {ranks = 4 : i64, replicas = 2 : i64} : tensor<?x8xf32> -> tensor<?x8xf32>
  %y = kiln.reduce_scatter %g like %a {ranks = 4 : i64, replicas = 2 : i64} : tensor<?x8xf32> -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// Expert parallelism: a weight split along two dimensions, the rank input,
// and the expert-parallel MoE block and route (2 of 4 experts per group).
// CHECK-LABEL: func.func @expert_parallel
// CHECK-SAME: kiln.shard = [#kiln.shard<dim = 0, parts = 2>, #kiln.shard<dim = 2, parts = 2, groups = 2, stride = 1>]
// CHECK-SAME: %[[RANK:[^:]*]]: tensor<1xi64> {kiln.input = "rank"}
// CHECK: kiln.moe %{{.*}} router %{{.*}} experts %{{.*}}, %{{.*}} rank %[[RANK]] {expert_groups = 2 : i64, ranks = 4 : i64, top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<2x16x12xbf16>, tensor<2x6x16xbf16>
// CHECK: kiln.moe_route %{{.*}}, %{{.*}} rank %[[RANK]] {expert_groups = 2 : i64, ranks = 4 : i64, top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<3xi64>, tensor<?xf32>
module attributes {kiln.tensor_parallel = 4 : i64} {
func.func @expert_parallel(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16> {kiln.weight = "router"},
    %gu: tensor<2x16x12xbf16> {kiln.weight = "gate_up", kiln.shard = [#kiln.shard<dim = 0, parts = 2>, #kiln.shard<dim = 2, parts = 2, groups = 2, stride = 1>]},
    %dn: tensor<2x6x16xbf16> {kiln.weight = "down", kiln.shard = [#kiln.shard<dim = 0, parts = 2>, #kiln.shard<dim = 1, parts = 2, stride = 1>]},
    %rank: tensor<1xi64> {kiln.input = "rank"}) -> tensor<?x16xf32> {
  %y = kiln.moe %x router %r experts %gu, %dn rank %rank {expert_groups = 2 : i64, ranks = 4 : i64, top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<2x16x12xbf16>, tensor<2x6x16xbf16>
  %idx, %off, %g = kiln.moe_route %x, %r rank %rank {expert_groups = 2 : i64, ranks = 4 : i64, top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<3xi64>, tensor<?xf32>
  return %y : tensor<?x16xf32>
}
}

// A pipeline of two stages: the value sent to stage 1, the result given to
// every rank.
// CHECK: module attributes {kiln.pipeline_stages = 2 : i64}
// CHECK-LABEL: func.func @pipeline
// CHECK: kiln.stage_send %{{.*}} {stage = 0 : i64} : tensor<?x8xf32>
// CHECK: kiln.stage_broadcast %{{.*}} {stage = 1 : i64} : tensor<?x8xf32>
module attributes {kiln.pipeline_stages = 2 : i64} {
func.func @pipeline(%x: tensor<?x8xf32>, %w: tensor<8xbf16> {kiln.weight = "w"}) -> tensor<?x8xf32> {
  %n = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x8xf32>, tensor<8xbf16>
  %s = kiln.stage_send %n {stage = 0 : i64} : tensor<?x8xf32>
  %y = kiln.add %s, %s : tensor<?x8xf32>
  %all = kiln.stage_broadcast %y {stage = 1 : i64} : tensor<?x8xf32>
  return %all : tensor<?x8xf32>
}
}
