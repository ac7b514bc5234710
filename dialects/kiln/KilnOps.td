//===- KilnOps.td - Operations of the kiln dialect ---------*- tablegen -*-===//
//
// Every op works on ranked tensors whose first dimension is the token
// dimension T (dynamic in imported graphs). Per-head tensors stay flattened
// as [T, heads * head_dim]; ops that need the head structure take a
// `num_heads` attribute. Each op's semantics are specified in
// docs/dialect.md; verifier checks are tagged with the constraint ids used
// there (e.g. `attention_c3`).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_OPS_TD
#define KILN_OPS_TD

include "dialects/kiln/KilnDialect.td"
include "dialects/kiln/KilnAttrs.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"

// Floating-point element types a checkpoint stores or activations use.
def Kiln_Float : AnyTypeOf<[F32, F16, BF16]>;
def Kiln_FloatTensor : RankedTensorOf<[F32, F16, BF16]>;
def Kiln_IntTensor : RankedTensorOf<[I32, I64]>;
def Kiln_PositionTensor : RankedTensorOf<[I64]>;
// The `kiln.input = "rank"` argument of a tensor-parallel graph.
def Kiln_RankTensor : Type<
    CPred<"::llvm::isa<::mlir::RankedTensorType>($_self) && "
          "::llvm::cast<::mlir::RankedTensorType>($_self).getShape() == "
          "::llvm::ArrayRef<int64_t>{1} && "
          "::llvm::cast<::mlir::RankedTensorType>($_self)"
          ".getElementType().isInteger(64)">,
    "tensor<1xi64>", "::mlir::RankedTensorType">,
  BuildableType<"::mlir::RankedTensorType::get({1}, $_builder.getI64Type())">;

//===----------------------------------------------------------------------===//
// Embedding and element-wise ops
//===----------------------------------------------------------------------===//

