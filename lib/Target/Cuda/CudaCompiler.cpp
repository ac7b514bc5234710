//===- CudaCompiler.cpp - gpu.module to PTX and cubin ---------------------===//
//
// The one translation unit that pulls in every pass and dialect
// registration: the lowering is a textual pipeline over upstream passes.
//
//===----------------------------------------------------------------------===//

#include "kiln/Target/Cuda/CudaCompiler.h"

#include "mlir/AsmParser/AsmParser.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Target/LLVM/NVVM/Target.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/Regex.h"
#include "llvm/Support/SourceMgr.h"

#include <cstdlib>

using namespace mlir;
using namespace mlir::kiln::cuda;

static llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

// Kernel-only module: no outlining and no host-side gpu-to-llvm. (Parsed
// into a PassManager that is itself anchored on the module.) Lowering and
// serialization run apart so the dynamic shared memory can be fixed up in
// between (externalizeDynamicSharedMemory).
static constexpr const char *kPipeline =
    "convert-nvgpu-to-nvvm,convert-vector-to-scf,"
    "convert-scf-to-cf,convert-nvvm-to-llvm,expand-strided-metadata,"
    "lower-affine,convert-arith-to-llvm,convert-index-to-llvm,canonicalize,"
    "cse,gpu.module(strip-debuginfo,convert-gpu-to-nvvm,"
    "llvm-optimize-for-nvvm-target,canonicalize,cse,"
    "reconcile-unrealized-casts)";
static constexpr const char *kSerialize = "gpu-module-to-binary{format=isa}";

/// gpu.dynamic_shared_memory lowers to an `internal` zero-length global in
/// the shared address space, which the NVPTX back end prints as a one-byte
/// static variable (`.shared .b8 __dynamic_shmem__0;`): the kernels then
/// worked only because ptxas happens to place module-scope variables after
/// the function's own, so the bytes past it are the dynamic area. With
/// external linkage it is printed as what it means, `.extern .shared .b8
/// __dynamic_shmem__0[];`, whose address is the dynamic area's base
/// wherever the static variables go.
static void externalizeDynamicSharedMemory(ModuleOp module) {
  module->walk([](LLVM::GlobalOp global) {
    auto array = dyn_cast<LLVM::LLVMArrayType>(global.getGlobalType());
    if (global.getAddrSpace() != 3 || !array || array.getNumElements() != 0 ||
        global.getValueOrNull() ||
        global.getInitializerRegion().getBlocks().size())
      return;
    global.setLinkage(LLVM::Linkage::External);
  });
}

std::string mlir::kiln::cuda::findPtxas() {
  // KILN_PTXAS names the assembler; set but empty, it disables assembly.
  if (const char *p = std::getenv("KILN_PTXAS"))
    return p;
  SmallVector<std::string> candidates;
  if (const char *home = std::getenv("CUDA_HOME"))
    candidates.push_back(std::string(home) + "/bin/ptxas");
  candidates.push_back("/usr/local/cuda/bin/ptxas");
  for (const std::string &c : candidates)
    if (llvm::sys::fs::can_execute(c))
      return c;
  if (auto found = llvm::sys::findProgramByName("ptxas"))
    return *found;
  return "";
}

static void registerOnce(MLIRContext &context) {
  DialectRegistry registry;
  registerAllDialects(registry);
  registerAllExtensions(registry);
  registerAllToLLVMIRTranslations(registry);
  NVVM::registerNVVMTargetInterfaceExternalModels(registry);
  context.appendDialectRegistry(registry);
  context.loadAllAvailableDialects();
  static bool passes = [] {
    registerAllPasses();
    return true;
  }();
  (void)passes;
}

/// "ptxas info : Used 168 registers, ..." lines, per function.
static void parsePtxasReport(StringRef report, CompiledModule &out) {
  llvm::Regex entry("Function properties for ([A-Za-z0-9_]+)");
  llvm::Regex frame("([0-9]+) bytes stack frame, ([0-9]+) bytes spill stores, "
                    "([0-9]+) bytes spill loads");
  llvm::Regex used("Used ([0-9]+) registers");
  llvm::Regex smem("([0-9]+) bytes smem");
  llvm::Regex compiling("Compiling entry function '([A-Za-z0-9_]+)'");
  std::string current;
  SmallVector<StringRef> lines;
  report.split(lines, '\n');
  for (StringRef line : lines) {
    SmallVector<StringRef, 4> m;
    if (compiling.match(line, &m) || entry.match(line, &m)) {
      current = m[1].str();
      continue;
    }
    if (current.empty())
      continue;
    FunctionResources &r = out.resources[current];
    if (frame.match(line, &m)) {
      m[1].getAsInteger(10, r.stackBytes);
      m[2].getAsInteger(10, r.spillStores);
      m[3].getAsInteger(10, r.spillLoads);
    }
    if (used.match(line, &m))
      m[1].getAsInteger(10, r.registers);
    if (smem.match(line, &m))
      m[1].getAsInteger(10, r.staticSharedBytes);
  }
}

