//===- CudaEngineTest.cpp - Loading sm_90a engines without a GPU ----------===//
//
// The CUDA backend's checks that need no GPU: target and device choice,
// malformed GPU launch descriptions (named, never a crash), and the one-line
// message without a driver. GPU runs are covered by bench/device.sh.
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/EngineFile.h"
#include "kiln/runtime/Model.h"

#include <cstdlib>
#include <gtest/gtest.h>
#include <string>

namespace {

const char *kGrid = R"([{"rows_of": 0, "per_row": 1, "constant": 0,
                         "divisor": 1}, {"constant": 1}, {"constant": 1}])";

std::string planWith(const std::string &gpu) {
  return std::string(R"({"values": [
      {"id": 0, "kind": "input", "input": "tokens", "dtype": "I32",
       "shape": [-1]},
      {"id": 1, "kind": "weight", "name": "w", "dtype": "BF16",
       "shape": [4, 4]},
      {"id": 2, "kind": "buffer", "dtype": "F32", "shape": [-1, 4],
       "rows_per_token": 1, "arena_offset": 0}],
    "arena_bytes_per_token": 16,
    "launches": [{"kernel": "memory_0", "args": [1, 0], "results": [2],
                  "attention": [], "gpu": )") +
         gpu + R"(}],
    "kv_slots": [], "logits": 2})";
}

std::string validGpu() {
  return std::string(R"([[{"function": "memory_0", "block": 32,
      "shared_bytes": 0, "grid": )") +
         kGrid + R"(, "params": [{"kind": "memref", "operand": 0},
      {"kind": "memref", "operand": 1}, {"kind": "memref", "operand": 2}],
      "select_operand": -1, "max_rows": -1}]])";
}

std::string writeEngine(const std::string &name, const std::string &target,
                        const std::string &plan) {
  std::string path = ::testing::TempDir() + name;
  kiln::EngineFile engine;
  engine.target = target;
  engine.compilerVersion = "test";
  engine.sections[kiln::SectionKind::Plan] = plan;
  engine.sections[kiln::SectionKind::CudaPtx] = ".version 8.0\n";
  std::string error;
  EXPECT_TRUE(engine.write(path, error)) << error;
  return path;
}

std::string createError(const std::string &path, kiln::Device device) {
  kiln::RuntimeOptions options;
  options.device = device;
  kiln::Status status;
  auto model = kiln::Model::load(path, "/nonexistent", options, status);
  EXPECT_EQ(model, nullptr);
  return status.message;
}

struct NoDriver {
  NoDriver() { setenv("KILN_LIBCUDA", "/nonexistent/libcuda.so.1", 1); }
  ~NoDriver() { unsetenv("KILN_LIBCUDA"); }
};

} // namespace

TEST(CudaEngineTest, WithoutADriverOneLine) {
  NoDriver noDriver;
  std::string path = writeEngine("ok.kiln", "sm_90a", planWith(validGpu()));
  for (auto device : {kiln::Device::Auto, kiln::Device::Cuda})
    EXPECT_NE(createError(path, device).find("no CUDA driver on this machine"),
              std::string::npos);
}

TEST(CudaEngineTest, DeviceMustMatchTheTarget) {
  std::string gpu = writeEngine("gpu.kiln", "sm_90a", planWith(validGpu()));
  EXPECT_NE(createError(gpu, kiln::Device::Host)
                .find("engine built for target 'sm_90a', which runs on "
                      "device 'cuda', not 'host'"),
            std::string::npos);
  std::string host =
      writeEngine("host.kiln", "host-x86_64", planWith(validGpu()));
  EXPECT_NE(createError(host, kiln::Device::Cuda)
                .find("which runs on device 'host', not 'cuda' (compile it "
                      "with kilnc --target sm_90a)"),
            std::string::npos);
  std::string other = writeEngine("other.kiln", "sm_100a", planWith("[]"));
  EXPECT_NE(createError(other, kiln::Device::Auto)
                .find("engine built for target 'sm_100a'; this runtime runs "
                      "'host-x86_64', 'sm_90a' engines"),
            std::string::npos);
}

TEST(CudaEngineTest, MalformedGpuLaunchesAreNamed) {
  NoDriver noDriver;
  const std::string cases[] = {
      // No function name field.
      R"([[{"block": 32, "grid": [], "params": []}]])",
      // An operand index past the launch's operands.
      std::string(R"([[{"function": "f", "block": 32, "grid": )") + kGrid +
          R"(, "params": [{"kind": "memref", "operand": 7}]}]])",
      // An unknown parameter kind.
      std::string(R"([[{"function": "f", "block": 32, "grid": )") + kGrid +
          R"(, "params": [{"kind": "texture", "operand": 0}]}]])",
      // A zero divisor in the grid.
      R"([[{"function": "f", "block": 32, "grid": [{"divisor": 0},
          {}, {}], "params": []}]])",
      // A step without variants.
      R"([[]])",
  };
  for (const std::string &gpu : cases) {
    std::string path = writeEngine("bad.kiln", "sm_90a", planWith(gpu));
    std::string error = createError(path, kiln::Device::Auto);
    EXPECT_NE(error.find("bad.kiln: malformed plan:"), std::string::npos)
        << gpu << " -> " << error;
    EXPECT_NE(error.find("memory_0"), std::string::npos) << error;
  }
}
