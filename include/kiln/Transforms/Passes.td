//===- Passes.td - Kiln graph passes -----------------------*- tablegen -*-===//
//
// Graph-level passes on the kiln dialect. Each preserves the graph's
// semantics exactly: test/e2e/fusion.test evaluates graphs before and after
// with the reference evaluator.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TRANSFORMS_PASSES_TD
#define KILN_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

//===----------------------------------------------------------------------===//
// Fusion
//===----------------------------------------------------------------------===//

def FuseAddRmsNorm : Pass<"kiln-fuse-add-rms-norm", "mlir::func::FuncOp"> {
  let summary = "Fuse a residual add with the RMS norm that reads it";
  let description = [{
    Rewrites `rms_norm(add(x, r), w)` into one `kiln.add_rms_norm` producing
    both the sum (the new residual stream, which replaces every use of the
    add) and the normalised value: one read of the residual stream instead of
    three.

    ```mlir
    %s = kiln.add %x, %r : tensor<?x64xf32>
    %h = kiln.rms_norm %s, %w {epsilon = 1.0e-05 : f64} : tensor<?x64xf32>, tensor<64xbf16>
    // becomes
    %s, %h = kiln.add_rms_norm %x, %r, %w {epsilon = 1.0e-05 : f64} : tensor<?x64xf32>, tensor<64xbf16>
    ```
    The fusion is skipped when the norm's weight is defined after the add.
  }];
  let dependentDialects = ["mlir::kiln::KilnDialect"];
}

def FuseAllReduceNorm
    : Pass<"kiln-fuse-all-reduce-norm", "mlir::func::FuncOp"> {
  let summary = "Form an all-reduce's sum in the residual add + RMS norm "
                "that reads it";
  let description = [{
    In a tensor-parallel graph every block ends with an all-reduce of the
    ranks' partial sums whose only reader is the next `kiln.add_rms_norm`.
    The pass replaces the all-reduce with a `kiln.gather_partials` and lets
    the norm sum the gathered partials (`partials = R`): one communication
    step instead of a ring all-reduce's two, and no summed buffer written
    and read back in between. Because the gather moves R - 1 partials to
    every rank instead of about two, it only pays for small steps (decode):
    `max_rows` on the gather, from the planner's NVLink and HBM figures
    (`partialGatherMaxRows`), is the step size above which backends
    all-reduce instead; with 2 ranks the gather never moves more, so there
    is no limit.

    ```mlir
    %s = kiln.all_reduce %p {ranks = 4 : i64} : tensor<?x64xf32>
    %x1, %h = kiln.add_rms_norm %s, %x, %w {epsilon = 1.0e-05 : f64} : tensor<?x64xf32>, tensor<64xbf16>
    // becomes
    %g = kiln.gather_partials %p {max_rows = 670 : i64, ranks = 4 : i64} : tensor<?x64xf32>
    %x1, %h = kiln.add_rms_norm %g, %x, %w {epsilon = 1.0e-05 : f64, partials = 4 : i64} : tensor<?x64xf32>, tensor<64xbf16>
    ```
    Run after kiln-fuse-add-rms-norm. All-reduces read by anything else
    (a stage hand-over, a plain add) stay.
  }];
  let options = [
    Option<"maxRows", "max-rows", "int64_t", "-1",
           "Rows per rank above which backends all-reduce instead of "
           "gathering (-1: from the cost model; 0: always all-reduce)">,
  ];
  let dependentDialects = ["mlir::kiln::KilnDialect"];
}

