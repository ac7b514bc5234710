// RUN: kiln-opt %s -kiln-pipeline-stages=stages=2 | FileCheck %s
// RUN: not kiln-opt %s -kiln-pipeline-stages=stages=3 2>&1 | FileCheck %s --check-prefix=MORE
// RUN: kiln-opt %s -kiln-pipeline-stages=stages=2 | not kiln-opt -kiln-pipeline-stages=stages=2 2>&1 | FileCheck %s --check-prefix=TWICE

// Two layers on two stages: the residual stream crosses once, at the
// RMSNorm that opens layer 1 (its residual add reads the sent value too);
// the logits of the last stage go to every rank.
// CHECK: module attributes {kiln.pipeline_stages = 2 : i64}
// CHECK: %[[H1:.*]] = kiln.add %{{.*}}, %{{.*}} : tensor<?x16xf32>
// CHECK-NEXT: %[[SENT:.*]] = kiln.stage_send %[[H1]] {stage = 0 : i64} : tensor<?x16xf32>
// CHECK-NEXT: kiln.rms_norm %[[SENT]], %{{.*}}
// CHECK-NOT: kiln.stage_send
// CHECK: kiln.add %[[SENT]], %{{.*}} : tensor<?x16xf32>
// CHECK: %[[LOGITS:.*]] = kiln.linear %{{.*}} -> tensor<?x64xf32>
// CHECK-NEXT: %[[ALL:.*]] = kiln.stage_broadcast %[[LOGITS]] {stage = 1 : i64} : tensor<?x64xf32>
// CHECK-NEXT: return %[[ALL]]
// MORE: error: 'func.func' op has 2 layers, fewer than the 3 pipeline stages
// TWICE: error: the graph is already split into pipeline stages
func.func @forward(%tok: tensor<?xi32> {kiln.input = "tokens"}, %pos: tensor<?xi64> {kiln.input = "positions"},
                   %emb: tensor<64x16xbf16> {kiln.weight = "emb"},
                   %n0: tensor<16xbf16> {kiln.weight = "n0"}, %q0: tensor<16x16xbf16> {kiln.weight = "q0"},
                   %k0: tensor<8x16xbf16> {kiln.weight = "k0"}, %v0: tensor<8x16xbf16> {kiln.weight = "v0"},
                   %o0: tensor<16x16xbf16> {kiln.weight = "o0"},
                   %n1: tensor<16xbf16> {kiln.weight = "n1"}, %q1: tensor<16x16xbf16> {kiln.weight = "q1"},
                   %k1: tensor<8x16xbf16> {kiln.weight = "k1"}, %v1: tensor<8x16xbf16> {kiln.weight = "v1"},
                   %o1: tensor<16x16xbf16> {kiln.weight = "o1"},
                   %nf: tensor<16xbf16> {kiln.weight = "nf"}, %head: tensor<64x16xbf16> {kiln.weight = "head"}) -> tensor<?x64xf32> {
  %h = kiln.embedding %emb[%tok] : tensor<64x16xbf16>, tensor<?xi32> -> tensor<?x16xf32>
  %a0n = kiln.rms_norm %h, %n0 {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  %a0q = kiln.linear %a0n, %q0 : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
  %a0k = kiln.linear %a0n, %k0 : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %a0v = kiln.linear %a0n, %v0 : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %a0 = kiln.attention %a0q, %a0k, %a0v, %pos {mask = #kiln.mask<causal>, num_heads = 2 : i64, num_kv_heads = 1 : i64, scale = 0.35 : f64}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  %a0o = kiln.linear %a0, %o0 : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
  %h1 = kiln.add %h, %a0o : tensor<?x16xf32>
  %a1n = kiln.rms_norm %h1, %n1 {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  %a1q = kiln.linear %a1n, %q1 : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
  %a1k = kiln.linear %a1n, %k1 : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %a1v = kiln.linear %a1n, %v1 : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x8xf32>
  %a1 = kiln.attention %a1q, %a1k, %a1v, %pos {mask = #kiln.mask<causal>, num_heads = 2 : i64, num_kv_heads = 1 : i64, scale = 0.35 : f64}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  %a1o = kiln.linear %a1, %o1 : tensor<?x16xf32>, tensor<16x16xbf16> -> tensor<?x16xf32>
  %h2 = kiln.add %h1, %a1o : tensor<?x16xf32>
  %f = kiln.rms_norm %h2, %nf {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  %logits = kiln.linear %f, %head : tensor<?x16xf32>, tensor<64x16xbf16> -> tensor<?x64xf32>
  return %logits : tensor<?x64xf32>
}
