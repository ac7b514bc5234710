//===- HostKernelsTest.cpp - Generated host kernels vs the reference ------===//
//
// Builds the tiny Scout- and Maverick-shaped graphs, runs the graph pipeline,
// lowers every GEMM and memory-bound kernel to host loops, compiles them into
// a shared object, then calls each generated kernel on random inputs and
// compares it with the reference evaluator running the same kernel function.
// Positions straddle floor_scale so the temperature epilogue is exercised.
//
//===----------------------------------------------------------------------===//

#include "kiln/Conversion/Passes.h"
#include "dialects/kiln/KilnOps.h"
#include "kiln/Import/Llama4Import.h"
#include "kiln/InitAll.h"
#include "kiln/Pipelines/Pipelines.h"
#include "kiln/Reference/Evaluator.h"
#include "kiln/Target/Host/SharedObject.h"
#include "kiln/runtime/Safetensors.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"

#include <cmath>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <random>
#include <unistd.h>

using namespace mlir;

namespace {

std::string tinyConfig(bool scout) {
  std::string moe = scout ? R"("num_local_experts": 16, "interleave_moe_layer_step": 1,
      "use_qk_norm": true, "rope_scaling": {"rope_type": "llama3", "factor": 16.0,
      "low_freq_factor": 1.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 8192})"
                          : R"("num_local_experts": 128, "interleave_moe_layer_step": 2,
      "use_qk_norm": false, "rope_scaling": null)";
  return R"({"architectures": ["Llama4ForCausalLM"], "hidden_size": 64,
      "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
      "head_dim": 16, "vocab_size": 256, "intermediate_size": 32,
      "intermediate_size_mlp": 64, "attention_chunk_size": 8192,
      "floor_scale": 8192, )" +
         moe + "}";
}

/// A buffer and its memref descriptor (pointers and int64s, 8 bytes each).
struct Arg {
  std::vector<float> f32;
  std::vector<uint16_t> half;
  std::vector<int32_t> i32;
  std::vector<int64_t> i64;
  std::vector<int64_t> descriptor;

  void describe(void *data, const std::vector<int64_t> &shape) {
    int64_t rank = static_cast<int64_t>(shape.size());
    descriptor.assign(3 + 2 * rank, 0);
    descriptor[0] = descriptor[1] = reinterpret_cast<int64_t>(data);
    int64_t stride = 1;
    for (int64_t d = rank - 1; d >= 0; --d) {
      descriptor[3 + d] = shape[d];
      descriptor[3 + rank + d] = stride;
      stride *= shape[d];
    }
  }
};