def FuseGateUp : Pass<"kiln-fuse-gate-up", "mlir::func::FuncOp"> {
  let summary = "Fuse the gate and up projections of a SwiGLU into one GEMM";
  let description = [{
    Rewrites `swiglu(linear(u, Wg), linear(u, Wu))` into
    `packed_swiglu(linear(u, concat(Wg, Wu)))`: one GEMM over the repacked
    `[2F, D]` weight with a SwiGLU epilogue. Applies to dense FFNs and shared
    experts written with separate projections. Both projections must read the
    same input and have no other users.

    ```mlir
    %g = kiln.linear %u, %wg : tensor<?x64xf32>, tensor<128x64xbf16> -> tensor<?x128xf32>
    %v = kiln.linear %u, %wu : tensor<?x64xf32>, tensor<128x64xbf16> -> tensor<?x128xf32>
    %h = kiln.swiglu %g, %v : tensor<?x128xf32>
    // becomes
    %w = kiln.concat %wg, %wu {axis = 0 : i64} : ... -> tensor<256x64xbf16>
    %gu = kiln.linear %u, %w : tensor<?x64xf32>, tensor<256x64xbf16> -> tensor<?x256xf32>
    %h = kiln.packed_swiglu %gu : tensor<?x256xf32> -> tensor<?x128xf32>
    ```
  }];
  let dependentDialects = ["mlir::kiln::KilnDialect"];
}

def FuseQkv : Pass<"kiln-fuse-qkv", "mlir::func::FuncOp"> {
  let summary = "Fuse the q, k and v projections of an attention into one GEMM";
  let description = [{
    For every `kiln.attention` whose query, key and value come (possibly
    through `kiln.rope` / `kiln.qk_norm`) from three `kiln.linear`s of the
    same input, concatenates the three weights (`[Hq*d + 2*Hkv*d, D]`), runs
    one `kiln.linear` and splits its result back into q, k and v.

    ```mlir
    %q = kiln.linear %h, %wq ...
    %k = kiln.linear %h, %wk ...
    %v = kiln.linear %h, %wv ...
    // becomes
    %w = kiln.concat %wq, %wk, %wv {axis = 0 : i64} : ...
    %qkv = kiln.linear %h, %w : ...
    %q, %k, %v = kiln.split %qkv : ...
    ```
    The weights must share an element type and be defined before the first
    of the three projections.
  }];
  let dependentDialects = ["mlir::kiln::KilnDialect"];
}

def FuseQkvEpilogue : Pass<"kiln-fuse-qkv-epilogue", "mlir::func::FuncOp"> {
  let summary = "Fold RoPE, QK norm and temperature into the QKV GEMM's epilogue";
  let description = [{
    After `kiln-fuse-qkv`, the split q and k pass through `kiln.rope` and
    `kiln.qk_norm`, and `kiln.attention` scales q by the temperature. All of
    it is per-token work on the GEMM's output rows; this pass replaces the
    split and those ops with one `kiln.qkv_epilogue` and removes the
    temperature from the attention.

    ```mlir
    %q, %k, %v = kiln.split %qkv : ...
    %qr = kiln.rope %q, %pos {...}
    %kr = kiln.rope %k, %pos {...}
    %qn = kiln.qk_norm %qr {...}
    %kn = kiln.qk_norm %kr {...}
    %o = kiln.attention %qn, %kn, %v, %pos {...}
    // becomes
    %q, %k, %v = kiln.qkv_epilogue %qkv, %pos {inv_freq = ..., qk_norm_epsilon = ...}
    %o = kiln.attention %q, %k, %v, %pos {...}
    ```
    q and k must get the same treatment (same frequencies, same epsilon), and
    every intermediate must have no other user.
  }];
  let dependentDialects = ["mlir::kiln::KilnDialect"];
}

