// RUN: kiln-opt %s -split-input-file -kiln-shard-tensor-parallel="ranks=4 attention-replicas=2 expert-groups=4" | FileCheck %s
// RUN: kiln-opt %s -split-input-file -kiln-shard-tensor-parallel="ranks=2 attention-replicas=2" | FileCheck %s --check-prefix=ONE
// RUN: kiln-opt %s -split-input-file -kiln-shard-tensor-parallel="ranks=8 attention-replicas=2 expert-groups=4" | FileCheck %s --check-prefix=SHARE
// RUN: not kiln-opt %s -split-input-file -kiln-shard-tensor-parallel="ranks=4 attention-replicas=3" 2>&1 | FileCheck %s --check-prefix=DIVIDE

// Data-parallel attention: the ranks form replicas (here 2 of 2 ranks),
// each with its own sequence. Attention is split within a replica: rank r
// holds part r mod 2 (stride 1), and the all-reduce sums over the replica's
// 2 ranks.
// CHECK: module attributes {kiln.attention_replicas = 2 : i64, kiln.tensor_parallel = 4 : i64}
// CHECK-LABEL: func.func @attention
// CHECK-SAME: tensor<16x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2, stride = 1>, kiln.weight = "wq"}
// CHECK-SAME: tensor<8x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2, stride = 1>, kiln.weight = "wk"}
// CHECK-SAME: tensor<8x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2, stride = 1>, kiln.weight = "wv"}
// CHECK-SAME: tensor<32x16xbf16> {kiln.shard = #kiln.shard<dim = 1, parts = 2, stride = 1>, kiln.weight = "wo"}
// CHECK: kiln.attention {{.*}}num_heads = 2 : i64, num_kv_heads = 1 : i64
// CHECK: %[[P:.*]] = kiln.linear
// CHECK: kiln.all_reduce %[[P]] {ranks = 2 : i64} : tensor<?x32xf32>
// One rank per replica: attention stays whole, with no collective.
// ONE-LABEL: func.func @attention
// ONE-SAME: tensor<32x32xbf16> {kiln.weight = "wq"}
// ONE-NOT: kiln.all_reduce
// ONE: return
// Replicas of 4 ranks and 2 KV heads: pairs of a replica's ranks share a KV
// head, part (r / 2) mod 2.
// SHARE: module attributes {kiln.attention_replicas = 2 : i64, kiln.tensor_parallel = 8 : i64}
// SHARE-LABEL: func.func @attention
// SHARE-SAME: tensor<8x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 4, stride = 1>, kiln.weight = "wq"}
// SHARE-SAME: tensor<8x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2, stride = 2>, kiln.weight = "wk"}
// SHARE: kiln.all_reduce %{{.*}} {ranks = 4 : i64}
// DIVIDE: error: kiln-shard-tensor-parallel: 3 attention replicas do not divide 4 ranks
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
  %a = kiln.attention %qr, %kr, %v, %pos {mask = #kiln.mask<causal>, num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.35 : f64}
      : tensor<?x32xf32>, tensor<?x16xf32>, tensor<?x16xf32>, tensor<?xi64>
  %o = kiln.linear %a, %wo : tensor<?x32xf32>, tensor<32x32xbf16> -> tensor<?x32xf32>
  return %o : tensor<?x32xf32>
}

// -----

// The dense FFN, column-then-row within a replica.
// CHECK-LABEL: func.func @ffn
// CHECK-SAME: tensor<24x32xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2, stride = 1>, kiln.weight = "gate"}
// CHECK-SAME: tensor<32x24xbf16> {kiln.shard = #kiln.shard<dim = 1, parts = 2, stride = 1>, kiln.weight = "down"}
// CHECK: kiln.all_reduce %{{.*}} {ranks = 2 : i64}
// ONE-LABEL: func.func @ffn
// ONE-NOT: kiln.all_reduce
// ONE: return
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

// The MoE block divides its experts over all 4 ranks (one whole expert
// each with expert-groups=4) and the shared expert 4 ways; it runs on every
// replica's rows, gathered before it, and the reduce-scatter after it sums
// the 4 ranks' partial sums and returns each replica its own rows.
// CHECK-LABEL: func.func @moe
// CHECK-SAME: %[[U:[^:]*]]: tensor<?x16xf32>
// CHECK-SAME: tensor<1x16x24xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 4>, kiln.weight = "gate_up"}
// CHECK-SAME: tensor<2x16xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 4>, kiln.weight = "shared_gate"}
// CHECK: %[[G:.*]] = kiln.all_gather %[[U]] {ranks = 4 : i64, replicas = 2 : i64} : tensor<?x16xf32> -> tensor<?x16xf32>
// CHECK: %[[M:.*]] = kiln.moe %[[G]] {{.*}} {expert_groups = 4 : i64, ranks = 4 : i64, top_k = 1 : i64}
// CHECK: %[[S:.*]] = kiln.reduce_scatter %[[M]] like %[[U]] {ranks = 4 : i64, replicas = 2 : i64} : tensor<?x16xf32> -> tensor<?x16xf32>
// CHECK: return %[[S]]
// ONE-LABEL: func.func @moe
// ONE-SAME: tensor<4x16x12xbf16> {kiln.shard = #kiln.shard<dim = 2, parts = 2, groups = 2>, kiln.weight = "gate_up"}
// ONE: kiln.all_gather %{{.*}} {ranks = 2 : i64, replicas = 2 : i64}
// ONE: kiln.reduce_scatter
// ONE-NOT: kiln.all_reduce
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
