// RUN: kiln-opt %s -split-input-file -kiln-shard-tensor-parallel=ranks=2 | FileCheck %s
// RUN: kiln-opt %s -split-input-file -kiln-shard-tensor-parallel=ranks=4 | FileCheck %s --check-prefix=FOUR
// RUN: kiln-opt %s -split-input-file -kiln-shard-tensor-parallel="ranks=4 expert-groups=2" | FileCheck %s --check-prefix=EP
// RUN: kiln-opt %s -split-input-file -kiln-shard-tensor-parallel="ranks=4 expert-groups=4" | FileCheck %s --check-prefix=EP4

// Attention by heads (4 query heads, 2 KV heads of 8), output projection
// by columns, then an all-reduce of the partial sums.
// CHECK: module attributes {kiln.tensor_parallel = 2 : i64}
// CHECK-LABEL: func.func @attention
// CHECK-SAME: %[[WQ:[^:]*]]: tensor<16x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2>, kiln.weight = "wq"}
// CHECK-SAME: %[[WK:[^:]*]]: tensor<8x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2>, kiln.weight = "wk"}
// CHECK-SAME: %[[WV:[^:]*]]: tensor<8x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2>, kiln.weight = "wv"}
// CHECK-SAME: %[[WO:[^:]*]]: tensor<32x16xbf16> {kiln.shard = #kiln.shard<dim = 1, parts = 2>, kiln.weight = "wo"}
// CHECK: %[[Q:.*]] = kiln.linear %{{.*}}, %[[WQ]] : tensor<?x32xf32>, tensor<16x32xbf16> -> tensor<?x16xf32>
// CHECK: kiln.rope %[[Q]], %{{.*}} {{{.*}}num_heads = 2 : i64} : tensor<?x16xf32>
// CHECK: kiln.rope %{{.*}} {{{.*}}num_heads = 1 : i64} : tensor<?x8xf32>
// CHECK: kiln.qk_norm %{{.*}} {epsilon = {{.*}}, num_heads = 2 : i64} : tensor<?x16xf32>
// CHECK: kiln.qk_norm %{{.*}} {epsilon = {{.*}}, num_heads = 1 : i64} : tensor<?x8xf32>
// CHECK: %[[A:.*]] = kiln.attention {{.*}}num_heads = 2 : i64, num_kv_heads = 1 : i64{{.*}} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
// CHECK: %[[P:.*]] = kiln.linear %[[A]], %[[WO]] : tensor<?x16xf32>, tensor<32x16xbf16> -> tensor<?x32xf32>
// CHECK: %[[R:.*]] = kiln.all_reduce %[[P]] {ranks = 2 : i64} : tensor<?x32xf32>
// CHECK: return %[[R]]
// With 4 ranks and 2 KV heads, pairs of ranks share a KV head (2 parts).
// FOUR-LABEL: func.func @attention
// FOUR-SAME: tensor<8x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 4>, kiln.weight = "wq"}
// FOUR-SAME: tensor<8x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2>, kiln.weight = "wk"}
// FOUR: kiln.attention {{.*}}num_heads = 1 : i64, num_kv_heads = 1 : i64
// FOUR: kiln.all_reduce %{{.*}} {ranks = 4 : i64}
func.func @attention(%x: tensor<?x32xf32>, %pos: tensor<?xi64> {kiln.input = "positions"},
                     %wq: tensor<32x32xbf16> {kiln.weight = "wq"},
                     %wk: tensor<16x32xbf16> {kiln.weight = "wk"},
                     %wv: tensor<16x32xbf16> {kiln.weight = "wv"},
                     %wo: tensor<32x32xbf16> {kiln.weight = "wo"}) -> tensor<?x32xf32> {
  %q = kiln.linear %x, %wq : tensor<?x32xf32>, tensor<32x32xbf16> -> tensor<?x32xf32>
  %k = kiln.linear %x, %wk : tensor<?x32xf32>, tensor<16x32xbf16> -> tensor<?x16xf32>
  %v = kiln.linear %x, %wv : tensor<?x32xf32>, tensor<16x32xbf16> -> tensor<?x16xf32>
  %qr = kiln.rope %q, %pos {inv_freq = array<f64: 1.0, 0.1, 0.01, 0.001>, num_heads = 4 : i64} : tensor<?x32xf32>, tensor<?xi64>
  %kr = kiln.rope %k, %pos {inv_freq = array<f64: 1.0, 0.1, 0.01, 0.001>, num_heads = 2 : i64} : tensor<?x16xf32>, tensor<?xi64>
  %qn = kiln.qk_norm %qr {epsilon = 1.0e-05 : f64, num_heads = 4 : i64} : tensor<?x32xf32>
  %kn = kiln.qk_norm %kr {epsilon = 1.0e-05 : f64, num_heads = 2 : i64} : tensor<?x16xf32>
  %a = kiln.attention %qn, %kn, %v, %pos {mask = #kiln.mask<causal>, num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.35 : f64}
      : tensor<?x32xf32>, tensor<?x16xf32>, tensor<?x16xf32>, tensor<?xi64>
  %o = kiln.linear %a, %wo : tensor<?x32xf32>, tensor<32x32xbf16> -> tensor<?x32xf32>
  return %o : tensor<?x32xf32>
}

// -----

// The dense FFN column-then-row.
// CHECK-LABEL: func.func @ffn
// CHECK-SAME: tensor<24x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2>, kiln.weight = "gate"}
// CHECK-SAME: tensor<24x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2>, kiln.weight = "up"}
// CHECK-SAME: tensor<32x24xbf16> {kiln.shard = #kiln.shard<dim = 1, parts = 2>, kiln.weight = "down"}
// CHECK: kiln.swiglu %{{.*}}, %{{.*}} : tensor<?x24xf32>
// CHECK: %[[D:.*]] = kiln.linear %{{.*}}, %{{.*}} : tensor<?x24xf32>, tensor<32x24xbf16> -> tensor<?x32xf32>
// CHECK: kiln.all_reduce %[[D]] {ranks = 2 : i64}
func.func @ffn(%x: tensor<?x32xf32>, %wg: tensor<48x32xbf16> {kiln.weight = "gate"},
               %wu: tensor<48x32xbf16> {kiln.weight = "up"},
               %wd: tensor<32x48xbf16> {kiln.weight = "down"}) -> tensor<?x32xf32> {
  %g = kiln.linear %x, %wg : tensor<?x32xf32>, tensor<48x32xbf16> -> tensor<?x48xf32>
  %u = kiln.linear %x, %wu : tensor<?x32xf32>, tensor<48x32xbf16> -> tensor<?x48xf32>
  %h = kiln.swiglu %g, %u : tensor<?x48xf32>
  %y = kiln.linear %h, %wd : tensor<?x48xf32>, tensor<32x48xbf16> -> tensor<?x32xf32>
  return %y : tensor<?x32xf32>
}

// -----

// MoE: the experts' and the shared expert's intermediate dimension (gate_up
// split half by half), the router replicated.
// CHECK-LABEL: func.func @moe
// CHECK-SAME: tensor<4x16xbf16> {kiln.weight = "router"}
// CHECK-SAME: tensor<4x16x12xbf16> {kiln.shard = #kiln.shard<dim = 2, parts = 2, groups = 2>, kiln.weight = "gate_up"}
// CHECK-SAME: tensor<4x6x16xbf16> {kiln.shard = #kiln.shard<dim = 1, parts = 2>, kiln.weight = "down"}
// CHECK-SAME: tensor<4x16xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2>, kiln.weight = "shared_gate"}
// CHECK-SAME: tensor<16x4xbf16> {kiln.shard = #kiln.shard<dim = 1, parts = 2>, kiln.weight = "shared_down"}
// CHECK: %[[M:.*]] = kiln.moe
// CHECK: kiln.all_reduce %[[M]] {ranks = 2 : i64} : tensor<?x16xf32>
func.func @moe(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16> {kiln.weight = "router"},
               %gu: tensor<4x16x24xbf16> {kiln.weight = "gate_up"},
               %dn: tensor<4x12x16xbf16> {kiln.weight = "down"},
               %sg: tensor<8x16xbf16> {kiln.weight = "shared_gate"},
               %su: tensor<8x16xbf16> {kiln.weight = "shared_up"},
               %sd: tensor<16x8xbf16> {kiln.weight = "shared_down"}) -> tensor<?x16xf32> {
  %y = kiln.moe %u router %r experts %gu, %dn shared %sg, %su, %sd {top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>,
        tensor<8x16xbf16>, tensor<8x16xbf16>, tensor<16x8xbf16>
  return %y : tensor<?x16xf32>
}

// -----

// Expert parallelism (4 ranks in 2 expert groups): the routed experts are
// divided by expert (dimension 0, group rank * 2 / 4), then each split two
// ways within its group (stride 1: rank % 2); the shared expert is split
// over all 4 ranks. The block takes the rank input the pass adds, and its
// result joins the one all-reduce.
// EP-LABEL: func.func @moe_expert_parallel
// EP-SAME: tensor<4x16xbf16> {kiln.weight = "router"}
// EP-SAME: tensor<2x16x12xbf16> {kiln.shard = [#kiln.shard<dim = 0, parts = 2>, #kiln.shard<dim = 2, parts = 2, groups = 2, stride = 1>], kiln.weight = "gate_up"}
// EP-SAME: tensor<2x6x16xbf16> {kiln.shard = [#kiln.shard<dim = 0, parts = 2>, #kiln.shard<dim = 1, parts = 2, stride = 1>], kiln.weight = "down"}
// EP-SAME: tensor<2x16xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 4>, kiln.weight = "shared_gate"}
// EP-SAME: %[[RANK:[^:]*]]: tensor<1xi64> {kiln.input = "rank"}
// EP: %[[M:.*]] = kiln.moe %{{.*}} rank %[[RANK]] {expert_groups = 2 : i64, ranks = 4 : i64, top_k = 1 : i64}
// EP-SAME: tensor<4x16xbf16>, tensor<2x16x12xbf16>, tensor<2x6x16xbf16>
// EP: kiln.all_reduce %[[M]] {ranks = 4 : i64} : tensor<?x16xf32>
// As many groups as ranks: whole experts, no split within a group.
// EP4-LABEL: func.func @moe_expert_parallel
// EP4-SAME: tensor<1x16x24xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 4>, kiln.weight = "gate_up"}
// EP4-SAME: tensor<1x12x16xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 4>, kiln.weight = "down"}
// EP4: kiln.moe {{.*}} {expert_groups = 4 : i64, ranks = 4 : i64, top_k = 1 : i64}
func.func @moe_expert_parallel(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16> {kiln.weight = "router"},
               %gu: tensor<4x16x24xbf16> {kiln.weight = "gate_up"},
               %dn: tensor<4x12x16xbf16> {kiln.weight = "down"},
               %sg: tensor<8x16xbf16> {kiln.weight = "shared_gate"},
               %su: tensor<8x16xbf16> {kiln.weight = "shared_up"},
               %sd: tensor<16x8xbf16> {kiln.weight = "shared_down"}) -> tensor<?x16xf32> {
  %y = kiln.moe %u router %r experts %gu, %dn shared %sg, %su, %sd {top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>,
        tensor<8x16xbf16>, tensor<8x16xbf16>, tensor<16x8xbf16>
  return %y : tensor<?x16xf32>
}
