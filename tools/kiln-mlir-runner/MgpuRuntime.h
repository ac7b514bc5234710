//===- MgpuRuntime.h - MLIR's mgpu* host functions -------------*- C++ -*-===//

#ifndef KILN_MLIR_RUNNER_MGPURUNTIME_H
#define KILN_MLIR_RUNNER_MGPURUNTIME_H

#include <utility>
#include <vector>

/// Name and address of every mgpu* function, for the JIT's symbol table.
void kilnMgpuSymbols(std::vector<std::pair<const char *, void *>> &symbols);

/// Driver calls that failed so far.
int kilnMgpuFailures();

#endif // KILN_MLIR_RUNNER_MGPURUNTIME_H