def DecomposeMoe : Pass<"kiln-decompose-moe", "mlir::func::FuncOp"> {
  let summary = "Split kiln.moe into routing, grouped expert GEMMs and the shared expert";
  let description = [{
    Rewrites each `kiln.moe` that has a shared expert into

    - `kiln.moe_route`: router GEMM, top-k, sigmoid and the dispatch of
      (token, expert) pairs sorted by expert, in one step;
    - `kiln.expert_gate_up`: one grouped GEMM over the dispatched rows with
      the gate applied to the expert input and a SwiGLU epilogue;
    - the shared expert as an ordinary fused gate/up GEMM
      (`concat` + `linear` + `packed_swiglu`) and its down `linear`, alongside;
    - `kiln.expert_down`: the grouped down GEMM, scattered back to tokens and
      added to the shared expert's output.

    Only the experts a token was routed to do any work (the Hugging Face code
    runs every expert on every token).
  }];
  let dependentDialects = ["mlir::kiln::KilnDialect"];
}

//===----------------------------------------------------------------------===//
// Tensor parallelism
//===----------------------------------------------------------------------===//

def ShardTensorParallel
    : Pass<"kiln-shard-tensor-parallel", "mlir::ModuleOp"> {
  let summary = "Split a graph over the ranks of a tensor-parallel group";
  let description = [{
    Rewrites the imported graph into the one every rank of an R-rank
    tensor-parallel group runs (Megatron-style; module attribute
    `kiln.tensor_parallel = R`), each weight argument marked with the slice
    of its checkpoint tensor the rank holds (`kiln.shard`):

    - attention by heads: the q projection's rows (R parts), the k and v
      projections' rows (R parts, or one part per KV head when there are
      fewer KV heads than ranks: ranks then share a KV head), the output
      projection's columns; `num_heads` / `num_kv_heads` of rope, qk_norm
      and attention become the rank's;
    - the dense SwiGLU FFN column-then-row: gate and up rows, down columns;
    - MoE: the routed experts' and the shared expert's intermediate
      dimension (gate_up's gate and up halves each split), the router
      replicated, so every rank routes alike; with `expert-groups=G`
      (expert parallelism, as TensorRT-LLM's moe_ep_size), the routed
      experts are first divided into G groups of E / G whole experts, rank
      r holding group r G / R, and each expert split R / G ways within its
      group; the blocks then take the `kiln.input = "rank"` argument the
      pass adds, and their result joins the same all-reduce, so expert
      parallelism costs no extra collective;
    - after each row-split product (attention output, FFN down, MoE), a
      `kiln.all_reduce` sums the ranks' partial sums.

    With `attention-replicas=D` (data-parallel attention, so that expert
    parallelism can be wider than tensor parallelism), the R ranks form D
    replicas of R / D ranks, each running its own sequence
    (`kiln.attention_replicas = D`): attention and the dense FFN are split
    R / D ways within a replica (rank r holding part r mod R / D) and
    all-reduced over it, while the MoE blocks still divide their experts
    over all R ranks: a `kiln.all_gather` gives every rank the rows of every
    replica, the block runs on them, and a `kiln.reduce_scatter` sums the
    R partial sums and hands each replica its own rows back.

    Embedding, norms and the LM head stay replicated. Head counts and
    intermediate sizes must divide by R (KV heads: or R by them); the pass
    fails naming the op otherwise.

    ```mlir
    %o = kiln.linear %attn, %wo : tensor<?x5120xf32>, tensor<5120x5120xbf16> -> ...
    // with ranks = 8 becomes
    %p = kiln.linear %attn, %wo : tensor<?x640xf32>, tensor<5120x640xbf16> -> ...
    %o = kiln.all_reduce %p {ranks = 8 : i64} : tensor<?x5120xf32>
    // %wo: tensor<5120x640xbf16> {kiln.shard = #kiln.shard<dim = 1, parts = 8>, ...}
    ```
  }];
  let options = [
    Option<"ranks", "ranks", "int64_t", "2",
           "Ranks of the tensor-parallel group (at least 2)">,
    Option<"expertGroups", "expert-groups", "int64_t", "1",
           "Expert-parallel groups the routed experts are divided into "
           "(1: none; must divide ranks and the expert count)">,
    Option<"attentionReplicas", "attention-replicas", "int64_t", "1",
           "Data-parallel attention replicas the ranks form (1: none; must "
           "divide ranks); MoE blocks then exchange tokens between them">,
    Option<"allToAll", "all-to-all", "bool", "false",
           "With attention replicas, exchange a MoE block's tokens with an "
           "all-to-all (each routed row to the ranks holding its expert; "
           "the shared expert split within the replica) instead of an "
           "all-gather and reduce-scatter">,
  ];
  let dependentDialects = ["mlir::kiln::KilnDialect"];
}

def PipelineStages : Pass<"kiln-pipeline-stages", "mlir::ModuleOp"> {
  let summary = "Split a graph's layers into pipeline stages";
  let description = [{
    Assigns the layers of the graph to P contiguous pipeline stages
    (layer l to stage l * P / L; the embedding to the first, the final norm
    and the LM head to the last) and places a `kiln.stage_send` wherever a
    value crosses from one stage to the next (the residual stream), and a
    `kiln.stage_broadcast` of the logits from the last stage, so every rank
    picks the same next token. The module gets
    `kiln.pipeline_stages = P`; a rank of stage s then binds only that
    stage's weights and KV caches. Works on imported or tensor-parallel
    graphs (then each stage is a tensor-parallel group; world = TP x P),
    before fusion: the fusions never reach across a stage_send, and every
    op's stage follows from its operands (`assignStages`).

    A layer starts at the RMSNorm whose result feeds its attention's
    projections. Fails when the graph has fewer layers than stages.

    ```mlir
    %h = kiln.add %a, %b : tensor<?x5120xf32>           // last op of stage 0
    %h1 = kiln.stage_send %h {stage = 0 : i64} : tensor<?x5120xf32>
    %n = kiln.rms_norm %h1, %w {epsilon = 1.0e-05 : f64} : ...  // stage 1
    ```
  }];
  let options = [
    Option<"stages", "stages", "int64_t", "2",
           "Pipeline stages (at least 2)">,
  ];
  let dependentDialects = ["mlir::kiln::KilnDialect"];
}

//===----------------------------------------------------------------------===//
// Kernel partition
//===----------------------------------------------------------------------===//

def PartitionKernels : Pass<"kiln-partition-kernels", "mlir::ModuleOp"> {
  let summary = "Partition each graph into kernels, one function per kernel";
  let description = [{
    Groups the ops of every public function into kernels (one group = one
    launch) and outlines each group into a private function carrying
    `kiln.kernel = #kiln.kernel<kind>`:

    - `gemm`: a `kiln.linear` plus the epilogue that consumes its only result
      (`kiln.packed_swiglu` or `kiln.qkv_epilogue`);
    - `attention`: a `kiln.attention`;
    - `moe`: a `kiln.moe` not decomposed by kiln-decompose-moe;
    - `router`: a `kiln.moe_route` (router GEMM, top-k, sigmoid, dispatch);
    - `grouped_gemm`: a `kiln.expert_gate_up` or `kiln.expert_down`;
    - `memory`: every other op (norms, residual adds, the embedding gather):
      memory-bound work.

    `kiln.concat` (weight repacking) stays in the graph: it is done once when
    weights are bound, not per step. The graph becomes a sequence of
    `func.call`s to kernels. Kernels whose bodies are identical (the same
    layer shape with other weights) are merged, so every distinct layer shape
    is compiled once.

    ```mlir
    %qkv = kiln.linear %h, %w : ...
    %q, %k, %v = kiln.qkv_epilogue %qkv, %pos {...} : ...
    // becomes
    %q, %k, %v = func.call @gemm_1(%h, %w, %pos) : (...) -> (...)
    func.func private @gemm_1(...) attributes {kiln.kernel = #kiln.kernel<gemm>} {...}
    ```
  }];
  let dependentDialects = ["mlir::kiln::KilnDialect", "mlir::func::FuncDialect"];
}

#endif // KILN_TRANSFORMS_PASSES_TD
