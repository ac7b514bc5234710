//===- Passes.td - Kiln conversions ------------------------*- tablegen -*-===//
//
// Lowerings from the kiln dialect towards code.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CONVERSION_PASSES_TD
#define KILN_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def ConvertKilnToLoops : Pass<"kiln-convert-kernels-to-loops", "mlir::ModuleOp"> {
  let summary = "Lower kernel functions to destination-passing loops on memrefs";
  let description = [{
    Rewrites every function carrying `kiln.kernel` (see
    kiln-partition-kernels) into a host kernel: tensor arguments become
    memrefs, results become trailing output memref arguments the caller
    allocates, the body becomes `scf.for` loop nests over `memref.load` /
    `memref.store` (weights are widened from bf16/f16 as they are read), and
    the function gets `llvm.emit_c_interface` so the runtime can call
    `_mlir_ciface_<kernel>`. Intermediates inside a kernel (a GEMM's output
    before its epilogue) are allocated and freed inside it.

    Every kernel kind of the graph pipeline is supported: `gemm`, `memory`,
    `attention`, `router` and `grouped_gemm` (an undecomposed `kiln.moe` is
    reported as an error: run kiln-decompose-moe first). Host attention
    kernels get one more argument per attention, after the inputs: the
    positions of their keys, because on the host the key and value arguments
    hold every cached token followed by the new ones (the runtime appends
    new keys/values to its KV pools before the launch). The module must hold
    only kernels: the graph that calls them keeps tensor semantics.

    With `vector-bits` (256: AVX2, 512: AVX-512) the heavy operations take
    their fast forms: GEMMs as register tiles of vector accumulators over
    L2-sized column blocks, the MoE expert GEMMs as outer-product tiles over
    each expert's routed tokens, attention with vector dot products and
    value sums. With `parallel` their partitioned loop (column blocks,
    heads) is an `scf.parallel`, for the host pipeline to turn into threads.
    An output element is computed the same way in every tile and every
    partition, so results do not depend on the thread count. Without
    `vector-bits` every operation is a scalar loop nest that follows the
    reference kernels operation for operation.
  }];
  let options = [
    Option<"vectorBits", "vector-bits", "int64_t", "0",
           "Vector register width of the target in bits (0: scalar loops)">,
    Option<"parallel", "parallel", "bool", "false",
           "Emit the partitioned loops as scf.parallel">,
  ];
  let dependentDialects = ["mlir::arith::ArithDialect",
                           "mlir::math::MathDialect",
                           "mlir::memref::MemRefDialect",
                           "mlir::scf::SCFDialect",
                           "mlir::vector::VectorDialect"];
}

def ConvertKilnToGPU : Pass<"kiln-convert-kernels-to-gpu", "mlir::ModuleOp"> {
  let summary = "Generate the sm_90a GPU functions of every kernel function";
  let description = [{
    For a partitioned kernel graph (kiln-graph-pipeline), generates the GPU
    functions of every launched kernel function into one
    `gpu.module @kiln_kernels` (gpu, nvgpu, nvvm, arith, memref, vector and
    scf ops; TMA + mbarrier + wgmma GEMMs and flash attention, split-KV
    decode attention, row-wise memory kernels, the MoE router and grouped
    GEMMs, argmax and sampling), dispatching on each function's
    `#kiln.kernel<...>` kind. Each GPU function carries the location of the
    kernel function it implements.

    How the runtime launches them is recorded on the IR, for the engine
    writer to read back:
    - `kiln.gpu_steps` on each kernel function: its GPU steps in order, each
      a list of variants (dictionaries: `function`, `block`,
      `shared_bytes`, `grid` (three [rows_of, per_row, constant, divisor,
      per_sm]), `params`, `select_operand`, `max_rows`);
    - `kiln.storage` on each `func.call`: the element type each result is
      stored in on the GPU (bf16 for activations that feed GEMMs and
      attention);
    - `kiln.argmax` and `kiln.sample` on the gpu.module: the next-token
      functions.

    lib/Target/Cuda lowers the gpu.module to PTX and writes the engine.
  }];
  let dependentDialects = ["mlir::arith::ArithDialect",
                           "mlir::gpu::GPUDialect",
                           "mlir::LLVM::LLVMDialect",
                           "mlir::memref::MemRefDialect",
                           "mlir::nvgpu::NVGPUDialect",
                           "mlir::NVVM::NVVMDialect",
                           "mlir::scf::SCFDialect",
                           "mlir::vector::VectorDialect"];
}

#endif // KILN_CONVERSION_PASSES_TD
