// RUN: kiln-opt %s -split-input-file -verify-diagnostics

// One case per verifier error a user can hit; each function is named
// after its failure.

func.func @embedding_table_rank(%t: tensor<32xbf16>, %i: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.embedding' op expected 2-D table, got rank 1}}
  %0 = kiln.embedding %t[%i] : tensor<32xbf16>, tensor<?xi32> -> tensor<?x16xf32>
  return
}

// -----

func.func @embedding_tokens_rank(%t: tensor<32x16xbf16>, %i: tensor<?x1xi32>) {
  // expected-error @+1 {{'kiln.embedding' op expected 1-D tokens, got rank 2}}
  %0 = kiln.embedding %t[%i] : tensor<32x16xbf16>, tensor<?x1xi32> -> tensor<?x16xf32>
  return
}

// -----

func.func @embedding_token_dim(%t: tensor<32x16xbf16>, %i: tensor<3xi32>) {
  // expected-error @+1 {{'kiln.embedding' op token dimension of result (4) does not match 3}}
  %0 = kiln.embedding %t[%i] : tensor<32x16xbf16>, tensor<3xi32> -> tensor<4x16xf32>
  return
}

// -----

func.func @embedding_width(%t: tensor<32x16xbf16>, %i: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.embedding' op result width 8 does not match table width 16}}
  %0 = kiln.embedding %t[%i] : tensor<32x16xbf16>, tensor<?xi32> -> tensor<?x8xf32>
  return
}

// -----

func.func @embedding_float_tokens(%t: tensor<32x16xbf16>, %i: tensor<?xf32>) {
  // expected-error @+1 {{'kiln.embedding' op operand #1 must be ranked tensor of 32-bit signless integer or 64-bit signless integer values}}
  %0 = kiln.embedding %t[%i] : tensor<32x16xbf16>, tensor<?xf32> -> tensor<?x16xf32>
  return
}

// -----

func.func @rms_norm_input_rank(%x: tensor<16xf32>, %w: tensor<16xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op expected 2-D input, got rank 1}}
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : tensor<16xf32>, tensor<16xbf16>
  return
}

// -----

func.func @rms_norm_weight_rank(%x: tensor<?x16xf32>, %w: tensor<2x16xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op expected 1-D weight, got rank 2}}
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<2x16xbf16>
  return
}

// -----

func.func @rms_norm_weight_size(%x: tensor<?x16xf32>, %w: tensor<8xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op weight size 8 does not match feature dimension 16}}
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<8xbf16>
  return
}

// -----

func.func @rms_norm_epsilon(%x: tensor<?x16xf32>, %w: tensor<16xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op expected a positive finite epsilon, got 0}}
  %0 = kiln.rms_norm %x, %w {epsilon = 0.0 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  return
}

// -----

func.func @qk_norm_rank(%x: tensor<?x2x8xf32>) {
  // expected-error @+1 {{'kiln.qk_norm' op expected 2-D input, got rank 3}}
  %0 = kiln.qk_norm %x {num_heads = 2 : i64, epsilon = 1.0e-05 : f64} : tensor<?x2x8xf32>
  return
}

// -----

func.func @qk_norm_heads(%x: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.qk_norm' op feature dimension 16 is not divisible by num_heads = 3}}
  %0 = kiln.qk_norm %x {num_heads = 3 : i64, epsilon = 1.0e-05 : f64} : tensor<?x16xf32>
  return
}

// -----

func.func @qk_norm_zero_heads(%x: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.qk_norm' op expected positive num_heads, got 0}}
  %0 = kiln.qk_norm %x {num_heads = 0 : i64, epsilon = 1.0e-05 : f64} : tensor<?x16xf32>
  return
}

// -----

func.func @qk_norm_dynamic_features(%x: tensor<?x?xf32>) {
  // expected-error @+1 {{'kiln.qk_norm' op expected a static feature dimension}}
  %0 = kiln.qk_norm %x {num_heads = 2 : i64, epsilon = 1.0e-05 : f64} : tensor<?x?xf32>
  return
}

// -----

func.func @qk_norm_epsilon(%x: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.qk_norm' op expected a positive finite epsilon, got -1}}
  %0 = kiln.qk_norm %x {num_heads = 2 : i64, epsilon = -1.0 : f64} : tensor<?x16xf32>
  return
}

// -----

func.func @linear_weight_rank(%x: tensor<?x16xf32>, %w: tensor<16xbf16>) {
  // expected-error @+1 {{'kiln.linear' op expected 2-D weight, got rank 1}}
  %0 = kiln.linear %x, %w : tensor<?x16xf32>, tensor<16xbf16> -> tensor<?x16xf32>
  return
}

// -----

func.func @linear_in_features(%x: tensor<?x16xf32>, %w: tensor<16x8xbf16>) {
  // expected-error @+1 {{'kiln.linear' op input features 16 do not match weight [out, in] = [16, 8]}}
  %0 = kiln.linear %x, %w : tensor<?x16xf32>, tensor<16x8xbf16> -> tensor<?x16xf32>
  return
}

// -----

func.func @linear_token_dim(%x: tensor<3x16xf32>, %w: tensor<8x16xbf16>) {
  // expected-error @+1 {{'kiln.linear' op token dimension of result (2) does not match 3}}
  %0 = kiln.linear %x, %w : tensor<3x16xf32>, tensor<8x16xbf16> -> tensor<2x8xf32>
  return
}

// -----

func.func @linear_out_features(%x: tensor<?x16xf32>, %w: tensor<8x16xbf16>) {
  // expected-error @+1 {{'kiln.linear' op result features 16 do not match weight rows 8}}
  %0 = kiln.linear %x, %w : tensor<?x16xf32>, tensor<8x16xbf16> -> tensor<?x16xf32>
  return
}

// -----

func.func @rope_positions_rank(%x: tensor<?x16xf32>, %p: tensor<?x1xi64>) {
  // expected-error @+1 {{'kiln.rope' op expected 1-D positions, got rank 2}}
  %0 = kiln.rope %x, %p {num_heads = 4 : i64, inv_freq = array<f64: 1.0, 0.5>} : tensor<?x16xf32>, tensor<?x1xi64>
  return
}

// -----

