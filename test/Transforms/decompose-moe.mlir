// RUN: kiln-opt %s -split-input-file -kiln-decompose-moe | FileCheck %s

// CHECK-LABEL: func.func @llama4_moe
// CHECK-SAME: (%[[U:.*]]: tensor<?x16xf32>, %[[R:.*]]: tensor<4x16xbf16>, %[[GU:.*]]: tensor<4x16x24xbf16>, %[[DN:.*]]: tensor<4x12x16xbf16>, %[[SG:.*]]: tensor<8x16xbf16>, %[[SU:.*]]: tensor<8x16xbf16>, %[[SD:.*]]: tensor<16x8xbf16>)
// CHECK: %[[IDX:.*]], %[[OFF:.*]], %[[GATES:.*]] = kiln.moe_route %[[U]], %[[R]] {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<5xi64>, tensor<?xf32>
// CHECK: %[[H:.*]] = kiln.expert_gate_up %[[U]], %[[IDX]], %[[OFF]], %[[GATES]], %[[GU]] : {{.*}} -> tensor<?x12xf32>
// CHECK: %[[W:.*]] = kiln.concat %[[SG]], %[[SU]] {axis = 0 : i64} : tensor<8x16xbf16>, tensor<8x16xbf16> -> tensor<16x16xbf16>
// CHECK: %[[SGU:.*]] = kiln.linear %[[U]], %[[W]] : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
// CHECK: %[[SH:.*]] = kiln.packed_swiglu %[[SGU]] : tensor<?x16xf32> -> tensor<?x8xf32>
// CHECK: %[[SO:.*]] = kiln.linear %[[SH]], %[[SD]] : tensor<?x8xf32>, tensor<16x8xbf16> -> tensor<?x16xf32>
// CHECK: %[[Y:.*]] = kiln.expert_down %[[H]], %[[IDX]], %[[OFF]], %[[DN]], %[[SO]]
// CHECK: return %[[Y]]
// CHECK-NOT: kiln.moe
func.func @llama4_moe(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>,
                      %dn: tensor<4x12x16xbf16>, %sg: tensor<8x16xbf16>, %su: tensor<8x16xbf16>,
                      %sd: tensor<16x8xbf16>) -> tensor<?x16xf32> {
  %y = kiln.moe %u router %r experts %gu, %dn shared %sg, %su, %sd {top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>,
        tensor<8x16xbf16>, tensor<8x16xbf16>, tensor<16x8xbf16>
  return %y : tensor<?x16xf32>
}

// -----

// Without a shared expert there is no addend to combine into: left alone.
// CHECK-LABEL: func.func @no_shared_expert
// CHECK: kiln.moe
// CHECK-NOT: kiln.moe_route
func.func @no_shared_expert(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>,
                            %dn: tensor<4x12x16xbf16>) -> tensor<?x16xf32> {
  %y = kiln.moe %u router %r experts %gu, %dn {top_k = 2 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  return %y : tensor<?x16xf32>
}

// -----

// An expert-parallel block (2 of 4 experts here): the route takes the rank
// and gives offsets over the rank's experts only.
// CHECK-LABEL: func.func @expert_parallel
// CHECK: %[[IDX:.*]], %[[OFF:.*]], %[[GATES:.*]] = kiln.moe_route %{{.*}}, %{{.*}} rank %{{.*}} {expert_groups = 2 : i64, ranks = 2 : i64, top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<3xi64>, tensor<?xf32>
// CHECK: kiln.expert_gate_up %{{.*}}, %[[IDX]], %[[OFF]], %[[GATES]], %{{.*}} : tensor<?x16xf32>, tensor<?xi64>, tensor<3xi64>, tensor<?xf32>, tensor<2x16x24xbf16> -> tensor<?x12xf32>
// CHECK: kiln.expert_down %{{.*}}, %[[IDX]], %[[OFF]], %{{.*}}, %{{.*}} : tensor<?x12xf32>, tensor<?xi64>, tensor<3xi64>, tensor<2x12x16xbf16>
module attributes {kiln.tensor_parallel = 2 : i64} {
func.func @expert_parallel(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<2x16x24xbf16>,
                           %dn: tensor<2x12x16xbf16>, %sg: tensor<8x16xbf16>, %su: tensor<8x16xbf16>,
                           %sd: tensor<16x8xbf16>, %rank: tensor<1xi64>) -> tensor<?x16xf32> {
  %y = kiln.moe %u router %r experts %gu, %dn shared %sg, %su, %sd rank %rank {expert_groups = 2 : i64, ranks = 2 : i64, top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<2x16x24xbf16>, tensor<2x12x16xbf16>,
        tensor<8x16xbf16>, tensor<8x16xbf16>, tensor<16x8xbf16>
  return %y : tensor<?x16xf32>
}
}
