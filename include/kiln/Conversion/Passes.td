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
  }];
  let dependentDialects = ["mlir::arith::ArithDialect",
                           "mlir::math::MathDialect",
                           "mlir::memref::MemRefDialect",
                           "mlir::scf::SCFDialect"];
}

#endif // KILN_CONVERSION_PASSES_TD
