//===- kiln-mlir-runner.cpp - Run an MLIR GPU integration test ------------===//
//
// kiln-mlir-runner FILE.mlir [--print-pipeline] [--print-lowered]
//
// Lowers FILE with the pass pipeline of its own `// RUN:` line (the block
// that pipes into mlir-runner), asking the GPU binary for PTX text
// (`cubin-format=isa` / `%gpu_compilation_format` = isa), JIT-runs the host
// code with MLIR's ExecutionEngine, and serves its mgpu* calls from the CUDA
// driver that KILN_LIBCUDA names. Output goes to stdout as mlir-runner's
// would, so the test's CHECK lines apply unchanged. Exits non-zero when a
// driver call failed (a refused launch, a kernel the emulator stopped).
//
//===----------------------------------------------------------------------===//

#include "MgpuRuntime.h"

#include "mlir/Dialect/GPU/Pipelines/Passes.h"
#include "mlir/ExecutionEngine/ExecutionEngine.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "mlir/Target/LLVMIR/Export.h"

#include "llvm/ExecutionEngine/Orc/Mangling.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdio>
#include <string>
#include <vector>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/lsan_interface.h>
#define KILN_HAS_LSAN 1
#endif
#endif
#ifndef KILN_HAS_LSAN
#define KILN_HAS_LSAN 0
#endif

using namespace mlir;

namespace {

llvm::cl::OptionCategory category("kiln-mlir-runner options");
llvm::cl::opt<std::string> inputFile(llvm::cl::Positional,
                                     llvm::cl::desc("<test.mlir>"),
                                     llvm::cl::Required,
                                     llvm::cl::cat(category));
llvm::cl::opt<bool> printPipeline("print-pipeline",
                                  llvm::cl::desc("print the pass pipeline "
                                                 "taken from the RUN line"),
                                  llvm::cl::cat(category));
llvm::cl::opt<bool> printLowered("print-lowered",
                                 llvm::cl::desc("print the lowered module "
                                                "and stop"),
                                 llvm::cl::cat(category));
llvm::cl::list<std::string>
    sharedLibs("shared-libs",
               llvm::cl::desc("libraries the host code calls (default: "
                              "MLIR's runner utils)"),
               llvm::cl::cat(category));

/// What upstream's -test-transform-dialect-erase-schedule does: drop the
/// transform script once the interpreter has applied it. (The upstream pass
/// lives in MLIR's test libraries, which are not installed.)
struct EraseTransformSchedule
    : PassWrapper<EraseTransformSchedule, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(EraseTransformSchedule)
  StringRef getArgument() const final {
    return "test-transform-dialect-erase-schedule";
  }
  StringRef getDescription() const final {
    return "erase the transform dialect schedule from the IR";
  }
  void runOnOperation() final {
    std::vector<Operation *> dead;
    for (Operation &op : getOperation().getBody()->getOperations())
      if (op.getDialect() && op.getDialect()->getNamespace() == "transform")
        dead.push_back(&op);
    for (Operation *op : dead)
      op->erase();
    getOperation()->removeAttr("transform.with_named_sequence");
  }
};

/// The `// RUN:` block that feeds mlir-runner, as one command line.
std::string runCommand(StringRef text) {
  std::vector<std::string> blocks;
  std::string current;
  bool open = false;
  for (StringRef line : llvm::split(text, '\n')) {
    size_t at = line.find("// RUN:");
    if (at == StringRef::npos) {
      if (open)
        blocks.push_back(current);
      current.clear();
      open = false;
      continue;
    }
    StringRef body = line.substr(at + 7).trim();
    bool continues = body.ends_with("\\");
    if (continues)
      body = body.drop_back().rtrim();
    current += " " + body.str();
    open = true;
    if (!continues) {
      blocks.push_back(current);
      current.clear();
      open = false;
    }
  }
  for (const std::string &b : blocks)
    if (b.find("mlir-runner") != std::string::npos ||
        b.find("mlir-cpu-runner") != std::string::npos)
      return b;
  return "";
}