def Kiln_EmbeddingOp : Kiln_Op<"embedding", [Pure]> {
  let summary = "token embedding lookup";
  let description = [{
    Gathers row `tokens[t]` of `table` ([vocab, hidden], checkpoint layout)
    for every token t. No scaling. Token ids outside [0, vocab) are a runtime
    error of the evaluator. See docs/dialect.md#kilnembedding.

    ```mlir
    %x = kiln.embedding %table[%tokens]
        : tensor<202048x5120xbf16>, tensor<?xi32> -> tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$table, Kiln_IntTensor:$tokens);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $table `[` $tokens `]` attr-dict `:` type($table) `,` type($tokens)
    `->` type($result)
  }];
  let hasVerifier = 1;
}

def Kiln_AddOp : Kiln_Op<"add", [Pure, Commutative, SameOperandsAndResultType]> {
  let summary = "element-wise addition (residual connections)";
  let description = [{
    `result = lhs + rhs`. See docs/dialect.md#kilnadd.

    ```mlir
    %y = kiln.add %x, %attn : tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$lhs, Kiln_FloatTensor:$rhs);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def Kiln_SwiGluOp : Kiln_Op<"swiglu", [Pure, SameOperandsAndResultType]> {
  let summary = "SwiGLU activation: silu(gate) * up";
  let description = [{
    `result = gate * sigmoid(gate) * up`, element-wise.
    See docs/dialect.md#kilnswiglu.

    ```mlir
    %h = kiln.swiglu %g, %u : tensor<?x8192xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$gate, Kiln_FloatTensor:$up);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = "$gate `,` $up attr-dict `:` type($result)";
}

//===----------------------------------------------------------------------===//
// Norms
//===----------------------------------------------------------------------===//

def Kiln_RmsNormOp : Kiln_Op<"rms_norm", [Pure, AllTypesMatch<["input", "result"]>]> {
  let summary = "RMS normalisation over the last dimension, with a weight";
  let description = [{
    For each row x of `input` ([T, D]):
    `result = x / sqrt(mean(x^2) + epsilon) * weight` with `weight` of shape
    [D]. See docs/dialect.md#kilnrms_norm.

    ```mlir
    %h = kiln.rms_norm %x, %w {epsilon = 1.0e-05 : f64}
        : tensor<?x5120xf32>, tensor<5120xbf16>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, Kiln_FloatTensor:$weight,
                   F64Attr:$epsilon);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` type($input) `,` type($weight)
  }];
  let hasVerifier = 1;
}

def Kiln_QkNormOp : Kiln_Op<"qk_norm", [Pure, SameOperandsAndResultType]> {
  let summary = "weightless per-head RMS normalisation (Llama 4 QK norm)";
  let description = [{
    `input` is [T, num_heads * head_dim]; every head slice y of every row is
    replaced by `y / sqrt(mean(y^2) + epsilon)`. There is no weight. (Hugging
    Face calls it an L2 norm; it divides by the RMS.)
    See docs/dialect.md#kilnqk_norm.

    ```mlir
    %qn = kiln.qk_norm %q {num_heads = 40 : i64, epsilon = 1.0e-05 : f64}
        : tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, I64Attr:$num_heads,
                   F64Attr:$epsilon);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Projections
//===----------------------------------------------------------------------===//

def Kiln_LinearOp : Kiln_Op<"linear", [Pure]> {
  let summary = "projection by a weight in checkpoint [out, in] layout";
  let description = [{
    `result[t, o] = sum_i input[t, i] * weight[o, i]`, i.e. `x W^T` with the
    weight stored as Hugging Face `nn.Linear` stores it. No bias.
    See docs/dialect.md#kilnlinear.

    ```mlir
    %q = kiln.linear %h, %wq
        : tensor<?x5120xf32>, tensor<5120x5120xbf16> -> tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, Kiln_FloatTensor:$weight);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` type($input) `,` type($weight)
    `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

def Kiln_RopeOp : Kiln_Op<"rope", [Pure, AllTypesMatch<["input", "result"]>]> {
  let summary = "rotary position embedding on interleaved pairs";
  let description = [{
    `input` is [T, num_heads * head_dim]. Within each head, the pair
    (x[2m], x[2m+1]) of row t is rotated by the angle
    `positions[t] * inv_freq[m]`, m = 0 .. head_dim/2 - 1:
    `x'[2m] = x[2m] cos - x[2m+1] sin`, `x'[2m+1] = x[2m] sin + x[2m+1] cos`.
    This is the interleaved ("complex", GPT-J) layout Llama 4 checkpoints
    use, not rotate-half. `inv_freq` holds the final per-pair frequencies
    (llama3 scaling already applied). See docs/dialect.md#kilnrope.

    ```mlir
    %qr = kiln.rope %q, %pos {num_heads = 40 : i64,
                              inv_freq = array<f64: 1.0, 0.8, ...>}
        : tensor<?x5120xf32>, tensor<?xi64>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, Kiln_PositionTensor:$positions,
                   I64Attr:$num_heads, DenseF64ArrayAttr:$inv_freq);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $positions attr-dict `:` type($input) `,` type($positions)
  }];
  let hasVerifier = 1;
}

def Kiln_AttentionOp : Kiln_Op<"attention", [Pure,
    AllTypesMatch<["query", "result"]>]> {
  let summary = "masked multi-head self-attention with grouped KV heads";
  let description = [{
    Self-attention over the token sequence. `query` is
    [T, num_heads * d], `key` and `value` are [T, num_kv_heads * d];
    query head h reads KV head `h / (num_heads / num_kv_heads)`.
    `positions` gives the absolute position of every token. Token s is
    visible to token t iff `positions[s] <= positions[t]` and, for
    `mask = #kiln.mask<chunked>`, both lie in the same block of
    `chunk_size` positions aligned at 0 (not a sliding window).

    When `attn_scale` and `floor_scale` are given (temperature tuning),
    the query row of token t is first multiplied by
    `1 + attn_scale * ln(1 + floor((positions[t] + 1) / floor_scale))`.
    Scores are `q . k * scale`, softmax over visible keys, output
    `sum_s p_s v_s`. See docs/dialect.md#kilnattention.

    ```mlir
    %o = kiln.attention %q, %k, %v, %pos {
        num_heads = 40 : i64, num_kv_heads = 8 : i64,
        scale = 0.08838834764831845 : f64,
        mask = #kiln.mask<chunked>, chunk_size = 8192 : i64}
        : tensor<?x5120xf32>, tensor<?x1024xf32>, tensor<?x1024xf32>,
          tensor<?xi64>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$query, Kiln_FloatTensor:$key,
                   Kiln_FloatTensor:$value, Kiln_PositionTensor:$positions,
                   I64Attr:$num_heads, I64Attr:$num_kv_heads, F64Attr:$scale,
                   Kiln_MaskKindAttr:$mask, OptionalAttr<I64Attr>:$chunk_size,
                   OptionalAttr<F64Attr>:$attn_scale,
                   OptionalAttr<I64Attr>:$floor_scale);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $query `,` $key `,` $value `,` $positions attr-dict `:` type($query) `,`
    type($key) `,` type($value) `,` type($positions)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Mixture of experts
//===----------------------------------------------------------------------===//

def Kiln_MoeOp : Kiln_Op<"moe", [Pure, AttrSizedOperandSegments,
    AllTypesMatch<["input", "result"]>]> {
  let summary = "Llama 4 mixture-of-experts block (top-k sigmoid routing)";
  let description = [{
    For each row u of `input` ([T, D]):
    router logits `r = u router^T` (`router` is [E, D]); the `top_k` largest
    logits select experts; expert e receives the *scaled input*
    `sigmoid(r_e) * u` (sigmoid, no renormalisation, applied to the expert
    input, not its output) and computes
    `(silu(z G_e) * (z U_e)) Dn_e` with `G_e = gate_up[e, :, 0:F]`,
    `U_e = gate_up[e, :, F:2F]` (gate first; [E, D, 2F] is [in, out]) and
    `Dn_e = down[e]` ([E, F, D], [in, out]). When the three `shared_*`
    weights are present, the shared expert
    `(silu(u Wg^T) * (u Wu^T)) Wd^T` (checkpoint [out, in] layout) is added,
    ungated.

    Expert parallelism (`expert_groups = G` of `ranks = R`, with the `rank`
    input): `gate_up` and `down` hold the E / G experts of the rank's group,
    experts `g E / G .. (g + 1) E / G - 1` with `g = rank G / R`; tokens routed to other experts add nothing here (their
    group's ranks add them in the all-reduce that follows). The router is
    whole. See docs/dialect.md#kilnmoe.

    ```mlir
    %y = kiln.moe %u router %wr experts %gu, %dn
           shared %sg, %su, %sd {top_k = 1 : i64}
        : tensor<?x5120xf32>, tensor<16x5120xbf16>, tensor<16x5120x16384xbf16>,
          tensor<16x8192x5120xbf16>, tensor<8192x5120xbf16>,
          tensor<8192x5120xbf16>, tensor<5120x8192xbf16>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, Kiln_FloatTensor:$router,
                   Kiln_FloatTensor:$gate_up, Kiln_FloatTensor:$down,
                   Optional<Kiln_FloatTensor>:$shared_gate,
                   Optional<Kiln_FloatTensor>:$shared_up,
                   Optional<Kiln_FloatTensor>:$shared_down,
                   Optional<Kiln_RankTensor>:$rank,
                   I64Attr:$top_k, OptionalAttr<I64Attr>:$expert_groups,
                   OptionalAttr<I64Attr>:$ranks);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $input `router` $router `experts` $gate_up `,` $down
    (`shared` $shared_gate^ `,` $shared_up `,` $shared_down)?
    (`rank` $rank^)? attr-dict `:` type($input) `,` type($router) `,` type($gate_up) `,`
    type($down) (`,` type($shared_gate)^ `,` type($shared_up) `,`
    type($shared_down))?
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Fused forms (produced by the graph passes of lib/Transforms)
//===----------------------------------------------------------------------===//

def Kiln_ConcatOp : Kiln_Op<"concat", [Pure]> {
  let summary = "concatenation of weights along one axis (repacking)";
  let description = [{
    Concatenates statically shaped tensors along `axis`. Fusion passes use it
    to repack checkpoint weights (e.g. q, k and v projections into one
    `[Hq*d + 2*Hkv*d, D]` matrix); an engine performs it once when weights are
    bound. See docs/dialect.md#kilnconcat.

    ```mlir
    %wqkv = kiln.concat %wq, %wk, %wv {axis = 0 : i64}
        : tensor<5120x5120xbf16>, tensor<1024x5120xbf16>, tensor<1024x5120xbf16>
        -> tensor<7168x5120xbf16>
    ```
  }];
  let arguments = (ins Variadic<Kiln_FloatTensor>:$inputs, I64Attr:$axis);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $inputs attr-dict `:` type($inputs) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Kiln_SplitOp : Kiln_Op<"split", [Pure]> {
  let summary = "split of the feature dimension into consecutive parts";
  let description = [{
    `input` is [T, N]; result i holds the next `width(result i)` columns, in
    order. The widths must add up to N. See docs/dialect.md#kilnsplit.

    ```mlir
    %q, %k, %v = kiln.split %qkv : tensor<?x7168xf32>
        -> tensor<?x5120xf32>, tensor<?x1024xf32>, tensor<?x1024xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input);
  let results = (outs Variadic<Kiln_FloatTensor>:$results);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($results)";
  let hasVerifier = 1;
}

def Kiln_PackedSwiGluOp : Kiln_Op<"packed_swiglu", [Pure]> {
  let summary = "SwiGLU of a packed [gate | up] tensor";
  let description = [{
    `input` is [T, 2F] with the gate in columns 0..F-1 and up in F..2F-1;
    `result = silu(gate) * up`, [T, F]. The epilogue of a fused gate/up
    projection. See docs/dialect.md#kilnpacked_swiglu.

    ```mlir
    %h = kiln.packed_swiglu %gu : tensor<?x32768xf32> -> tensor<?x16384xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Kiln_AddRmsNormOp : Kiln_Op<"add_rms_norm", [Pure,
    AllTypesMatch<["input", "residual", "sum", "normed"]>]> {
  let summary = "residual add followed by RMS normalisation";
  let description = [{
    `sum = input + residual`; `normed = rms_norm(sum, weight, epsilon)`. One
    pass over the residual stream yields both the new residual and the
    normalised input of the next block.

    With `partials = P` (from kiln-fuse-all-reduce-norm), `input` holds the
    P ranks' partial sums as consecutive blocks of the residual's rows
    (`kiln.gather_partials`; the row count is dynamic, so the types still
    match), and `sum = input[0] + ... + input[P-1] + residual`: the all-reduce's sum is formed here, in the same pass. A
    backend may hand the op fewer blocks whose sum is the same (one block:
    the all-reduced sum) when that is cheaper; the op sums the blocks it
    gets. See docs/dialect.md#kilnadd_rms_norm.

    ```mlir
    %x1, %h = kiln.add_rms_norm %x, %attn, %w {epsilon = 1.0e-05 : f64}
        : tensor<?x5120xf32>, tensor<5120xbf16>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, Kiln_FloatTensor:$residual,
                   Kiln_FloatTensor:$weight, F64Attr:$epsilon,
                   DefaultValuedAttr<I64Attr, "1">:$partials);
  let results = (outs Kiln_FloatTensor:$sum, Kiln_FloatTensor:$normed);
  let assemblyFormat = [{
    $input `,` $residual `,` $weight attr-dict `:` type($input) `,`
    type($weight)
  }];
  let hasVerifier = 1;
}

def Kiln_QkvEpilogueOp : Kiln_Op<"qkv_epilogue", [Pure]> {
  let summary = "split of a fused QKV projection with RoPE, QK norm and temperature";
  let description = [{
    `qkv` is `[T, (num_heads + 2 * num_kv_heads) * d]` (q, then k, then v
    columns). Returns q `[T, num_heads * d]`, k and v `[T, num_kv_heads * d]`
    after, in this order: RoPE on q and k when `inv_freq` is present (as
    `kiln.rope`), weightless QK norm on q and k when `qk_norm_epsilon` is
    present (as `kiln.qk_norm`), and the attention temperature on q when
    `attn_scale` and `floor_scale` are present (as in `kiln.attention`).
    It is the epilogue of the QKV GEMM. See docs/dialect.md#kilnqkv_epilogue.

    ```mlir
    %q, %k, %v = kiln.qkv_epilogue %qkv, %pos {num_heads = 40 : i64,
        num_kv_heads = 8 : i64, inv_freq = array<f64: ...>,
        qk_norm_epsilon = 1.0e-05 : f64}
        : tensor<?x7168xf32>, tensor<?xi64>
        -> tensor<?x5120xf32>, tensor<?x1024xf32>, tensor<?x1024xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$qkv, Kiln_PositionTensor:$positions,
                   I64Attr:$num_heads, I64Attr:$num_kv_heads,
                   OptionalAttr<DenseF64ArrayAttr>:$inv_freq,
                   OptionalAttr<F64Attr>:$qk_norm_epsilon,
                   OptionalAttr<F64Attr>:$attn_scale,
                   OptionalAttr<I64Attr>:$floor_scale);
  let results = (outs Kiln_FloatTensor:$query, Kiln_FloatTensor:$key,
                      Kiln_FloatTensor:$value);
  let assemblyFormat = [{
    $qkv `,` $positions attr-dict `:` type($qkv) `,` type($positions) `->`
    type($query) `,` type($key) `,` type($value)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Decomposed mixture of experts (kiln-decompose-moe)
//===----------------------------------------------------------------------===//

def Kiln_MoeRouteOp : Kiln_Op<"moe_route", [Pure]> {
  let summary = "router GEMM, top-k, sigmoid gate and dispatch by expert";
  let description = [{
    For each token t of `input` ([T, D]): router logits `r = u router^T`
    (`router` is [E, D]); the `top_k` largest select experts (ties to the
    lower index). The T * top_k (token, expert) pairs are sorted by expert,
    keeping token order within an expert. Results: `token_indices` (the
    token of each sorted pair), `expert_offsets` ([E + 1]: expert e owns
    pairs `expert_offsets[e] .. expert_offsets[e + 1] - 1`) and `gates`
    (`sigmoid(r_e)` of each pair).

    With `expert_groups = G`, `ranks = R` and the `rank` input (as on
    kiln.moe), the
    offsets cover only the E / G experts of the rank's group
    ([E / G + 1]); pairs of other experts come after them as token 0 with
    gate 0, which no expert reads. See docs/dialect.md#kilnmoe_route.

    ```mlir
    %idx, %offsets, %gates = kiln.moe_route %u, %router {top_k = 1 : i64}
        : tensor<?x5120xf32>, tensor<16x5120xbf16>
        -> tensor<?xi64>, tensor<17xi64>, tensor<?xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, Kiln_FloatTensor:$router,
                   Optional<Kiln_RankTensor>:$rank,
                   I64Attr:$top_k, OptionalAttr<I64Attr>:$expert_groups,
                   OptionalAttr<I64Attr>:$ranks);
  let results = (outs Kiln_PositionTensor:$token_indices,
                      Kiln_PositionTensor:$expert_offsets,
                      Kiln_FloatTensor:$gates);
  let assemblyFormat = [{
    $input `,` $router (`rank` $rank^)? attr-dict `:` type($input) `,` type($router) `->`
    type($token_indices) `,` type($expert_offsets) `,` type($gates)
  }];
  let hasVerifier = 1;
}

def Kiln_ExpertGateUpOp : Kiln_Op<"expert_gate_up", [Pure]> {
  let summary = "grouped gate/up GEMM of the routed experts with SwiGLU";
  let description = [{
    One row per dispatched pair i (expert e, `expert_offsets[e] <= i <
    expert_offsets[e + 1]`): with the gated input
    `z = gates[i] * input[token_indices[i]]`, the row is
    `silu(z G_e) * (z U_e)` where `G_e = gate_up[e, :, 0:F]` and
    `U_e = gate_up[e, :, F:2F]`. Result [pairs, F].
    See docs/dialect.md#kilnexpert_gate_up.

    ```mlir
    %h = kiln.expert_gate_up %u, %idx, %offsets, %gates, %gate_up
        : tensor<?x5120xf32>, tensor<?xi64>, tensor<17xi64>, tensor<?xf32>,
          tensor<16x5120x16384xbf16> -> tensor<?x8192xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input,
                   Kiln_PositionTensor:$token_indices,
                   Kiln_PositionTensor:$expert_offsets,
                   Kiln_FloatTensor:$gates, Kiln_FloatTensor:$gate_up);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $token_indices `,` $expert_offsets `,` $gates `,` $gate_up
    attr-dict `:` type($input) `,` type($token_indices) `,`
    type($expert_offsets) `,` type($gates) `,` type($gate_up) `->`
    type($result)
  }];
  let hasVerifier = 1;
}

def Kiln_ExpertDownOp : Kiln_Op<"expert_down", [Pure,
    AllTypesMatch<["addend", "result"]>]> {
  let summary = "grouped down GEMM of the routed experts, combined per token";
  let description = [{
    `result = addend`, then for every dispatched pair i of expert e:
    `result[token_indices[i]] += hidden[i] Dn_e` with `Dn_e = down[e]`
    ([E, F, D], [in, out]). `addend` carries what the block adds
    unconditionally (the shared expert). See docs/dialect.md#kilnexpert_down.

    ```mlir
    %y = kiln.expert_down %h, %idx, %offsets, %down, %shared
        : tensor<?x8192xf32>, tensor<?xi64>, tensor<17xi64>,
          tensor<16x8192x5120xbf16>, tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$hidden,
                   Kiln_PositionTensor:$token_indices,
                   Kiln_PositionTensor:$expert_offsets,
                   Kiln_FloatTensor:$down, Kiln_FloatTensor:$addend);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $hidden `,` $token_indices `,` $expert_offsets `,` $down `,` $addend
    attr-dict `:` type($hidden) `,` type($token_indices) `,`
    type($expert_offsets) `,` type($down) `,` type($addend)
  }];
  let hasVerifier = 1;
}

def Kiln_ExpertDownPairsOp : Kiln_Op<"expert_down_pairs", [Pure]> {
  let summary = "grouped down GEMM of the routed experts, a row per pair";
  let description = [{
    For every pair i of expert e (`expert_offsets[e] <= i <
    expert_offsets[e + 1]`): `result[i] = hidden[i] Dn_e` with
    `Dn_e = down[e]` ([E, F, D]). Unlike `kiln.expert_down` nothing is
    combined per token: the pairs came from other ranks
    (`kiln.token_dispatch`) and go back to them (`kiln.token_combine`).
    See docs/dialect.md#kilnexpert_down_pairs.

    ```mlir
    %out = kiln.expert_down_pairs %h, %offsets, %down
        : tensor<?x8192xf32>, tensor<3xi64>, tensor<2x8192x5120xbf16>
        -> tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$hidden,
                   Kiln_PositionTensor:$expert_offsets,
                   Kiln_FloatTensor:$down);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $hidden `,` $expert_offsets `,` $down attr-dict `:` type($hidden) `,`
    type($expert_offsets) `,` type($down) `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Collectives (tensor-parallel graphs)
//===----------------------------------------------------------------------===//

def Kiln_AllReduceOp : Kiln_Op<"all_reduce", [SameOperandsAndResultType]> {
  let summary = "sum of a tensor over the ranks of a tensor-parallel group";
  let description = [{
    Every rank of a tensor-parallel graph (module attribute
    `kiln.tensor_parallel = R`) runs the same graph on its own slices of
    the weights; `result` is the element-wise sum of `input` over the R
    ranks, the same on every rank. Placed by kiln-shard-tensor-parallel
    after the row-split GEMMs, whose per-rank products are partial sums.
    Every rank must reach the collectives in the same order. With
    data-parallel attention (`kiln.attention_replicas = D`), the group is
    the R / D ranks of one replica (`ranks` is then R / D). See
    docs/dialect.md#kilnall_reduce.

    ```mlir
    %y = kiln.all_reduce %partial {ranks = 8 : i64} : tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, I64Attr:$ranks);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Kiln_AllGatherOp : Kiln_Op<"all_gather", [AllElementTypesMatch<["input", "result"]>]> {
  let summary = "the rows of every data-parallel attention replica";
  let description = [{
    In a graph with data-parallel attention (module attributes
    `kiln.tensor_parallel = R`, `kiln.attention_replicas = D`), rank r
    belongs to replica `r / (R / D)` and each replica runs its own sequence.
    `result` is the rows of `input` of every replica, in replica order (one
    copy per replica: the ranks of a replica hold the same rows), the same
    on every rank. Replicas may hold different numbers of rows, none
    included. Placed by kiln-shard-tensor-parallel before a MoE block whose
    experts are divided over all R ranks. See docs/dialect.md#kilnall_gather.

    ```mlir
    %all = kiln.all_gather %h {ranks = 8 : i64, replicas = 2 : i64}
        : tensor<?x5120xf32> -> tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, I64Attr:$ranks,
                   I64Attr:$replicas);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Kiln_ReduceScatterOp : Kiln_Op<"reduce_scatter", [
    AllElementTypesMatch<["input", "like", "result"]>,
    AllTypesMatch<["like", "result"]>]> {
  let summary = "sum over all ranks, each replica keeping its own rows";
  let description = [{
    The inverse of `kiln.all_gather` with a sum: `input` holds rows of the
    gathered order (every replica's rows of `like`, in replica order) and is
    a partial sum on each of the R ranks; `result` is the sum over the R
    ranks (in rank order) of the rows of this rank's replica, as many as
    `like` has on it. `like` is the value that was gathered: it gives the
    rows and places them. See docs/dialect.md#kilnreduce_scatter.

    ```mlir
    %mine = kiln.reduce_scatter %partial like %h
        {ranks = 8 : i64, replicas = 2 : i64}
        : tensor<?x5120xf32> -> tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, Kiln_FloatTensor:$like,
                   I64Attr:$ranks, I64Attr:$replicas);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $input `like` $like attr-dict `:` type($input) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Kiln_GatherPartialsOp : Kiln_Op<"gather_partials", [
    AllTypesMatch<["input", "result"]>]> {
  let summary = "every rank's partial sum, stacked, for a fused reduction";
  let description = [{
    The all-gather half of an all-reduce whose sum is formed by its reader
    (`kiln.add_rms_norm` with `partials = ranks`): `result` holds the
    `input` of each of the `ranks` ranks of the group (the ranks of one
    attention replica, as for `kiln.all_reduce`), in rank order, as
    consecutive blocks of `input`'s rows (so the row count must be dynamic:
    the result has `ranks` times as many). An all-gather takes one
    communication step where a ring all-reduce takes two, and the reader
    reads the partials once instead of a summed buffer written in between;
    but it moves `ranks - 1` partials to every rank. So for steps of more
    than `max_rows` rows per rank (when given) a backend all-reduces
    instead and hands the reader the sum as a single block
    (kiln-fuse-all-reduce-norm sets `max_rows` from the cost model). See docs/dialect.md#kilngather_partials.

    ```mlir
    %p = kiln.gather_partials %partial {ranks = 8 : i64, max_rows = 28 : i64}
        : tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, I64Attr:$ranks,
                   OptionalAttr<I64Attr>:$max_rows);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Kiln_TokenDispatchOp : Kiln_Op<"token_dispatch", []> {
  let summary = "send each routed row to the ranks holding its expert";
  let description = [{
    The all-to-all way into a MoE block whose experts are divided over all
    `ranks` ranks of a graph with `replicas` data-parallel attention
    replicas (module attributes `kiln.tensor_parallel`,
    `kiln.attention_replicas`): `expert_groups = G` groups of consecutive
    ranks, group g holding experts `g E / G .. (g + 1) E / G - 1`.

    Every rank holds its replica's rows (`input`, [T, D]) and their routing
    over all E experts (`token_indices`, `expert_offsets` [E + 1] and
    `gates`, as `kiln.moe_route` gives them). The replica's T rows are
    split into pieces over its `ranks / replicas` ranks, rank j of a
    replica sending rows `T j / n .. T (j + 1) / n - 1`: each routed pair
    of a row of the piece goes, with its gate, to every rank of its
    expert's group. On the receiver the results are a router's over the
    group's E / G experts, ready for `kiln.expert_gate_up`: `rows` (one per
    received pair), `pair_indices` (0, 1, ...: pair i reads row i),
    `received_offsets` ([E / G + 1]) and `received_gates`, pairs ordered by
    expert, then sender rank, then the sender's order. The counts depend on
    the routing of every rank. See docs/dialect.md#kilntoken_dispatch.

    ```mlir
    %rows, %pairs, %offsets, %gates = kiln.token_dispatch %u, %idx, %off,
        %g rank %rank {ranks = 8 : i64, replicas = 2 : i64,
        expert_groups = 8 : i64} : (...) -> (...)
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input,
                   Kiln_PositionTensor:$token_indices,
                   Kiln_PositionTensor:$expert_offsets,
                   Kiln_FloatTensor:$gates, Kiln_RankTensor:$rank,
                   I64Attr:$ranks, I64Attr:$replicas, I64Attr:$expert_groups);
  let results = (outs Kiln_FloatTensor:$rows,
                      Kiln_PositionTensor:$pair_indices,
                      Kiln_PositionTensor:$received_offsets,
                      Kiln_FloatTensor:$received_gates);
  let assemblyFormat = [{
    $input `,` $token_indices `,` $expert_offsets `,` $gates `rank` $rank
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_TokenCombineOp : Kiln_Op<"token_combine", [
    AllTypesMatch<["input", "result"]>]> {
  let summary = "return the experts' outputs to the rows they came from";
  let description = [{
    The way back of `kiln.token_dispatch` (same operands for the routing,
    same attributes): `pair_outputs` holds, on each rank, one row of
    output per pair it received. `result` has `input`'s rows; the rows of
    this rank's piece get, for each of their routed pairs, the pair's
    output from every rank of the expert's group, summed (pair by pair in
    the rank's routing order, ranks in order; a group's ranks hold slices
    of the expert, so their outputs are partial sums); every other row is
    zero, so a sum over the replica's ranks (the all-reduce the block has
    for its shared expert) assembles the replica's rows.
    See docs/dialect.md#kilntoken_combine.

    ```mlir
    %mine = kiln.token_combine %out, %u, %idx, %off rank %rank
        {ranks = 8 : i64, replicas = 2 : i64, expert_groups = 8 : i64}
        : (...) -> tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$pair_outputs,
                   Kiln_FloatTensor:$input,
                   Kiln_PositionTensor:$token_indices,
                   Kiln_PositionTensor:$expert_offsets, Kiln_RankTensor:$rank,
                   I64Attr:$ranks, I64Attr:$replicas, I64Attr:$expert_groups);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $pair_outputs `,` $input `,` $token_indices `,` $expert_offsets `rank`
    $rank attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Pipeline stages (pipeline-parallel graphs)
//===----------------------------------------------------------------------===//

def Kiln_StageSendOp : Kiln_Op<"stage_send", [SameOperandsAndResultType]> {
  let summary = "hand a value from one pipeline stage to the next";
  let description = [{
    In a graph of P pipeline stages (module attribute
    `kiln.pipeline_stages = P`), every op runs on one stage: the stage of
    its operands, a `stage_send` result counting as stage `stage + 1`.
    `input` is computed by the ranks of stage `stage`; each sends it to the
    rank of the same tensor-parallel index in stage `stage + 1`, whose
    `result` it is. Placed by kiln-pipeline-stages where the residual
    stream crosses a stage boundary. See docs/dialect.md#kilnstage_send.

    ```mlir
    %h1 = kiln.stage_send %h {stage = 0 : i64} : tensor<?x5120xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, I64Attr:$stage);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Kiln_StageBroadcastOp : Kiln_Op<"stage_broadcast",
    [SameOperandsAndResultType]> {
  let summary = "make a value of one pipeline stage every rank's";
  let description = [{
    `input`, computed by the ranks of stage `stage`, becomes `result` on
    every rank of every stage (the logits, so that every rank picks the
    same next token). See docs/dialect.md#kilnstage_broadcast.

    ```mlir
    %all = kiln.stage_broadcast %logits {stage = 1 : i64} : tensor<?x202048xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, I64Attr:$stage);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
  let hasVerifier = 1;
}

#endif // KILN_OPS_TD