func.func @rope_positions_tokens(%x: tensor<4x16xf32>, %p: tensor<5xi64>) {
  // expected-error @+1 {{'kiln.rope' op token dimension of positions (5) does not match 4}}
  %0 = kiln.rope %x, %p {num_heads = 4 : i64, inv_freq = array<f64: 1.0, 0.5>} : tensor<4x16xf32>, tensor<5xi64>
  return
}

// -----

func.func @rope_heads(%x: tensor<?x16xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.rope' op feature dimension 16 is not divisible by num_heads = 5}}
  %0 = kiln.rope %x, %p {num_heads = 5 : i64, inv_freq = array<f64: 1.0, 0.5>} : tensor<?x16xf32>, tensor<?xi64>
  return
}

// -----

func.func @rope_odd_head_dim(%x: tensor<?x12xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.rope' op head dimension 3 must be even to form rotation pairs}}
  %0 = kiln.rope %x, %p {num_heads = 4 : i64, inv_freq = array<f64: 1.0>} : tensor<?x12xf32>, tensor<?xi64>
  return
}

// -----

func.func @rope_freq_count(%x: tensor<?x16xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.rope' op expected 2 inv_freq values (head_dim / 2), got 3}}
  %0 = kiln.rope %x, %p {num_heads = 4 : i64, inv_freq = array<f64: 1.0, 0.5, 0.25>} : tensor<?x16xf32>, tensor<?xi64>
  return
}

// -----

func.func @rope_freq_negative(%x: tensor<?x16xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.rope' op inv_freq[1] must be finite and non-negative, got -5.000000e-01}}
  %0 = kiln.rope %x, %p {num_heads = 4 : i64, inv_freq = array<f64: 1.0, -0.5>} : tensor<?x16xf32>, tensor<?xi64>
  return
}

// -----

func.func @rope_i32_positions(%x: tensor<?x16xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.rope' op operand #1 must be ranked tensor of 64-bit signless integer values}}
  %0 = kiln.rope %x, %p {num_heads = 4 : i64, inv_freq = array<f64: 1.0, 0.5>} : tensor<?x16xf32>, tensor<?xi32>
  return
}

// -----

func.func @attention_query_rank(%q: tensor<?x4x4xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op expected 2-D query, got rank 3}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>} : tensor<?x4x4xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_kv_types(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xbf16>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op key and value types differ: 'tensor<?x8xf32>' vs 'tensor<?x8xbf16>'}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xbf16>, tensor<?xi64>
  return
}

// -----

func.func @attention_token_dim(%q: tensor<4x16xf32>, %k: tensor<3x8xf32>, %v: tensor<3x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op token dimension of key (3) does not match 4}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>} : tensor<4x16xf32>, tensor<3x8xf32>, tensor<3x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_kv_heads(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op feature dimension 8 is not divisible by num_kv_heads = 3}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 3 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_head_dim(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op query head dimension 8 differs from key/value head dimension 4}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 2 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_gqa_ratio(%q: tensor<?x12xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op num_heads = 3 is not a multiple of num_kv_heads = 2}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 3 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>} : tensor<?x12xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_scale(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op expected a positive finite scale, got 0}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.0 : f64, mask = #kiln.mask<causal>} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_chunked_without_size(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op chunked mask requires a positive chunk_size}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<chunked>} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_chunk_zero(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op chunked mask requires a positive chunk_size}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<chunked>, chunk_size = 0 : i64} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_causal_with_size(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op chunk_size is only valid with a chunked mask}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>, chunk_size = 8 : i64} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_half_temperature(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op temperature tuning needs both attn_scale and floor_scale}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>, attn_scale = 0.1 : f64} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_floor_scale(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op expected a positive floor_scale, got 0}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>, attn_scale = 0.1 : f64, floor_scale = 0 : i64} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @attention_attn_scale_inf(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>, %p: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.attention' op expected a finite attn_scale}}
  %0 = kiln.attention %q, %k, %v, %p {num_heads = 4 : i64, num_kv_heads = 2 : i64, scale = 0.5 : f64, mask = #kiln.mask<causal>, attn_scale = 0x7FF0000000000000 : f64, floor_scale = 8 : i64} : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return
}

// -----

