//===- LaunchAttrs.h - GPU launch descriptions as attributes ----*- C++ -*-===//
//
// kiln-convert-kernels-to-gpu records how the runtime launches each GPU
// function on the IR (the engine plan's GpuLaunch / GpuStep structs as
// dictionaries); the sm_90a engine writer reads them back. Decoding checks
// every field, so a hand-edited or stale attribute is an error with the
// field named, not a wrong engine.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CONVERSION_KILNTOGPU_LAUNCHATTRS_H
#define KILN_CONVERSION_KILNTOGPU_LAUNCHATTRS_H

#include "kiln/runtime/EnginePlan.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Diagnostics.h"

namespace mlir::kiln {

/// The function attribute holding a kernel function's GPU steps.
constexpr llvm::StringLiteral kGpuStepsAttrName = "kiln.gpu_steps";
/// The func.call attribute holding its results' GPU storage types.
constexpr llvm::StringLiteral kStorageAttrName = "kiln.storage";
/// gpu.module attributes naming the next-token functions.
constexpr llvm::StringLiteral kArgmaxAttrName = "kiln.argmax";
constexpr llvm::StringLiteral kSampleAttrName = "kiln.sample";

DictionaryAttr encodeGpuLaunch(MLIRContext *context,
                               const ::kiln::plan::GpuLaunch &launch);
ArrayAttr encodeGpuSteps(MLIRContext *context,
                         ArrayRef<::kiln::plan::GpuStep> steps);

/// `emitError` reports the first bad field.
FailureOr<::kiln::plan::GpuLaunch>
decodeGpuLaunch(Attribute attr, function_ref<InFlightDiagnostic()> emitError);
FailureOr<std::vector<::kiln::plan::GpuStep>>
decodeGpuSteps(Attribute attr, function_ref<InFlightDiagnostic()> emitError);

} // namespace mlir::kiln

#endif // KILN_CONVERSION_KILNTOGPU_LAUNCHATTRS_H
