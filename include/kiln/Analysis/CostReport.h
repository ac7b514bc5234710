//===- CostReport.h - Kernel costs, rooflines and the memory plan -*- C++
//-*-===//
//
// Reads a partitioned kiln module (after kiln-partition-kernels) and reports,
// per kernel, its FLOPs, HBM bytes and roofline time on datasheet H100/H200
// rates for a prefill and a decode step, the ratio of planned to ideal HBM
// traffic, and a static memory plan (activation buffers by liveness, KV cache
// pools per layer kind).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_ANALYSIS_COSTREPORT_H
#define KILN_ANALYSIS_COSTREPORT_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"

namespace mlir::kiln {

struct ReportOptions {
  /// Prompt length of the prefill step reported.
  int64_t prefillTokens = 4096;
  /// Tokens already cached before the decode step reported.
  int64_t decodeContext = 4096;
  /// Bytes per stored activation / KV element (bf16 on the GPU target).
  int64_t activationBytes = 2;
  int64_t kvBytes = 2;
  /// Context the KV cache pools are sized for.
  int64_t maxContext = 131072;
};

/// Writes the report for the public function of `module`. Fails (with a
/// diagnostic) when the module is not partitioned.
LogicalResult writeCostReport(ModuleOp module, const ReportOptions &options,
                              llvm::raw_ostream &os);

} // namespace mlir::kiln

#endif // KILN_ANALYSIS_COSTREPORT_H
