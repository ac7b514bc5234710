// RUN: kiln-opt %s -kiln-shard-tensor-parallel="ranks=4 attention-replicas=2 expert-groups=4 all-to-all=true" | FileCheck %s
// RUN: kiln-opt %s -kiln-shard-tensor-parallel="ranks=2 attention-replicas=2 expert-groups=2 all-to-all=true" | FileCheck %s --check-prefix=ONE
// RUN: kiln-opt %s -kiln-shard-tensor-parallel="ranks=4 attention-replicas=2 expert-groups=4 all-to-all=true" -kiln-fuse-gate-up -kiln-fuse-all-reduce-norm -canonicalize -kiln-partition-kernels | FileCheck %s --check-prefix=KERNELS

// The all-to-all exchange (kiln-shard-tensor-parallel's all-to-all): 2
// replicas of 2 ranks, one whole expert per rank. Every rank routes its
// replica's rows over all 4 experts, sends its piece of them to the
// experts' ranks and runs its expert on what it receives (a router's
// results over its 1 expert, pair i reading row i); the outputs go back
// into the piece's rows. The shared expert is split within the replica (2
// ways, stride 1) and its all-reduce over the replica also assembles the
// pieces.
// CHECK: module attributes {kiln.attention_replicas = 2 : i64, kiln.tensor_parallel = 4 : i64}
// CHECK-LABEL: func.func @moe
// CHECK-SAME: %[[U:[^:]*]]: tensor<?x16xf32>
// CHECK-SAME: %[[R:[^:]*]]: tensor<4x16xbf16> {kiln.weight = "router"}
// CHECK-SAME: %[[GU:[^:]*]]: tensor<1x16x24xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 4>, kiln.weight = "gate_up"}
// CHECK-SAME: %[[DN:[^:]*]]: tensor<1x12x16xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 4>, kiln.weight = "down"}
// CHECK-SAME: tensor<4x16xbf16> {kiln.shard = #kiln.shard<dim = 0, parts = 2, stride = 1>, kiln.weight = "shared_gate"}
// CHECK-SAME: tensor<16x4xbf16> {kiln.shard = #kiln.shard<dim = 1, parts = 2, stride = 1>, kiln.weight = "shared_down"}
// CHECK-SAME: %[[RANK:[^:]*]]: tensor<1xi64> {kiln.input = "rank"}
// CHECK: %[[IDX:.*]], %[[OFF:.*]], %[[GATES:.*]] = kiln.moe_route %[[U]], %[[R]] {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<5xi64>, tensor<?xf32>
// CHECK: %[[ROWS:.*]], %[[PAIRS:.*]], %[[ROFF:.*]], %[[RG:.*]] = kiln.token_dispatch %[[U]], %[[IDX]], %[[OFF]], %[[GATES]] rank %[[RANK]] {expert_groups = 4 : i64, ranks = 4 : i64, replicas = 2 : i64}
// CHECK-SAME: -> (tensor<?x16xf32>, tensor<?xi64>, tensor<2xi64>, tensor<?xf32>)
// CHECK: %[[H:.*]] = kiln.expert_gate_up %[[ROWS]], %[[PAIRS]], %[[ROFF]], %[[RG]], %[[GU]]
// CHECK: %[[O:.*]] = kiln.expert_down_pairs %[[H]], %[[ROFF]], %[[DN]] : tensor<?x12xf32>, tensor<2xi64>, tensor<1x12x16xbf16> -> tensor<?x16xf32>
// CHECK: %[[MINE:.*]] = kiln.token_combine %[[O]], %[[U]], %[[IDX]], %[[OFF]] rank %[[RANK]] {expert_groups = 4 : i64, ranks = 4 : i64, replicas = 2 : i64}
// CHECK: kiln.swiglu
// CHECK: %[[SH:.*]] = kiln.linear
// CHECK: %[[SUM:.*]] = kiln.add %[[MINE]], %[[SH]]
// CHECK: %[[ALL:.*]] = kiln.all_reduce %[[SUM]] {ranks = 2 : i64}
// CHECK: return %[[ALL]]
// CHECK-NOT: kiln.moe
// One rank per replica: the shared expert whole, no all-reduce (the piece
// is all of the replica's rows).
// ONE-LABEL: func.func @moe
// ONE-SAME: tensor<8x16xbf16> {kiln.weight = "shared_gate"}
// ONE: kiln.token_dispatch {{.*}} {expert_groups = 2 : i64, ranks = 2 : i64, replicas = 2 : i64}
// ONE: kiln.token_combine
// ONE-NOT: kiln.all_reduce
// The exchange stays in the graph between the kernels, which include the
// received pairs' grouped GEMMs; the replica's all-reduce is fused into
// nothing here (no norm reads it) and stays.
// KERNELS-LABEL: func.func @moe
// KERNELS: call @router_0
// KERNELS: kiln.token_dispatch
// KERNELS: call @grouped_gemm_0
// KERNELS: call @grouped_gemm_1
// KERNELS: kiln.token_combine
// KERNELS: kiln.all_reduce
// KERNELS: func.func private @grouped_gemm_1{{.*}}attributes {kiln.kernel = #kiln.kernel<grouped_gemm>}
// KERNELS-NEXT: kiln.expert_down_pairs
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
