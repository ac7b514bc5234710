//===- HostKernelsTest.cpp - Generated host kernels vs the reference ------===//
//
// Builds the tiny Scout- and Maverick-shaped graphs, runs the graph pipeline,
// lowers every kernel (GEMMs, memory-bound, attention, MoE routing and
// grouped expert GEMMs) to host loops (scalar loop nests, and vector register
// tiles of 128, 256 and 512 bits on libomp's threads), compiles them into a
// shared object, then calls each generated kernel on random inputs and
// compares it with the reference evaluator running the same kernel function.
// Seven tokens leave row, column and head tails for every tile, 151 make
// attention span several key blocks. Positions
// straddle floor_scale (temperature) and a chunk boundary (a chunk of 8 is
// used).
//
//===----------------------------------------------------------------------===//

#include "dialects/kiln/KilnOps.h"
#include "kiln/Conversion/Passes.h"
#include "kiln/Import/Llama4Import.h"
#include "kiln/InitAll.h"
#include "kiln/Pipelines/Pipelines.h"
#include "kiln/Reference/Evaluator.h"
#include "kiln/Target/Host/SharedObject.h"
#include "kiln/runtime/EnginePlan.h"
#include "kiln/runtime/Safetensors.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"

#include <cmath>
#include <cstring>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <map>
#include <optional>
#include <random>
#include <unistd.h>

using namespace mlir;

namespace {

std::string tinyConfig(bool scout) {
  std::string moe =
      scout ? R"("num_local_experts": 16, "interleave_moe_layer_step": 1,
      "use_qk_norm": true, "rope_scaling": {"rope_type": "llama3", "factor": 16.0,
      "low_freq_factor": 1.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 8192})"
            : R"("num_local_experts": 128, "interleave_moe_layer_step": 2,
      "use_qk_norm": false, "rope_scaling": null)";
  return R"({"architectures": ["Llama4ForCausalLM"], "hidden_size": 64,
      "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
      "head_dim": 16, "vocab_size": 256, "intermediate_size": 32,
      "intermediate_size_mlp": 64, "attention_chunk_size": 8,
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
#define KILN_REPEAT_8 P, P, P, P, P, P, P, P
#define KILN_REPEAT_9 P, P, P, P, P, P, P, P, P
    KILN_CALL(3, a[0], a[1], a[2])
    KILN_CALL(4, a[0], a[1], a[2], a[3])
    KILN_CALL(5, a[0], a[1], a[2], a[3], a[4])
    KILN_CALL(6, a[0], a[1], a[2], a[3], a[4], a[5])
    KILN_CALL(7, a[0], a[1], a[2], a[3], a[4], a[5], a[6])
    KILN_CALL(8, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7])
    KILN_CALL(9, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8])
  default:
    FAIL() << "unexpected kernel arity " << a.size();
  }
}

/// How the kernels are lowered: scalar loops (vectorBits 0), or vector
/// register tiles of that width on libomp's threads when it is installed.
struct Lowering {
  int64_t vectorBits;
  const char *cpu;
};