func.func @moe_gate_up_rank(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<16x24xbf16>, %dn: tensor<4x12x16xbf16>) {
  // expected-error @+1 {{'kiln.moe' op expected 3-D gate_up, got rank 2}}
  %0 = kiln.moe %x router %r experts %gu, %dn {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<16x24xbf16>, tensor<4x12x16xbf16>
  return
}

// -----

func.func @moe_dynamic_hidden(%x: tensor<?x?xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>) {
  // expected-error @+1 {{'kiln.moe' op expected a static hidden dimension}}
  %0 = kiln.moe %x router %r experts %gu, %dn {top_k = 1 : i64} : tensor<?x?xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  return
}

// -----

func.func @moe_router_shape(%x: tensor<?x16xf32>, %r: tensor<4x8xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>) {
  // expected-error @+1 {{'kiln.moe' op router must be [experts, 16], got [4, 8]}}
  %0 = kiln.moe %x router %r experts %gu, %dn {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x8xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  return
}

// -----

func.func @moe_gate_up_shape(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x25xbf16>, %dn: tensor<4x12x16xbf16>) {
  // expected-error @+1 {{'kiln.moe' op gate_up must be [4, 16, 2 * F], got 'tensor<4x16x25xbf16>'}}
  %0 = kiln.moe %x router %r experts %gu, %dn {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x25xbf16>, tensor<4x12x16xbf16>
  return
}

// -----

func.func @moe_down_shape(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x16x12xbf16>) {
  // expected-error @+1 {{'kiln.moe' op down must be [4, 12, 16], got 'tensor<4x16x12xbf16>'}}
  %0 = kiln.moe %x router %r experts %gu, %dn {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x16x12xbf16>
  return
}

// -----

func.func @moe_top_k(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>) {
  // expected-error @+1 {{'kiln.moe' op top_k must be in [1, 4], got 5}}
  %0 = kiln.moe %x router %r experts %gu, %dn {top_k = 5 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  return
}

// -----

func.func @moe_shared_gate(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>, %sg: tensor<12x8xbf16>, %su: tensor<12x8xbf16>, %sd: tensor<16x12xbf16>) {
  // expected-error @+1 {{'kiln.moe' op shared_gate must be [F, 16], got 'tensor<12x8xbf16>'}}
  %0 = kiln.moe %x router %r experts %gu, %dn shared %sg, %su, %sd {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>, tensor<12x8xbf16>, tensor<12x8xbf16>, tensor<16x12xbf16>
  return
}

// -----

func.func @moe_shared_up(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>, %sg: tensor<12x16xbf16>, %su: tensor<10x16xbf16>, %sd: tensor<16x12xbf16>) {
  // expected-error @+1 {{'kiln.moe' op shared_up must have the type of shared_gate ('tensor<12x16xbf16>'), got 'tensor<10x16xbf16>'}}
  %0 = kiln.moe %x router %r experts %gu, %dn shared %sg, %su, %sd {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>, tensor<12x16xbf16>, tensor<10x16xbf16>, tensor<16x12xbf16>
  return
}

// -----

func.func @moe_shared_down(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>, %sg: tensor<12x16xbf16>, %su: tensor<12x16xbf16>, %sd: tensor<12x16xbf16>) {
  // expected-error @+1 {{'kiln.moe' op shared_down must be [16, 12], got 'tensor<12x16xbf16>'}}
  %0 = kiln.moe %x router %r experts %gu, %dn shared %sg, %su, %sd {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>, tensor<12x16xbf16>, tensor<12x16xbf16>, tensor<12x16xbf16>
  return
}

// -----

func.func @add_type_mismatch(%a: tensor<?x16xf32>, %b: tensor<?x8xf32>) {
  // expected-error @+1 {{'kiln.add' op requires the same type for all operands and results}}
  %0 = "kiln.add"(%a, %b) : (tensor<?x16xf32>, tensor<?x8xf32>) -> tensor<?x16xf32>
  return
}

// -----

func.func @concat_one_input(%a: tensor<4x4xbf16>) {
  // expected-error @+1 {{'kiln.concat' op expected at least 2 inputs, got 1}}
  %0 = kiln.concat %a {axis = 0 : i64} : tensor<4x4xbf16> -> tensor<4x4xbf16>
  return
}

// -----

func.func @concat_axis(%a: tensor<4x4xbf16>, %b: tensor<4x4xbf16>) {
  // expected-error @+1 {{'kiln.concat' op axis 2 is out of range for rank 2}}
  %0 = kiln.concat %a, %b {axis = 2 : i64} : tensor<4x4xbf16>, tensor<4x4xbf16> -> tensor<8x4xbf16>
  return
}

// -----

func.func @concat_element_type(%a: tensor<4x4xbf16>, %b: tensor<4x4xf32>) {
  // expected-error @+1 {{'kiln.concat' op input 1 ('tensor<4x4xf32>') must be statically shaped with the rank and element type of the result}}
  %0 = kiln.concat %a, %b {axis = 0 : i64} : tensor<4x4xbf16>, tensor<4x4xf32> -> tensor<8x4xbf16>
  return
}

// -----

func.func @concat_other_dim(%a: tensor<4x4xbf16>, %b: tensor<4x5xbf16>) {
  // expected-error @+1 {{'kiln.concat' op input 1 differs from the result in dimension 1}}
  %0 = kiln.concat %a, %b {axis = 0 : i64} : tensor<4x4xbf16>, tensor<4x5xbf16> -> tensor<8x4xbf16>
  return
}

// -----

func.func @concat_total(%a: tensor<4x4xbf16>, %b: tensor<4x4xbf16>) {
  // expected-error @+1 {{'kiln.concat' op result dimension 0 is 9 but the inputs add up to 8}}
  %0 = kiln.concat %a, %b {axis = 0 : i64} : tensor<4x4xbf16>, tensor<4x4xbf16> -> tensor<9x4xbf16>
  return
}

// -----

func.func @split_rank(%x: tensor<?x4x4xf32>) {
  // expected-error @+1 {{'kiln.split' op expected 2-D input, got rank 3}}
  %0 = kiln.split %x : tensor<?x4x4xf32> -> tensor<?x16xf32>
  return
}

// -----

func.func @split_result_type(%x: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.split' op result 1 ('tensor<?x8xbf16>') must be 2-D with a static width and the input's element type}}
  %0:2 = kiln.split %x : tensor<?x16xf32> -> tensor<?x8xf32>, tensor<?x8xbf16>
  return
}

// -----

func.func @split_tokens(%x: tensor<4x16xf32>) {
  // expected-error @+1 {{'kiln.split' op token dimension of result (5) does not match 4}}
  %0:2 = kiln.split %x : tensor<4x16xf32> -> tensor<4x8xf32>, tensor<5x8xf32>
  return
}

// -----

func.func @split_widths(%x: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.split' op result widths add up to 12 but the input has 16}}
  %0:2 = kiln.split %x : tensor<?x16xf32> -> tensor<?x8xf32>, tensor<?x4xf32>
  return
}

// -----

func.func @packed_swiglu_width(%x: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.packed_swiglu' op input width 16 must be twice the result width 6}}
  %0 = kiln.packed_swiglu %x : tensor<?x16xf32> -> tensor<?x6xf32>
  return
}

// -----

func.func @packed_swiglu_element_type(%x: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.packed_swiglu' op input and result element types differ}}
  %0 = kiln.packed_swiglu %x : tensor<?x16xf32> -> tensor<?x8xbf16>
  return
}

// -----

func.func @add_rms_norm_weight(%x: tensor<?x16xf32>, %w: tensor<8xbf16>) {
  // expected-error @+1 {{'kiln.add_rms_norm' op weight size 8 does not match feature dimension 16}}
  %0:2 = kiln.add_rms_norm %x, %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<8xbf16>
  return
}

// -----

func.func @add_rms_norm_epsilon(%x: tensor<?x16xf32>, %w: tensor<16xbf16>) {
  // expected-error @+1 {{'kiln.add_rms_norm' op expected a positive finite epsilon, got 0}}
  %0:2 = kiln.add_rms_norm %x, %x, %w {epsilon = 0.0 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  return
}

// -----

func.func @qkv_epilogue_kv_types(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.qkv_epilogue' op key and value types differ: 'tensor<?x8xf32>' vs 'tensor<?x8xbf16>'}}
  %0:3 = kiln.qkv_epilogue %qkv, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xbf16>
  return
}

// -----

func.func @qkv_epilogue_result_type(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.qkv_epilogue' op results must have the token count and element type of qkv}}
  %0:3 = kiln.qkv_epilogue %qkv, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xbf16>, tensor<?x8xf32>, tensor<?x8xf32>
  return
}

// -----

func.func @qkv_epilogue_heads(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.qkv_epilogue' op feature dimension 16 is not divisible by num_heads = 3}}
  %0:3 = kiln.qkv_epilogue %qkv, %pos {num_heads = 3 : i64, num_kv_heads = 2 : i64} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  return
}

// -----

func.func @qkv_epilogue_width(%qkv: tensor<?x40xf32>, %pos: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.qkv_epilogue' op qkv width 40 is not q + k + v = 32 columns}}
  %0:3 = kiln.qkv_epilogue %qkv, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64} : tensor<?x40xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  return
}

// -----

func.func @qkv_epilogue_freq_count(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.qkv_epilogue' op expected 2 inv_freq values (head_dim / 2), got 1}}
  %0:3 = kiln.qkv_epilogue %qkv, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64, inv_freq = array<f64: 1.0>} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  return
}

// -----

func.func @qkv_epilogue_freq_nan(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.qkv_epilogue' op inv_freq[1] must be finite and non-negative, got nan}}
  %0:3 = kiln.qkv_epilogue %qkv, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64, inv_freq = array<f64: 1.0, 0x7FF8000000000000>} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  return
}

// -----

func.func @qkv_epilogue_epsilon(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.qkv_epilogue' op expected a positive finite epsilon, got 0}}
  %0:3 = kiln.qkv_epilogue %qkv, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64, qk_norm_epsilon = 0.0 : f64} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  return
}

// -----

func.func @qkv_epilogue_half_temperature(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.qkv_epilogue' op temperature tuning needs both attn_scale and floor_scale}}
  %0:3 = kiln.qkv_epilogue %qkv, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64, floor_scale = 8 : i64} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  return
}

// -----

func.func @qkv_epilogue_floor_scale(%qkv: tensor<?x32xf32>, %pos: tensor<?xi64>) {
  // expected-error @+1 {{'kiln.qkv_epilogue' op expected a positive floor_scale, got -1}}
  %0:3 = kiln.qkv_epilogue %qkv, %pos {num_heads = 4 : i64, num_kv_heads = 2 : i64, attn_scale = 0.1 : f64, floor_scale = -1 : i64} : tensor<?x32xf32>, tensor<?xi64> -> tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  return
}

// -----

func.func @moe_route_router(%u: tensor<?x16xf32>, %r: tensor<4x8xbf16>) {
  // expected-error @+1 {{'kiln.moe_route' op router must be a static [experts, 16], got 'tensor<4x8xbf16>'}}
  %0:3 = kiln.moe_route %u, %r {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x8xbf16> -> tensor<?xi64>, tensor<5xi64>, tensor<?xf32>
  return
}

// -----

func.func @moe_route_top_k(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>) {
  // expected-error @+1 {{'kiln.moe_route' op top_k must be in [1, 4], got 0}}
  %0:3 = kiln.moe_route %u, %r {top_k = 0 : i64} : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<5xi64>, tensor<?xf32>
  return
}

// -----

func.func @moe_route_offsets(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>) {
  // expected-error @+1 {{'kiln.moe_route' op expert_offsets must have 5 entries (experts + 1), got 4}}
  %0:3 = kiln.moe_route %u, %r {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<4xi64>, tensor<?xf32>
  return
}

// -----

func.func @moe_route_pairs(%u: tensor<3x16xf32>, %r: tensor<4x16xbf16>) {
  // expected-error @+1 {{'kiln.moe_route' op expected 6 dispatched pairs, got 3}}
  %0:3 = kiln.moe_route %u, %r {top_k = 2 : i64} : tensor<3x16xf32>, tensor<4x16xbf16> -> tensor<3xi64>, tensor<5xi64>, tensor<3xf32>
  return
}

// -----

func.func @moe_route_gates_length(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>) {
  // expected-error @+1 {{'kiln.moe_route' op gates and token_indices differ in length}}
  %0:3 = kiln.moe_route %u, %r {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<3xi64>, tensor<5xi64>, tensor<4xf32>
  return
}

// -----

func.func @expert_gate_up_weights(%u: tensor<?x16xf32>, %i: tensor<?xi64>, %o: tensor<5xi64>, %g: tensor<?xf32>, %gu: tensor<4x16x20xbf16>) {
  // expected-error @+1 {{'kiln.expert_gate_up' op gate_up must be a static [E, 16, 2 * 12], got 'tensor<4x16x20xbf16>'}}
  %0 = kiln.expert_gate_up %u, %i, %o, %g, %gu : tensor<?x16xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<4x16x20xbf16> -> tensor<?x12xf32>
  return
}

// -----

func.func @expert_gate_up_rows(%u: tensor<?x16xf32>, %i: tensor<3xi64>, %o: tensor<5xi64>, %g: tensor<3xf32>, %gu: tensor<4x16x24xbf16>) {
  // expected-error @+1 {{'kiln.expert_gate_up' op token dimension of result (4) does not match 3}}
  %0 = kiln.expert_gate_up %u, %i, %o, %g, %gu : tensor<?x16xf32>, tensor<3xi64>, tensor<5xi64>, tensor<3xf32>, tensor<4x16x24xbf16> -> tensor<4x12xf32>
  return
}

// -----

func.func @expert_down_weights(%h: tensor<?x12xf32>, %i: tensor<?xi64>, %o: tensor<5xi64>, %dn: tensor<4x12x8xbf16>, %a: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.expert_down' op down must be a static [E, 12, 16], got 'tensor<4x12x8xbf16>'}}
  %0 = kiln.expert_down %h, %i, %o, %dn, %a : tensor<?x12xf32>, tensor<?xi64>, tensor<5xi64>, tensor<4x12x8xbf16>, tensor<?x16xf32>
  return
}

// -----

func.func @expert_down_offsets(%h: tensor<?x12xf32>, %i: tensor<?xi64>, %o: tensor<3xi64>, %dn: tensor<4x12x16xbf16>, %a: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.expert_down' op expert_offsets must have 5 entries (experts + 1), got 3}}
  %0 = kiln.expert_down %h, %i, %o, %dn, %a : tensor<?x12xf32>, tensor<?xi64>, tensor<3xi64>, tensor<4x12x16xbf16>, tensor<?x16xf32>
  return
}

// -----

func.func @expert_down_rows(%h: tensor<2x12xf32>, %i: tensor<3xi64>, %o: tensor<5xi64>, %dn: tensor<4x12x16xbf16>, %a: tensor<?x16xf32>) {
  // expected-error @+1 {{'kiln.expert_down' op token dimension of hidden (2) does not match 3}}
  %0 = kiln.expert_down %h, %i, %o, %dn, %a : tensor<2x12xf32>, tensor<3xi64>, tensor<5xi64>, tensor<4x12x16xbf16>, tensor<?x16xf32>
  return
}

// -----

// expected-error @+1 {{'kiln.weight' on argument 0 must be a non-empty string naming a checkpoint tensor}}
func.func @weight_attr_not_string(%w: tensor<4xbf16> {kiln.weight = 3 : i64}) {
  return
}

// -----

// expected-error @+1 {{weight argument 0 ('w') must be a statically shaped tensor of f32, f16 or bf16, got 'tensor<?xbf16>'}}
func.func @weight_dynamic_shape(%w: tensor<?xbf16> {kiln.weight = "w"}) {
  return
}

// -----

// expected-error @+1 {{weight argument 0 ('w') must be a statically shaped tensor of f32, f16 or bf16, got 'tensor<4xi8>'}}
func.func @weight_integer(%w: tensor<4xi8> {kiln.weight = "w"}) {
  return
}

// -----

// expected-error @+1 {{'kiln.input' on argument 0 must be "tokens", "positions" or "rank"}}
func.func @input_unknown(%t: tensor<?xi32> {kiln.input = "images"}) {
  return
}

// -----

// expected-error @+1 {{input argument 0 (positions) must be a 1-D tensor of i64, got 'tensor<?xi32>'}}
func.func @input_positions_i32(%p: tensor<?xi32> {kiln.input = "positions"}) {
  return
}

// -----

// expected-error @+1 {{'kiln.host_panel' on argument 0 must be a positive column count dividing the last extent of a static 3-D memref, got 24 : i64 on 'memref<4x16x32xbf16>'}}
func.func @host_panel_not_dividing(%w: memref<4x16x32xbf16> {kiln.host_panel = 24 : i64}) {
  return
}

// -----

// expected-error @+1 {{'kiln.host_panel' on argument 0 must be a positive column count dividing the last extent of a static 3-D memref, got 16 : i64 on 'tensor<4x16x32xbf16>'}}
func.func @host_panel_on_tensor(%w: tensor<4x16x32xbf16> {kiln.host_panel = 16 : i64}) {
  return
}

// -----

// expected-error @+1 {{unknown kiln argument attribute 'kiln.wieght'}}
func.func @unknown_kiln_arg_attr(%w: tensor<4xbf16> {kiln.wieght = "w"}) {
  return
}

// -----

// expected-error @+1 {{'kiln.kernel' must be a #kiln.kernel<...> kind, got "gemm"}}
func.func private @kernel_kind_as_string() attributes {kiln.kernel = "gemm"} {
  return
}

// -----

// expected-error @+2 {{expected ::mlir::kiln::KernelKind to be one of: memory, gemm, attention, moe, router, grouped_gemm}}
// expected-error @+1 {{failed to parse Kiln_KernelKindAttr parameter 'value'}}
func.func private @unknown_kernel_kind() attributes {kiln.kernel = #kiln.kernel<conv>} {
  return
}

// -----

// expected-error @+1 {{'kiln.kernel' marks kernel functions only}}
module attributes {kiln.kernel = #kiln.kernel<gemm>} {
}

// -----

// expected-error @+1 {{unknown kiln attribute 'kiln.kernal'}}
func.func private @misspelled_kernel_attr() attributes {kiln.kernal = #kiln.kernel<gemm>} {
  return
}

// -----

// expected-error @+1 {{'kiln.eos_token_ids' must be an array<i64> on the module}}
module attributes {kiln.eos_token_ids = [1, 2]} {
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64} {
func.func @gpu_steps_on_an_all_reduce(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{'kiln.gpu_steps' must be an array on a kernel function or a token exchange}}
  %y = kiln.all_reduce %x {ranks = 2 : i64, kiln.gpu_steps = []} : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64} {
func.func @all_reduce_one_rank(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{needs at least 2 ranks, got 1}}
  %y = kiln.all_reduce %x {ranks = 1 : i64} : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

func.func @all_reduce_outside_tensor_parallel(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{reduces over 2 ranks but the module is not a tensor-parallel graph of that many ranks}}
  %y = kiln.all_reduce %x {ranks = 2 : i64} : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 2 : i64} {
func.func @all_reduce_over_world_with_replicas(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{reduces over 4 ranks but the module is not a tensor-parallel graph of that many ranks per attention replica}}
  %y = kiln.all_reduce %x {ranks = 4 : i64} : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

// expected-error @+1 {{'kiln.attention_replicas' must be an integer of at least 2 on a module whose 'kiln.tensor_parallel' it divides}}
module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 3 : i64} {
}

// -----

// expected-error @+1 {{'kiln.attention_replicas' must be an integer of at least 2 on a module whose 'kiln.tensor_parallel' it divides}}
module attributes {kiln.attention_replicas = 2 : i64} {
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64, kiln.attention_replicas = 2 : i64} {
func.func @all_gather_one_replica(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{needs at least 2 replicas, got 1}}
  %y = kiln.all_gather %x {ranks = 2 : i64, replicas = 1 : i64} : tensor<?x8xf32> -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64} {
func.func @all_gather_without_replicas(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{exchanges rows of 2 replicas over 4 ranks but the module is not a graph of that many data-parallel attention replicas and ranks}}
  %y = kiln.all_gather %x {ranks = 4 : i64, replicas = 2 : i64} : tensor<?x8xf32> -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64, kiln.attention_replicas = 2 : i64} {
func.func @all_gather_width(%x: tensor<?x8xf32>) -> tensor<?x4xf32> {
  // expected-error @+1 {{needs [tokens, width] tensors of one static width, got 'tensor<?x8xf32>' and 'tensor<?x4xf32>'}}
  %y = kiln.all_gather %x {ranks = 2 : i64, replicas = 2 : i64} : tensor<?x8xf32> -> tensor<?x4xf32>
  return %y : tensor<?x4xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64, kiln.attention_replicas = 2 : i64} {
func.func @all_gather_static_rows(%x: tensor<3x8xf32>) -> tensor<6x8xf32> {
  // expected-error @+1 {{must have a dynamic row count, got 'tensor<6x8xf32>'}}
  %y = kiln.all_gather %x {ranks = 2 : i64, replicas = 2 : i64} : tensor<3x8xf32> -> tensor<6x8xf32>
  return %y : tensor<6x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64, kiln.attention_replicas = 2 : i64} {
func.func @reduce_scatter_static_rows(%x: tensor<6x8xf32>, %like: tensor<3x8xf32>) -> tensor<3x8xf32> {
  // expected-error @+1 {{must take gathered rows (a dynamic row count), got 'tensor<6x8xf32>'}}
  %y = kiln.reduce_scatter %x like %like {ranks = 2 : i64, replicas = 2 : i64} : tensor<6x8xf32> -> tensor<3x8xf32>
  return %y : tensor<3x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64, kiln.attention_replicas = 2 : i64} {
func.func @reduce_scatter_width(%x: tensor<?x4xf32>, %like: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{needs [tokens, width] tensors of one static width, got 'tensor<?x4xf32>' and 'tensor<?x8xf32>'}}
  %y = kiln.reduce_scatter %x like %like {ranks = 2 : i64, replicas = 2 : i64} : tensor<?x4xf32> -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

// expected-error @+1 {{'kiln.tensor_parallel' must be an integer of at least 2 on the module}}
module attributes {kiln.tensor_parallel = 1 : i64} {
}

// -----

// expected-error @+1 {{argument 0 of type 'tensor<8x6xbf16>' has no dimension 2 made of 1 equal groups to shard}}
func.func @shard_missing_dim(%w: tensor<8x6xbf16> {kiln.weight = "w", kiln.shard = #kiln.shard<dim = 2, parts = 2>}) {
  return
}

// -----

// expected-error @+1 {{has no dimension 1 made of 4 equal groups to shard}}
func.func @shard_groups(%w: tensor<8x6xbf16> {kiln.weight = "w", kiln.shard = #kiln.shard<dim = 1, parts = 2, groups = 4>}) {
  return
}

// -----

// expected-error @+1 {{#kiln.shard needs dim >= 0, parts >= 1, groups >= 1 and stride >= 0 (got dim = 0, parts = 0, groups = 1, stride = 0)}}
func.func @shard_no_parts(%w: tensor<8x6xbf16> {kiln.weight = "w", kiln.shard = #kiln.shard<dim = 0, parts = 0>}) {
  return
}

// -----

// expected-error @+1 {{argument 0 is split twice along dimension 0}}
func.func @shard_twice(%w: tensor<2x6xbf16> {kiln.weight = "w", kiln.shard = [#kiln.shard<dim = 0, parts = 2>, #kiln.shard<dim = 0, parts = 2, stride = 1>]}) {
  return
}

// -----

// expected-error @+1 {{'kiln.shard' on argument 0 must be a #kiln.shard<...> or an array of them}}
func.func @shard_not_shards(%w: tensor<2x6xbf16> {kiln.weight = "w", kiln.shard = [1, 2]}) {
  return
}

// -----

// expected-error @+1 {{input argument 0 (rank) must be tensor<1xi64>, got 'tensor<?xi64>'}}
func.func @rank_input_shape(%r: tensor<?xi64> {kiln.input = "rank"}) {
  return
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64} {
func.func @moe_groups_without_rank(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<2x16x24xbf16>, %dn: tensor<2x12x16xbf16>) {
  // expected-error @+1 {{'kiln.moe' op is expert-parallel but lacks the rank input or the ranks attribute}}
  %0 = kiln.moe %x router %r experts %gu, %dn {expert_groups = 2 : i64, ranks = 4 : i64, top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<2x16x24xbf16>, tensor<2x12x16xbf16>
  return
}
}

// -----

func.func @moe_share_without_groups(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<2x16x24xbf16>, %dn: tensor<2x12x16xbf16>) {
  // expected-error @+1 {{'kiln.moe' op holds 2 experts but its router has 4; only an expert-parallel block (expert_groups) holds a share}}
  %0 = kiln.moe %x router %r experts %gu, %dn {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<2x16x24xbf16>, tensor<2x12x16xbf16>
  return
}

// -----

func.func @moe_rank_without_groups(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>, %rank: tensor<1xi64>) {
  // expected-error @+1 {{'kiln.moe' op takes a rank or ranks but has no expert_groups}}
  %0 = kiln.moe %x router %r experts %gu, %dn rank %rank {top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  return
}

// -----

func.func @moe_one_group(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>, %dn: tensor<4x12x16xbf16>, %rank: tensor<1xi64>) {
  // expected-error @+1 {{'kiln.moe' op expert_groups must be at least 2, got 1}}
  %0 = kiln.moe %x router %r experts %gu, %dn rank %rank {expert_groups = 1 : i64, ranks = 4 : i64, top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  return
}

// -----

func.func @moe_groups_not_dividing_ranks(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<2x16x24xbf16>, %dn: tensor<2x12x16xbf16>, %rank: tensor<1xi64>) {
  // expected-error @+1 {{'kiln.moe' op splits experts into 2 groups, which do not divide its 3 ranks}}
  %0 = kiln.moe %x router %r experts %gu, %dn rank %rank {expert_groups = 2 : i64, ranks = 3 : i64, top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<2x16x24xbf16>, tensor<2x12x16xbf16>
  return
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64} {
func.func @moe_ranks_not_module(%x: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<2x16x24xbf16>, %dn: tensor<2x12x16xbf16>, %rank: tensor<1xi64>) {
  // expected-error @+1 {{'kiln.moe' op is split over 4 ranks but the module over 2}}
  %0 = kiln.moe %x router %r experts %gu, %dn rank %rank {expert_groups = 2 : i64, ranks = 4 : i64, top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<2x16x24xbf16>, tensor<2x12x16xbf16>
  return
}
}

// -----

func.func @moe_route_share(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %rank: tensor<1xi64>) {
  // expected-error @+1 {{'kiln.moe_route' op holds 1 experts, which is not 1/2 of its router's 4}}
  %0:3 = kiln.moe_route %u, %r rank %rank {expert_groups = 2 : i64, ranks = 2 : i64, top_k = 1 : i64} : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<2xi64>, tensor<?xf32>
  return
}

// -----

// expected-error @+1 {{'kiln.pipeline_stages' must be an integer of at least 2 on the module}}
module attributes {kiln.pipeline_stages = 1 : i64} {
}

// -----

func.func @send_without_pipeline(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{'kiln.stage_send' op sends from stage 0 but the module is not a pipeline of a stage after it (kiln.pipeline_stages)}}
  %s = kiln.stage_send %x {stage = 0 : i64} : tensor<?x8xf32>
  return %s : tensor<?x8xf32>
}

// -----

module attributes {kiln.pipeline_stages = 2 : i64} {
func.func @send_from_last_stage(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{'kiln.stage_send' op sends from stage 1 but the module is not a pipeline of a stage after it (kiln.pipeline_stages)}}
  %s = kiln.stage_send %x {stage = 1 : i64} : tensor<?x8xf32>
  return %s : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.pipeline_stages = 2 : i64} {
func.func @broadcast_stage(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{'kiln.stage_broadcast' op broadcasts from stage 2 but the module is not a pipeline with that stage (kiln.pipeline_stages)}}
  %s = kiln.stage_broadcast %x {stage = 2 : i64} : tensor<?x8xf32>
  return %s : tensor<?x8xf32>
}
}

// -----

// An op that reads a stage-1 value on stage 2 without a stage_send.
module attributes {kiln.pipeline_stages = 3 : i64} {
func.func @mixed_stages(%x: tensor<?x8xf32>, %w: tensor<8xbf16> {kiln.weight = "w"}) -> tensor<?x8xf32> {
  %n = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x8xf32>, tensor<8xbf16>
  %s = kiln.stage_send %n {stage = 0 : i64} : tensor<?x8xf32>
  %y = kiln.add %s, %s : tensor<?x8xf32>
  %t = kiln.stage_send %y {stage = 1 : i64} : tensor<?x8xf32>
  // expected-error @+1 {{'kiln.add' op reads values of pipeline stages 2 and 1 (a kiln.stage_send must carry a value across)}}
  %z = kiln.add %t, %y : tensor<?x8xf32>
  return %z : tensor<?x8xf32>
}
}

// -----

// A stage-0 value read on stage 1 as well as sent there.
module attributes {kiln.pipeline_stages = 2 : i64} {
func.func @read_across(%x: tensor<?x8xf32>, %w: tensor<8xbf16> {kiln.weight = "w"}) -> tensor<?x8xf32> {
  // expected-error @+1 {{'kiln.rms_norm' op feeds ops of two pipeline stages; each stage needs its own}}
  %n = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x8xf32>, tensor<8xbf16>
  %s = kiln.stage_send %n {stage = 0 : i64} : tensor<?x8xf32>
  %y = kiln.add %s, %n : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.pipeline_stages = 2 : i64} {
func.func @send_argument(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{'kiln.stage_send' op carries a value every stage has (an argument or a broadcast result)}}
  %s = kiln.stage_send %x {stage = 0 : i64} : tensor<?x8xf32>
  return %s : tensor<?x8xf32>
}
}

// -----

// One weight read on both stages.
module attributes {kiln.pipeline_stages = 2 : i64} {
// expected-error @+1 {{'func.func' op weight argument 1 is read on two pipeline stages; each stage needs its own}}
func.func @shared_weight(%x: tensor<?x8xf32>, %w: tensor<8xbf16> {kiln.weight = "w"}) -> tensor<?x8xf32> {
  %n = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x8xf32>, tensor<8xbf16>
  %s = kiln.stage_send %n {stage = 0 : i64} : tensor<?x8xf32>
  %m = kiln.rms_norm %s, %w {epsilon = 1.0e-05 : f64} : tensor<?x8xf32>, tensor<8xbf16>
  return %m : tensor<?x8xf32>
}
}

// -----

// A send of a value computed on stage 1 that claims stage 0.
module attributes {kiln.pipeline_stages = 3 : i64} {
func.func @send_wrong_stage(%x: tensor<?x8xf32>, %w: tensor<8xbf16> {kiln.weight = "w"}) -> tensor<?x8xf32> {
  %n = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x8xf32>, tensor<8xbf16>
  %s = kiln.stage_send %n {stage = 0 : i64} : tensor<?x8xf32>
  %y = kiln.add %s, %s : tensor<?x8xf32>
  // expected-error @+1 {{'kiln.stage_send' op carries a value of stage 1 from stage 0}}
  %t = kiln.stage_send %y {stage = 0 : i64} : tensor<?x8xf32>
  return %t : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64} {
func.func @gather_partials_one_rank(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{needs at least 2 ranks, got 1}}
  %y = kiln.gather_partials %x {ranks = 1 : i64} : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 2 : i64} {
func.func @gather_partials_over_world_with_replicas(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{gathers over 4 ranks but the module is not a tensor-parallel graph of that many ranks per attention replica}}
  %y = kiln.gather_partials %x {ranks = 4 : i64} : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64} {
func.func @gather_partials_negative_rows(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-error @+1 {{max_rows must be >= 0, got -1}}
  %y = kiln.gather_partials %x {ranks = 2 : i64, max_rows = -1 : i64} : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 2 : i64} {
func.func @gather_partials_static_rows(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{needs [tokens, width] rows of a dynamic count (the result has 2 times as many), got 'tensor<4x8xf32>'}}
  %y = kiln.gather_partials %x {ranks = 2 : i64} : tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}
}

// -----

func.func @add_rms_norm_no_partials(%x: tensor<?x8xf32>, %w: tensor<8xbf16>) -> tensor<?x8xf32> {
  // expected-error @+1 {{needs at least 1 partial, got 0}}
  %s, %h = kiln.add_rms_norm %x, %x, %w {epsilon = 1.0e-05 : f64, partials = 0 : i64} : tensor<?x8xf32>, tensor<8xbf16>
  return %h : tensor<?x8xf32>
}

// -----

func.func @add_rms_norm_static_partials(%x: tensor<4x8xf32>, %w: tensor<8xbf16>) -> tensor<4x8xf32> {
  // expected-error @+1 {{sums 2 partials, which needs a dynamic row count, got 'tensor<4x8xf32>'}}
  %s, %h = kiln.add_rms_norm %x, %x, %w {epsilon = 1.0e-05 : f64, partials = 2 : i64} : tensor<4x8xf32>, tensor<8xbf16>
  return %h : tensor<4x8xf32>
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64} {
func.func @token_dispatch_without_replicas(%u: tensor<?x8xf32>, %idx: tensor<?xi64>, %off: tensor<5xi64>, %g: tensor<?xf32>, %rank: tensor<1xi64>) -> tensor<?x8xf32> {
  // expected-error @+1 {{exchanges rows of 2 replicas over 4 ranks but the module is not a graph of at least 2 data-parallel attention replicas of that many ranks}}
  %rows, %pairs, %roff, %rg = kiln.token_dispatch %u, %idx, %off, %g rank %rank {ranks = 4 : i64, replicas = 2 : i64, expert_groups = 2 : i64}
      : (tensor<?x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<1xi64>) -> (tensor<?x8xf32>, tensor<?xi64>, tensor<3xi64>, tensor<?xf32>)
  return %rows : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 2 : i64} {
func.func @token_dispatch_groups(%u: tensor<?x8xf32>, %idx: tensor<?xi64>, %off: tensor<5xi64>, %g: tensor<?xf32>, %rank: tensor<1xi64>) -> tensor<?x8xf32> {
  // expected-error @+1 {{4 experts in 3 expert groups over 4 ranks: the groups must divide both}}
  %rows, %pairs, %roff, %rg = kiln.token_dispatch %u, %idx, %off, %g rank %rank {ranks = 4 : i64, replicas = 2 : i64, expert_groups = 3 : i64}
      : (tensor<?x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<1xi64>) -> (tensor<?x8xf32>, tensor<?xi64>, tensor<3xi64>, tensor<?xf32>)
  return %rows : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 2 : i64} {
func.func @token_dispatch_local_offsets(%u: tensor<?x8xf32>, %idx: tensor<?xi64>, %off: tensor<5xi64>, %g: tensor<?xf32>, %rank: tensor<1xi64>) -> tensor<?x8xf32> {
  // expected-error @+1 {{expert_offsets must have 3 entries (experts + 1), got 5}}
  %rows, %pairs, %roff, %rg = kiln.token_dispatch %u, %idx, %off, %g rank %rank {ranks = 4 : i64, replicas = 2 : i64, expert_groups = 2 : i64}
      : (tensor<?x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<1xi64>) -> (tensor<?x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>)
  return %rows : tensor<?x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 2 : i64} {
func.func @token_dispatch_static_rows(%u: tensor<3x8xf32>, %idx: tensor<?xi64>, %off: tensor<5xi64>, %g: tensor<?xf32>, %rank: tensor<1xi64>) -> tensor<3x8xf32> {
  // expected-error @+1 {{needs [tokens, width] rows of a dynamic count and a static width, got 'tensor<3x8xf32>'}}
  %rows, %pairs, %roff, %rg = kiln.token_dispatch %u, %idx, %off, %g rank %rank {ranks = 4 : i64, replicas = 2 : i64, expert_groups = 2 : i64}
      : (tensor<3x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<1xi64>) -> (tensor<3x8xf32>, tensor<?xi64>, tensor<3xi64>, tensor<?xf32>)
  return %rows : tensor<3x8xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 2 : i64} {
func.func @token_dispatch_row_type(%u: tensor<?x8xf32>, %idx: tensor<?xi64>, %off: tensor<5xi64>, %g: tensor<?xf32>, %rank: tensor<1xi64>) -> tensor<?x4xf32> {
  // expected-error @+1 {{sends rows of 'tensor<?x8xf32>' but receives 'tensor<?x4xf32>'}}
  %rows, %pairs, %roff, %rg = kiln.token_dispatch %u, %idx, %off, %g rank %rank {ranks = 4 : i64, replicas = 2 : i64, expert_groups = 2 : i64}
      : (tensor<?x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<1xi64>) -> (tensor<?x4xf32>, tensor<?xi64>, tensor<3xi64>, tensor<?xf32>)
  return %rows : tensor<?x4xf32>
}
}

// -----

module attributes {kiln.tensor_parallel = 4 : i64, kiln.attention_replicas = 2 : i64} {
func.func @token_combine_width(%o: tensor<?x4xf32>, %u: tensor<?x8xf32>, %idx: tensor<?xi64>, %off: tensor<5xi64>, %rank: tensor<1xi64>) -> tensor<?x8xf32> {
  // expected-error @+1 {{pair outputs 'tensor<?x4xf32>' are not rows of the input's width 'tensor<?x8xf32>'}}
  %y = kiln.token_combine %o, %u, %idx, %off rank %rank {ranks = 4 : i64, replicas = 2 : i64, expert_groups = 2 : i64}
      : (tensor<?x4xf32>, tensor<?x8xf32>, tensor<?xi64>, tensor<5xi64>, tensor<1xi64>) -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
}

// -----

func.func @expert_down_pairs_down(%h: tensor<?x6xf32>, %off: tensor<3xi64>, %dn: tensor<2x5x8xbf16>) -> tensor<?x8xf32> {
  // expected-error @+1 {{down must be a static [E, 6, 8], got 'tensor<2x5x8xbf16>'}}
  %o = kiln.expert_down_pairs %h, %off, %dn : tensor<?x6xf32>, tensor<3xi64>, tensor<2x5x8xbf16> -> tensor<?x8xf32>
  return %o : tensor<?x8xf32>
}

// -----

func.func @expert_down_pairs_offsets(%h: tensor<?x6xf32>, %off: tensor<4xi64>, %dn: tensor<2x6x8xbf16>) -> tensor<?x8xf32> {
  // expected-error @+1 {{expert_offsets must have 3 entries (experts + 1), got 4}}
  %o = kiln.expert_down_pairs %h, %off, %dn : tensor<?x6xf32>, tensor<4xi64>, tensor<2x6x8xbf16> -> tensor<?x8xf32>
  return %o : tensor<?x8xf32>
}