/// Shell-like words: quotes group, and are removed.
std::vector<std::string> words(StringRef s) {
  std::vector<std::string> out;
  std::string w;
  char quote = 0;
  bool any = false;
  for (char c : s) {
    if (quote) {
      if (c == quote)
        quote = 0;
      else
        w += c;
      continue;
    }
    if (c == '"' || c == '\'') {
      quote = c;
      any = true;
      continue;
    }
    if (c == ' ' || c == '\t') {
      if (any || !w.empty())
        out.push_back(w);
      w.clear();
      any = false;
      continue;
    }
    w += c;
  }
  if (any || !w.empty())
    out.push_back(w);
  return out;
}

/// The mlir-opt stages before mlir-runner as one textual pipeline.
bool pipelineOf(const std::string &command, std::string &pipeline,
                std::string &error) {
  std::vector<std::string> elements;
  StringRef rest(command);
  size_t runner = rest.find("mlir-runner");
  if (runner == StringRef::npos)
    runner = rest.find("mlir-cpu-runner");
  rest = rest.substr(0, runner);
  for (StringRef stage : llvm::split(rest, '|')) {
    std::vector<std::string> ws = words(stage);
    if (ws.empty())
      continue;
    if (ws[0] != "mlir-opt") {
      error = "unexpected stage '" + ws[0] + "' in the RUN line";
      return false;
    }
    for (size_t i = 1; i < ws.size(); ++i) {
      std::string w = ws[i];
      if (w == "%s")
        continue;
      size_t dashes = w.find_first_not_of('-');
      if (dashes == 0 || dashes == std::string::npos) {
        error = "unexpected word '" + w + "' in the RUN line";
        return false;
      }
      w = w.substr(dashes);
      std::string name = w, options;
      size_t eq = w.find('=');
      if (eq != std::string::npos) {
        name = w.substr(0, eq);
        options = w.substr(eq + 1);
      }
      if (name == "pass-pipeline") {
        // builtin.module(X) -> X
        StringRef p(options);
        if (p.consume_front("builtin.module(") && p.consume_back(")"))
          elements.push_back(p.str());
        else
          elements.push_back(options);
        continue;
      }
      if (name == "debug-only" || name == "mlir-print-ir-after-all")
        continue;
      // The GPU binary must hold PTX: the driver (or the emulator) JITs it.
      size_t sub = options.find("%gpu_compilation_format");
      if (sub != std::string::npos)
        options.replace(sub, std::string("%gpu_compilation_format").size(),
                        "isa");
      if (name == "gpu-lower-to-nvvm-pipeline") {
        if (options.find("cubin-format") != std::string::npos) {
          error = "the RUN line already sets cubin-format";
          return false;
        }
        options += std::string(options.empty() ? "" : " ") + "cubin-format=isa";
      }
      if (name == "gpu-module-to-binary" &&
          options.find("format=isa") == std::string::npos) {
        error = "gpu-module-to-binary must produce PTX (format=isa)";
        return false;
      }
      elements.push_back(options.empty() ? name : name + "{" + options + "}");
    }
  }
  if (elements.empty()) {
    error = "no passes in the RUN line";
    return false;
  }
  pipeline = "builtin.module(";
  for (size_t i = 0; i < elements.size(); ++i)
    pipeline += (i ? "," : "") + elements[i];
  pipeline += ")";
  return true;
}

} // namespace