using P = void *;
void call(void *fn, std::vector<P> &a) {
  switch (a.size()) {
#define KILN_CALL(N, ...)                                                      \
  case N:                                                                      \
    reinterpret_cast<void (*)(KILN_REPEAT_##N)>(fn)(__VA_ARGS__);              \
    return;
#define KILN_REPEAT_3 P, P, P
#define KILN_REPEAT_4 P, P, P, P
#define KILN_REPEAT_5 P, P, P, P, P
#define KILN_REPEAT_6 P, P, P, P, P, P
#define KILN_REPEAT_7 P, P, P, P, P, P, P
    KILN_CALL(3, a[0], a[1], a[2])
    KILN_CALL(4, a[0], a[1], a[2], a[3])
    KILN_CALL(5, a[0], a[1], a[2], a[3], a[4])
    KILN_CALL(6, a[0], a[1], a[2], a[3], a[4], a[5])
    KILN_CALL(7, a[0], a[1], a[2], a[3], a[4], a[5], a[6])
  default:
    FAIL() << "unexpected kernel arity " << a.size();
  }
}

void checkPreset(bool scout) {
  DialectRegistry registry;
  mlir::kiln::registerAllKilnDialects(registry);
  registry.insert<LLVM::LLVMDialect>();
  MLIRContext context(registry);
  context.loadAllAvailableDialects();
  auto config = ::kiln::parseLlama4Config(tinyConfig(scout), "tiny.json");
  ASSERT_TRUE(static_cast<bool>(config)) << llvm::toString(config.takeError());
  OwningOpRef<ModuleOp> model = ::kiln::buildLlama4Module(context, *config, nullptr);
  PassManager graph(&context);
  mlir::kiln::buildGraphPipeline(graph);
  ASSERT_TRUE(succeeded(graph.run(*model)));

  OwningOpRef<ModuleOp> kernels = ModuleOp::create(UnknownLoc::get(&context));
  SmallVector<func::FuncOp> checked;
  for (auto f : model->getOps<func::FuncOp>()) {
    auto kind = f->getAttrOfType<StringAttr>("kiln.kernel");
    if (kind && (kind.getValue() == "gemm" || kind.getValue() == "memory")) {
      kernels->push_back(f->clone());
      checked.push_back(f);
    }
  }
  ASSERT_GE(checked.size(), 8u);
  PassManager lower(&context);
  lower.addPass(mlir::kiln::createConvertKilnToLoops());
  ASSERT_TRUE(succeeded(lower.run(*kernels)));
  ASSERT_TRUE(succeeded(mlir::kiln::lowerToLLVMDialect(*kernels)));
  std::string stem = ::testing::TempDir() + "/kiln_kernels_" +
                     std::to_string(getpid()) + (scout ? "_s" : "_m");
  llvm::Error e = mlir::kiln::emitHostObject(*kernels, stem + ".o");
  ASSERT_FALSE(e) << llvm::toString(std::move(e));
  e = mlir::kiln::linkSharedObject({stem + ".o"}, stem + ".so");
  ASSERT_FALSE(e) << llvm::toString(std::move(e));
  void *library = dlopen((stem + ".so").c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(library, nullptr) << dlerror();

  std::mt19937_64 rng(scout ? 1 : 2);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  const int64_t tokens = 7;
  for (func::FuncOp kernel : checked) {
    SCOPED_TRACE(kernel.getSymName().str());
    std::vector<::kiln::ref::KernelValue> inputs;
    std::vector<Arg> args(kernel.getNumArguments() + kernel.getNumResults());
    for (auto [i, arg] : llvm::enumerate(kernel.getArguments())) {
      auto type = cast<RankedTensorType>(arg.getType());
      std::vector<int64_t> shape(type.getShape());
      if (type.isDynamicDim(0))
        shape[0] = tokens;
      int64_t n = 1;
      for (int64_t d : shape)
        n *= d;
      ::kiln::ref::KernelValue value;
      value.shape = shape;
      Type element = type.getElementType();
      if (element.isInteger(32) || element.isInteger(64)) {
        bool isTokens = llvm::any_of(arg.getUsers(),
                                     [](Operation *u) { return isa<mlir::kiln::EmbeddingOp>(u); });
        for (int64_t t = 0; t < n; ++t)
          value.ints.push_back(isTokens ? static_cast<int64_t>(rng() % 256)
                                        : 8188 + t); // crosses floor_scale
        if (element.isInteger(32)) {
          args[i].i32.assign(value.ints.begin(), value.ints.end());
          args[i].describe(args[i].i32.data(), shape);
        } else {
          args[i].i64 = value.ints;
          args[i].describe(args[i].i64.data(), shape);
        }
      } else if (element.isBF16()) {
        for (int64_t j = 0; j < n; ++j) {
          uint16_t bits = ::kiln::floatToBf16(1.0f + normal(rng));
          args[i].half.push_back(bits);
          value.floats.push_back(::kiln::bf16ToFloat(bits));
        }
        args[i].describe(args[i].half.data(), shape);
      } else {
        for (int64_t j = 0; j < n; ++j)
          args[i].f32.push_back(normal(rng));
        value.floats.assign(args[i].f32.begin(), args[i].f32.end());
        args[i].describe(args[i].f32.data(), shape);
      }
      inputs.push_back(std::move(value));
    }
    auto expected =
        ::kiln::ref::evaluateKernel(kernel, inputs, ::kiln::ref::Precision::F32);
    ASSERT_TRUE(static_cast<bool>(expected)) << llvm::toString(expected.takeError());
    for (size_t r = 0; r < expected->size(); ++r) {
      Arg &out = args[kernel.getNumArguments() + r];
      int64_t n = static_cast<int64_t>((*expected)[r].floats.size());
      out.f32.assign(n, std::nanf(""));
      out.describe(out.f32.data(), (*expected)[r].shape);
    }
    std::vector<P> pointers;
    for (Arg &a : args)
      pointers.push_back(a.descriptor.data());
    std::string symbol = "_mlir_ciface_" + kernel.getSymName().str();
    void *fn = dlsym(library, symbol.c_str());
    ASSERT_NE(fn, nullptr) << symbol;
    call(fn, pointers);
    for (size_t r = 0; r < expected->size(); ++r) {
      const std::vector<double> &want = (*expected)[r].floats;
      const std::vector<float> &got = args[kernel.getNumArguments() + r].f32;
      double maxDiff = 0, maxRef = 0;
      for (size_t j = 0; j < want.size(); ++j) {
        maxDiff = std::max(maxDiff, std::fabs(got[j] - want[j]));
        maxRef = std::max(maxRef, std::fabs(want[j]));
      }
      EXPECT_LE(maxDiff, 1e-5 * maxRef) << "result " << r;
      EXPECT_GT(maxRef, 0.0) << "result " << r;
    }
  }
  dlclose(library);
  std::remove((stem + ".o").c_str());
  std::remove((stem + ".so").c_str());
}

TEST(HostKernelsTest, TinyScoutGemmAndMemoryKernels) { checkPreset(true); }
TEST(HostKernelsTest, TinyMaverickGemmAndMemoryKernels) { checkPreset(false); }

} // namespace
