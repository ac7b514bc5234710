//===- kiln-opt.cpp - mlir-opt with Kiln registered -----------------------===//
//
// The driver for lit tests of the dialect and its passes.
//
//===----------------------------------------------------------------------===//

#include "kiln/Conversion/Passes.h"
#include "kiln/InitAll.h"
#include "kiln/Pipelines/Pipelines.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"

int main(int argc, char **argv) {
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
  mlir::kiln::registerAllKilnPasses();
  mlir::kiln::registerGraphPipeline();
  mlir::kiln::registerKilnConversionPasses();
  mlir::DialectRegistry registry;
  mlir::kiln::registerAllKilnDialects(registry);
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "Kiln optimizer driver\n", registry));
}