int main(int argc, char **argv) {
  llvm::InitializeAllTargets();
  llvm::InitializeAllTargetMCs();
  llvm::InitializeAllAsmPrinters();
  llvm::InitializeAllAsmParsers();
  registerAllPasses();
  gpu::registerGPUToNVVMPipeline();
  PassRegistration<EraseTransformSchedule>();
  // Pass pipelines are parsed from the RUN line, not from the command line:
  // --help shows the runner's own options only.
  llvm::cl::HideUnrelatedOptions(category);
  llvm::cl::ParseCommandLineOptions(argc, argv, "Kiln MLIR GPU test runner\n");

  auto file = llvm::MemoryBuffer::getFile(inputFile);
  if (!file) {
    llvm::errs() << "kiln-mlir-runner: cannot read " << inputFile << "\n";
    return 2;
  }
  std::string pipeline, error;
  std::string command = runCommand((*file)->getBuffer());
  if (command.empty()) {
    llvm::errs() << "kiln-mlir-runner: " << inputFile
                 << ": no RUN line pipes into mlir-runner\n";
    return 2;
  }
  if (!pipelineOf(command, pipeline, error)) {
    llvm::errs() << "kiln-mlir-runner: " << inputFile << ": " << error << "\n";
    return 2;
  }
  if (printPipeline) {
    llvm::outs() << pipeline << "\n";
    return 0;
  }

  DialectRegistry registry;
  registerAllDialects(registry);
  registerAllExtensions(registry);
  registerAllToLLVMIRTranslations(registry);
  MLIRContext context(registry);
  llvm::SourceMgr sourceMgr;
  sourceMgr.AddNewSourceBuffer(std::move(*file), llvm::SMLoc());
  OwningOpRef<ModuleOp> module = parseSourceFile<ModuleOp>(sourceMgr, &context);
  if (!module)
    return 2;
  PassManager pm(&context, ModuleOp::getOperationName());
  StringRef inner(pipeline);
  inner.consume_front("builtin.module(");
  inner.consume_back(")");
  if (failed(parsePassPipeline(inner, pm, llvm::errs()))) {
    llvm::errs() << "kiln-mlir-runner: cannot build the pipeline " << pipeline
                 << "\n";
    return 2;
  }
  if (failed(pm.run(*module))) {
    llvm::errs() << "kiln-mlir-runner: lowering failed (" << pipeline << ")\n";
    return 2;
  }
  if (printLowered) {
    module->print(llvm::outs());
    return 0;
  }

  std::vector<std::string> libs(sharedLibs.begin(), sharedLibs.end());
  if (libs.empty()) {
    libs.push_back(KILN_MLIR_LIB_DIR "/libmlir_runner_utils.so");
    libs.push_back(KILN_MLIR_LIB_DIR "/libmlir_c_runner_utils.so");
  }
  std::vector<StringRef> libRefs(libs.begin(), libs.end());
  ExecutionEngineOptions options;
  options.sharedLibPaths = libRefs;
  options.jitCodeGenOptLevel = llvm::CodeGenOptLevel::Default;
  auto engine = ExecutionEngine::create(*module, options);
  if (!engine) {
    llvm::errs() << "kiln-mlir-runner: JIT failed: "
                 << llvm::toString(engine.takeError()) << "\n";
    return 2;
  }
  std::vector<std::pair<const char *, void *>> mgpu;
  kilnMgpuSymbols(mgpu);
  (*engine)->registerSymbols([&](llvm::orc::MangleAndInterner interner) {
    llvm::orc::SymbolMap map;
    for (auto &[name, address] : mgpu)
      map[interner(name)] = {llvm::orc::ExecutorAddr::fromPtr(address),
                             llvm::JITSymbolFlags::Exported};
    return map;
  });
  // The programs run here are third-party tests that leave their host and
  // device buffers to the end of the process; under LeakSanitizer what they
  // allocate is theirs, not a leak of the runner's or the emulator's.
#if KILN_HAS_LSAN
  __lsan_disable();
#endif
  llvm::Error ran = (*engine)->invokePacked("main");
#if KILN_HAS_LSAN
  __lsan_enable();
#endif
  if (llvm::Error e = std::move(ran)) {
    llvm::errs() << "kiln-mlir-runner: running main failed: "
                 << llvm::toString(std::move(e)) << "\n";
    return 2;
  }
  std::fflush(stdout);
  llvm::outs().flush();
  if (int failures = kilnMgpuFailures()) {
    llvm::errs() << "kiln-mlir-runner: " << failures
                 << " CUDA driver call(s) failed\n";
    return 1;
  }
  return 0;
}
