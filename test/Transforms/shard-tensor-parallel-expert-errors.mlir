// RUN: kiln-opt %s -kiln-shard-tensor-parallel="ranks=4 expert-groups=4" -verify-diagnostics
// RUN: not kiln-opt %s -kiln-shard-tensor-parallel="ranks=4 expert-groups=3" 2>&1 | FileCheck %s --check-prefix=GROUPS

// GROUPS: error: kiln-shard-tensor-parallel: 3 expert-parallel groups do not divide 4 ranks
func.func @experts_do_not_divide(%u: tensor<?x16xf32>, %r: tensor<6x16xbf16> {kiln.weight = "router"},
               %gu: tensor<6x16x24xbf16> {kiln.weight = "gate_up"},
               %dn: tensor<6x12x16xbf16> {kiln.weight = "down"},
               %sg: tensor<8x16xbf16> {kiln.weight = "shared_gate"},
               %su: tensor<8x16xbf16> {kiln.weight = "shared_up"},
               %sd: tensor<16x8xbf16> {kiln.weight = "shared_down"}) -> tensor<?x16xf32> {
  // expected-error @+1 {{has 6 experts, which do not divide into 4 expert-parallel groups}}
  %y = kiln.moe %u router %r experts %gu, %dn shared %sg, %su, %sd {top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<6x16xbf16>, tensor<6x16x24xbf16>, tensor<6x12x16xbf16>,
        tensor<8x16xbf16>, tensor<8x16xbf16>, tensor<16x8xbf16>
  return %y : tensor<?x16xf32>
}
