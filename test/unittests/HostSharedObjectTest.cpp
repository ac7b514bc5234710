//===- HostSharedObjectTest.cpp - MLIR -> shared object -> dlopen ---------===//
//
// The host code generation toolchain end to end, without any Kiln op: a
// memref kernel is lowered to the LLVM dialect, compiled in-process for the
// host, linked into a shared object, loaded with dlopen and called through its
// C interface, as the runtime will call generated kernels.
//
//===----------------------------------------------------------------------===//

#include "kiln/Target/Host/SharedObject.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"

#include <cmath>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <unistd.h>

namespace {

struct MemRef1D {
  float *allocated;
  float *aligned;
  int64_t offset;
  int64_t sizes[1];
  int64_t strides[1];
};

constexpr const char *kKernel = R"mlir(
func.func @exp_axpy(%x: memref<?xf32>, %y: memref<?xf32>, %a: f32)
    attributes {llvm.emit_c_interface} {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %n = memref.dim %x, %c0 : memref<?xf32>
  scf.for %i = %c0 to %n step %c1 {
    %xi = memref.load %x[%i] : memref<?xf32>
    %yi = memref.load %y[%i] : memref<?xf32>
    %p = arith.mulf %a, %xi : f32
    %e = math.exp %p : f32
    %s = arith.addf %e, %yi : f32
    memref.store %s, %y[%i] : memref<?xf32>
  }
  return
}
)mlir";

TEST(HostSharedObjectTest, CompileLinkLoadAndCall) {
  mlir::DialectRegistry registry;
  registry.insert<mlir::func::FuncDialect, mlir::arith::ArithDialect,
                  mlir::scf::SCFDialect, mlir::memref::MemRefDialect,
                  mlir::math::MathDialect, mlir::LLVM::LLVMDialect>();
  mlir::MLIRContext context(registry);
  auto module = mlir::parseSourceString<mlir::ModuleOp>(kKernel, &context);
  ASSERT_TRUE(module);
  ASSERT_TRUE(mlir::succeeded(mlir::kiln::lowerToLLVMDialect(*module)));

  std::string dir = ::testing::TempDir();
  std::string object =
      dir + "/kiln_host_test_" + std::to_string(getpid()) + ".o";
  std::string library =
      dir + "/kiln_host_test_" + std::to_string(getpid()) + ".so";
  llvm::Error e = mlir::kiln::emitHostObject(*module, object);
  ASSERT_FALSE(e) << llvm::toString(std::move(e));
  e = mlir::kiln::linkSharedObject({object}, library);
  ASSERT_FALSE(e) << llvm::toString(std::move(e));

  void *handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(handle, nullptr) << dlerror();
  using Fn = void (*)(MemRef1D *, MemRef1D *, float);
  auto fn = reinterpret_cast<Fn>(dlsym(handle, "_mlir_ciface_exp_axpy"));
  ASSERT_NE(fn, nullptr) << dlerror();

  std::vector<float> x = {0.0f, 1.0f, -2.0f, 0.5f, 3.0f};
  std::vector<float> y = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  std::vector<float> expected(y.size());
  for (size_t i = 0; i < x.size(); ++i)
    expected[i] = std::exp(0.5f * x[i]) + y[i];
  MemRef1D xd{x.data(), x.data(), 0, {5}, {1}};
  MemRef1D yd{y.data(), y.data(), 0, {5}, {1}};
  fn(&xd, &yd, 0.5f);
  for (size_t i = 0; i < y.size(); ++i)
    EXPECT_NEAR(y[i], expected[i], 1e-6f * std::fabs(expected[i])) << i;

  dlclose(handle);
  std::remove(object.c_str());
  std::remove(library.c_str());
}

TEST(HostSharedObjectTest, LinkErrorsAreReported) {
  llvm::Error e = mlir::kiln::linkSharedObject(
      {"/nonexistent/kiln.o"}, ::testing::TempDir() + "/never.so");
  ASSERT_TRUE(static_cast<bool>(e));
  std::string message = llvm::toString(std::move(e));
  EXPECT_NE(message.find("linking"), std::string::npos) << message;
}

} // namespace