llvm::Expected<CompiledModule>
mlir::kiln::cuda::compileGpuModule(gpu::GPUModuleOp kernels,
                                   StringRef workDir) {
  MLIRContext &context = *kernels.getContext();
  registerOnce(context);
  OwningOpRef<ModuleOp> module = ModuleOp::create(kernels.getLoc());
  (*module)->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                     UnitAttr::get(&context));
  auto copy = cast<gpu::GPUModuleOp>(kernels->clone());
  module->getBody()->push_back(copy);
  // The launch descriptions stay with the graph; the target: sm_90a
  // (wgmma, setmaxnreg) and PTX 8.0.
  SmallVector<NamedAttribute> kept;
  for (NamedAttribute a : copy->getAttrs())
    if (!a.getName().getValue().starts_with("kiln."))
      kept.push_back(a);
  copy->setAttrs(kept);
  copy.setTargetsAttr(ArrayAttr::get(
      &context, {parseAttribute("#nvvm.target<chip = \"sm_90a\", features = "
                                "\"+ptx80\", O = 3>",
                                &context)}));

  if (const char *dump = std::getenv("KILN_DUMP_KERNELS")) {
    std::error_code ec;
    llvm::raw_fd_ostream os(dump, ec);
    if (!ec)
      module->print(os);
  }

  std::string diagnostics;
  llvm::raw_string_ostream diag(diagnostics);
  llvm::SourceMgr sources;
  SourceMgrDiagnosticHandler handler(sources, &context, diag);
  PassManager pm(&context);
  if (failed(parsePassPipeline(kPipeline, pm, diag)))
    return makeError("kernel pipeline: " + diagnostics);
  if (failed(pm.run(*module)))
    return makeError("lowering the sm_90a kernels failed:\n" + diagnostics);
  externalizeDynamicSharedMemory(*module);
  PassManager serialize(&context);
  if (failed(parsePassPipeline(kSerialize, serialize, diag)) ||
      failed(serialize.run(*module)))
    return makeError("serializing the sm_90a kernels failed:\n" + diagnostics);

  CompiledModule out;
  module->walk([&](gpu::BinaryOp binary) {
    for (Attribute a : binary.getObjects())
      if (auto object = dyn_cast<gpu::ObjectAttr>(a))
        out.ptx = object.getObject().getValue().str();
  });
  if (out.ptx.empty()) {
    std::string printed;
    llvm::raw_string_ostream os(printed);
    module->print(os);
    return makeError("the NVPTX backend produced no PTX:\n" + diagnostics +
                     printed.substr(0, 2000));
  }

  out.ptxasPath = findPtxas();
  if (out.ptxasPath.empty())
    return out;
  llvm::SmallString<256> ptxFile(workDir), cubinFile(workDir),
      reportFile(workDir);
  llvm::sys::path::append(ptxFile, "kernels.ptx");
  llvm::sys::path::append(cubinFile, "kernels.cubin");
  llvm::sys::path::append(reportFile, "ptxas.txt");
  {
    std::error_code ec;
    llvm::raw_fd_ostream os(ptxFile, ec);
    if (ec)
      return makeError(ptxFile + ": " + ec.message());
    os << out.ptx;
  }
  SmallVector<StringRef> args = {out.ptxasPath, "-arch=sm_90a", "-O3",    "-v",
                                 ptxFile,       "-o",           cubinFile};
  std::optional<StringRef> redirects[] = {std::nullopt, reportFile.str(),
                                          reportFile.str()};
  std::string error;
  int rc = llvm::sys::ExecuteAndWait(out.ptxasPath, args, std::nullopt,
                                     redirects, 0, 0, &error);
  auto report = llvm::MemoryBuffer::getFile(reportFile);
  std::string reportText = report ? (*report)->getBuffer().str() : "";
  if (rc != 0)
    return makeError("ptxas (" + out.ptxasPath + ") failed on " + ptxFile +
                     (error.empty() ? "" : ": " + error) + "\n" + reportText);
  parsePtxasReport(reportText, out);
  auto cubin = llvm::MemoryBuffer::getFile(cubinFile, /*IsText=*/false);
  if (!cubin)
    return makeError(cubinFile + ": " + cubin.getError().message());
  out.cubin = (*cubin)->getBuffer().str();
  return out;
}
