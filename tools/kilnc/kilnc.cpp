//===- kilnc.cpp - The Kiln compiler driver -------------------------------===//
//
//   kilnc import <checkpoint-dir> [-o model.mlir]
//
// imports a Hugging Face Llama 4 checkpoint folder into the kiln dialect.
// Later stages (fusion, code generation, engines) add subcommands here.
//
//===----------------------------------------------------------------------===//

#include "kiln/Import/Llama4Import.h"
#include "kiln/InitAll.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"

using namespace llvm;

static cl::SubCommand importCommand(
    "import", "Import a Hugging Face Llama 4 checkpoint folder as kiln MLIR");
static cl::opt<std::string> checkpointDir(cl::Positional, cl::Required,
                                          cl::desc("<checkpoint-dir>"),
                                          cl::sub(importCommand));
static cl::opt<std::string>
    outputPath("o", cl::desc("Output file (default: stdout)"),
               cl::value_desc("file"), cl::init("-"), cl::sub(importCommand));

static int runImport() {
  mlir::DialectRegistry registry;
  mlir::kiln::registerAllKilnDialects(registry);
  mlir::MLIRContext context(registry);
  auto module = kiln::importLlama4Checkpoint(context, checkpointDir);
  if (!module) {
    WithColor::error(errs(), "kilnc") << toString(module.takeError()) << "\n";
    return 1;
  }
  std::string error;
  auto output = mlir::openOutputFile(outputPath, &error);
  if (!output) {
    WithColor::error(errs(), "kilnc") << error << "\n";
    return 1;
  }
  (*module)->print(output->os());
  output->os() << "\n";
  output->keep();
  return 0;
}

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  cl::ParseCommandLineOptions(argc, argv, "Kiln: a compiler for Llama 4\n");
  if (importCommand)
    return runImport();
  WithColor::error(errs(), "kilnc")
      << "no command given; try 'kilnc import <checkpoint-dir>' or "
         "'kilnc --help'\n";
  return 1;
}