/// `tokens`: 7 leave row, column and head tails for every tile; 151 (prime
/// to the dispatch's stride of 5) make attention span three key blocks, the
/// last one short, with blocks the chunk mask hides whole.
void checkPreset(bool scout, Lowering how = {0, ""}, int64_t tokens = 7) {
  DialectRegistry registry;
  mlir::kiln::registerAllKilnDialects(registry);
  registry.insert<LLVM::LLVMDialect>();
  MLIRContext context(registry);
  context.loadAllAvailableDialects();
  auto config = ::kiln::parseLlama4Config(tinyConfig(scout), "tiny.json");
  ASSERT_TRUE(static_cast<bool>(config)) << llvm::toString(config.takeError());
  OwningOpRef<ModuleOp> model =
      ::kiln::buildLlama4Module(context, *config, nullptr);
  PassManager graph(&context);
  mlir::kiln::buildGraphPipeline(graph);
  ASSERT_TRUE(succeeded(graph.run(*model)));

  OwningOpRef<ModuleOp> kernels = ModuleOp::create(UnknownLoc::get(&context));
  SmallVector<func::FuncOp> checked;
  for (auto f : model->getOps<func::FuncOp>()) {
    if (f->hasAttr("kiln.kernel")) {
      kernels->push_back(f->clone());
      checked.push_back(f);
    }
  }
  ASSERT_GE(checked.size(), 14u);
  PassManager lower(&context);
  mlir::kiln::ConvertKilnToLoopsOptions options;
  options.vectorBits = how.vectorBits;
  std::optional<std::string> openmp = mlir::kiln::findOpenMPRuntime();
  options.parallel = how.vectorBits != 0 && openmp.has_value();
  lower.addPass(mlir::kiln::createConvertKilnToLoops(options));
  ASSERT_TRUE(succeeded(lower.run(*kernels)));
  // Per kernel and argument: the panel width the lowering asks for.
  std::map<std::string, std::map<unsigned, int64_t>> panels;
  for (auto f : kernels->getOps<func::FuncOp>())
    for (unsigned i = 0; i < f.getNumArguments(); ++i)
      if (auto panel = f.getArgAttrOfType<IntegerAttr>(
              i, mlir::kiln::KilnDialect::getHostPanelAttrName()))
        panels[f.getSymName().str()][i] = panel.getInt();
  ASSERT_TRUE(succeeded(mlir::kiln::lowerToLLVMDialect(*kernels)));
  std::string stem = ::testing::TempDir() + "/kiln_kernels_" +
                     std::to_string(getpid()) + (scout ? "_s" : "_m") +
                     std::to_string(how.vectorBits);
  mlir::kiln::HostCompileOptions compile;
  compile.cpu = how.cpu;
  llvm::Error e = mlir::kiln::emitHostObject(*kernels, stem + ".o", compile);
  ASSERT_FALSE(e) << llvm::toString(std::move(e));
  e = mlir::kiln::linkSharedObject({stem + ".o"}, stem + ".so",
                                   options.parallel ? *openmp : std::string());
  ASSERT_FALSE(e) << llvm::toString(std::move(e));
  void *library = dlopen((stem + ".so").c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(library, nullptr) << dlerror();

  std::mt19937_64 rng(scout ? 1 : 2);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  int panelled = 0;
  for (func::FuncOp kernel : checked) {
    SCOPED_TRACE(kernel.getSymName().str());
    std::vector<::kiln::ref::KernelValue> inputs;
    // A valid dispatch: each pair (top-1) goes to a random expert.
    int64_t experts = 0;
    kernel.walk([&](Operation *op) {
      if (auto g = dyn_cast<mlir::kiln::ExpertGateUpOp>(op))
        experts = cast<RankedTensorType>(g.getGateUp().getType()).getDimSize(0);
      if (auto d = dyn_cast<mlir::kiln::ExpertDownOp>(op))
        experts = cast<RankedTensorType>(d.getDown().getType()).getDimSize(0);
    });
    std::vector<int64_t> pairExpert(tokens), dispatchTokens, dispatchOffsets;
    if (experts) {
      for (int64_t &e : pairExpert)
        e = static_cast<int64_t>(rng() % experts);
      dispatchOffsets.assign(experts + 1, 0);
      for (int64_t ex = 0; ex < experts; ++ex) {
        for (int64_t t = 0; t < tokens; ++t)
          if (pairExpert[t] == ex)
            dispatchTokens.push_back((t * 5 + 3) % tokens);
        dispatchOffsets[ex + 1] = static_cast<int64_t>(dispatchTokens.size());
      }
    }
    int64_t numAttention = 0;
    kernel.walk([&](mlir::kiln::AttentionOp) { ++numAttention; });
    std::vector<Arg> args(kernel.getNumArguments() + numAttention +
                          kernel.getNumResults());
    std::vector<int64_t> positionValues;
    for (unsigned i = 0; i < kernel.getNumArguments(); ++i) {
      BlockArgument arg = kernel.getArgument(i);
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
        bool isTokens = llvm::any_of(arg.getUsers(), [](Operation *u) {
          return isa<mlir::kiln::EmbeddingOp>(u);
        });
        auto dispatchOperand = [&](unsigned index) {
          return llvm::any_of(arg.getUses(), [&](OpOperand &use) {
            return isa<mlir::kiln::ExpertGateUpOp, mlir::kiln::ExpertDownOp>(
                       use.getOwner()) &&
                   use.getOperandNumber() == index;
          });
        };
        if (dispatchOperand(1)) {
          value.ints = dispatchTokens;
        } else if (dispatchOperand(2)) {
          value.ints = dispatchOffsets;
        } else {
          // Positions crossing floor_scale (8192) and a chunk boundary.
          for (int64_t t = 0; t < n; ++t)
            value.ints.push_back(isTokens ? static_cast<int64_t>(rng() % 256)
                                          : 8188 + t);
          if (!isTokens)
            positionValues = value.ints;
        }
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
        // A weight the kernel reads in panels gets the runtime's layout.
        const std::map<unsigned, int64_t> &mine =
            panels[kernel.getSymName().str()];
        if (auto panel = mine.find(i); panel != mine.end()) {
          std::vector<uint8_t> packed;
          ::kiln::plan::packPanels(shape, 2, args[i].half.data(), panel->second,
                                   packed);
          std::memcpy(args[i].half.data(), packed.data(), packed.size());
          ++panelled;
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
    auto expected = ::kiln::ref::evaluateKernel(kernel, inputs,
                                                ::kiln::ref::Precision::F32);
    ASSERT_TRUE(static_cast<bool>(expected))
        << llvm::toString(expected.takeError());
    // Host attention kernels take their keys' positions (here: the same
    // tokens, a fresh sequence) after the inputs.
    unsigned firstOutput = kernel.getNumArguments() + numAttention;
    for (unsigned a = kernel.getNumArguments(); a < firstOutput; ++a) {
      args[a].i64 = positionValues;
      args[a].describe(args[a].i64.data(), {tokens});
    }
    for (size_t r = 0; r < expected->size(); ++r) {
      Arg &out = args[firstOutput + r];
      const ::kiln::ref::KernelValue &want = (*expected)[r];
      if (!want.ints.empty()) {
        out.i64.assign(want.ints.size(), -1);
        out.describe(out.i64.data(), want.shape);
      } else {
        out.f32.assign(want.floats.size(), std::nanf(""));
        out.describe(out.f32.data(), want.shape);
      }
    }
    std::vector<P> pointers;
    for (Arg &a : args)
      pointers.push_back(a.descriptor.data());
    std::string symbol = "_mlir_ciface_" + kernel.getSymName().str();
    void *fn = dlsym(library, symbol.c_str());
    ASSERT_NE(fn, nullptr) << symbol;
    call(fn, pointers);
    for (size_t r = 0; r < expected->size(); ++r) {
      if (!(*expected)[r].ints.empty()) {
        EXPECT_EQ(args[firstOutput + r].i64, (*expected)[r].ints)
            << "result " << r;
        continue;
      }
      const std::vector<double> &want = (*expected)[r].floats;
      const std::vector<float> &got = args[firstOutput + r].f32;
      double maxDiff = 0, maxRef = 0;
      for (size_t j = 0; j < want.size(); ++j) {
        maxDiff = std::max(maxDiff, std::fabs(got[j] - want[j]));
        maxRef = std::max(maxRef, std::fabs(want[j]));
      }
      EXPECT_LE(maxDiff, 1e-5 * maxRef) << "result " << r;
      EXPECT_GT(maxRef, 0.0) << "result " << r;
    }
  }
  // Vector kernels read the routed experts' weights in panels.
  if (how.vectorBits != 0)
    EXPECT_GT(panelled, 0);
  dlclose(library);
  std::remove((stem + ".o").c_str());
  std::remove((stem + ".so").c_str());
}

TEST(HostKernelsTest, TinyScoutKernels) { checkPreset(true); }
TEST(HostKernelsTest, TinyMaverickKernels) { checkPreset(false); }
TEST(HostKernelsTest, TinyScoutVector128) {
  checkPreset(true, {128, "x86-64-v2"});
}
TEST(HostKernelsTest, TinyMaverickVector256) {
  checkPreset(false, {256, "x86-64-v3"});
}
TEST(HostKernelsTest, TinyScoutVector256) {
  checkPreset(true, {256, "x86-64-v3"});
}
TEST(HostKernelsTest, TinyScoutVector256ManyKeys) {
  checkPreset(true, {256, "x86-64-v3"}, 151);
}
TEST(HostKernelsTest, TinyMaverickVector128ManyKeys) {
  checkPreset(false, {128, "x86-64-v2"}, 151);
}
TEST(HostKernelsTest, TinyMaverickVector512) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("x86-64-v4"))
    GTEST_SKIP() << "no AVX-512 on this CPU";
  checkPreset(false, {512, "x86-64-v4"});
}
TEST(HostKernelsTest, TinyScoutVector512ManyKeys) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("x86-64-v4"))
    GTEST_SKIP() << "no AVX-512 on this CPU";
  checkPreset(true, {512, "x86-64-v4"}, 151);
}

} // namespace
