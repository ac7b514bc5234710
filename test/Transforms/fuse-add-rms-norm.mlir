// RUN: kiln-opt %s -split-input-file -kiln-fuse-add-rms-norm | FileCheck %s

// CHECK-LABEL: func.func @residual_then_norm
// CHECK-SAME: (%[[X:.*]]: tensor<?x16xf32>, %[[R:.*]]: tensor<?x16xf32>, %[[W:.*]]: tensor<16xbf16>)
// CHECK: %[[SUM:.*]], %[[NORMED:.*]] = kiln.add_rms_norm %[[X]], %[[R]], %[[W]] {epsilon = 1.000000e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
// CHECK-NOT: kiln.add
// CHECK-NOT: kiln.rms_norm
// CHECK: return %[[SUM]], %[[NORMED]]
func.func @residual_then_norm(%x: tensor<?x16xf32>, %r: tensor<?x16xf32>, %w: tensor<16xbf16>)
    -> (tensor<?x16xf32>, tensor<?x16xf32>) {
  %s = kiln.add %x, %r : tensor<?x16xf32>
  %h = kiln.rms_norm %s, %w {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  return %s, %h : tensor<?x16xf32>, tensor<?x16xf32>
}

// -----

// A norm of a value that is not an add stays as it is.
// CHECK-LABEL: func.func @plain_norm
// CHECK: kiln.rms_norm
// CHECK-NOT: kiln.add_rms_norm
func.func @plain_norm(%x: tensor<?x16xf32>, %w: tensor<16xbf16>) -> tensor<?x16xf32> {
  %h = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  return %h : tensor<?x16xf32>
}

// -----

// The norm weight is computed after the add, so the fused op (which takes
// the add's place) could not read it: left alone.
// CHECK-LABEL: func.func @weight_defined_later
// CHECK: kiln.add
// CHECK: kiln.concat
// CHECK: kiln.rms_norm
// CHECK-NOT: kiln.add_rms_norm
func.func @weight_defined_later(%x: tensor<?x16xf32>, %r: tensor<?x16xf32>, %w1: tensor<8xbf16>,
                                %w2: tensor<8xbf16>) -> tensor<?x16xf32> {
  %s = kiln.add %x, %r : tensor<?x16xf32>
  %w = kiln.concat %w1, %w2 {axis = 0 : i64} : tensor<8xbf16>, tensor<8xbf16> -> tensor<16xbf16>
  %h = kiln.rms_norm %s, %w {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  return %h : tensor<?x16xf32>
}
