// RUN: kiln-opt %s -split-input-file -kiln-fuse-gate-up | FileCheck %s

// CHECK-LABEL: func.func @dense_ffn
// CHECK-SAME: (%[[U:.*]]: tensor<?x16xf32>, %[[WG:.*]]: tensor<24x16xbf16>, %[[WU:.*]]: tensor<24x16xbf16>, %[[WD:.*]]: tensor<16x24xbf16>)
// CHECK: %[[W:.*]] = kiln.concat %[[WG]], %[[WU]] {axis = 0 : i64} : tensor<24x16xbf16>, tensor<24x16xbf16> -> tensor<48x16xbf16>
// CHECK-NEXT: %[[GU:.*]] = kiln.linear %[[U]], %[[W]] : tensor<?x16xf32>, tensor<48x16xbf16> -> tensor<?x48xf32>
// CHECK-NEXT: %[[H:.*]] = kiln.packed_swiglu %[[GU]] : tensor<?x48xf32> -> tensor<?x24xf32>
// CHECK-NEXT: kiln.linear %[[H]], %[[WD]]
// CHECK-NOT: kiln.swiglu
func.func @dense_ffn(%u: tensor<?x16xf32>, %wg: tensor<24x16xbf16>, %wu: tensor<24x16xbf16>,
                     %wd: tensor<16x24xbf16>) -> tensor<?x16xf32> {
  %g = kiln.linear %u, %wg : tensor<?x16xf32>, tensor<24x16xbf16> -> tensor<?x24xf32>
  %v = kiln.linear %u, %wu : tensor<?x16xf32>, tensor<24x16xbf16> -> tensor<?x24xf32>
  %h = kiln.swiglu %g, %v : tensor<?x24xf32>
  %y = kiln.linear %h, %wd : tensor<?x24xf32>, tensor<16x24xbf16> -> tensor<?x16xf32>
  return %y : tensor<?x16xf32>
}

// -----

// The gate projection has another user: fusing would have to keep it.
// CHECK-LABEL: func.func @gate_used_twice
// CHECK-NOT: kiln.packed_swiglu
// CHECK: kiln.swiglu
func.func @gate_used_twice(%u: tensor<?x16xf32>, %wg: tensor<24x16xbf16>, %wu: tensor<24x16xbf16>)
    -> (tensor<?x24xf32>, tensor<?x24xf32>) {
  %g = kiln.linear %u, %wg : tensor<?x16xf32>, tensor<24x16xbf16> -> tensor<?x24xf32>
  %v = kiln.linear %u, %wu : tensor<?x16xf32>, tensor<24x16xbf16> -> tensor<?x24xf32>
  %h = kiln.swiglu %g, %v : tensor<?x24xf32>
  return %h, %g : tensor<?x24xf32>, tensor<?x24xf32>
}

// -----

// Gate and up of different inputs are not a gate/up pair.
// CHECK-LABEL: func.func @different_inputs
// CHECK-NOT: kiln.concat
func.func @different_inputs(%u: tensor<?x16xf32>, %x: tensor<?x16xf32>, %wg: tensor<24x16xbf16>,
                            %wu: tensor<24x16xbf16>) -> tensor<?x24xf32> {
  %g = kiln.linear %u, %wg : tensor<?x16xf32>, tensor<24x16xbf16> -> tensor<?x24xf32>
  %v = kiln.linear %x, %wu : tensor<?x16xf32>, tensor<24x16xbf16> -> tensor<?x24xf32>
  %h = kiln.swiglu %g, %v : tensor<?x24xf32>
  return %h : tensor<?x24xf32>
}
