//===- FuzzTargets.cpp - libFuzzer entry points for every input reader ----===//
//
// One binary per reader (KILN_FUZZ_TARGET selects the body at compile
// time): the config reader, the safetensors header, the runtime's JSON
// (shard indexes and plans), the engine plan, the engine file, .npy arrays
// and token lists. Readers that take a path get the input through an
// anonymous file (memfd), so the fuzzer never touches the disk. A reader may
// refuse any input; it must never crash, hang or read out of bounds (the
// targets are built with AddressSanitizer and UBSan).
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/EngineFile.h"
#include "kiln/runtime/EnginePlan.h"
#include "kiln/runtime/Json.h"
#include "kiln/runtime/Npy.h"
#include "kiln/runtime/Safetensors.h"
#include "kiln/runtime/Tokens.h"
#if KILN_FUZZ_CONFIG
#include "kiln/Import/Llama4Config.h"
#endif

#include <cstddef>
#include <cstdint>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace {

/// The input as a file path (/proc/self/fd/N of a memfd), for the readers
/// that open files; the descriptor closes with the holder.
struct InputFile {
  int fd = -1;
  std::string path;
  InputFile(const uint8_t *data, size_t size) {
    fd = memfd_create("kiln-fuzz", MFD_CLOEXEC);
    if (fd < 0)
      return;
    size_t done = 0;
    while (done < size) {
      ssize_t n = ::write(fd, data + done, size - done);
      if (n <= 0)
        break;
      done += static_cast<size_t>(n);
    }
    path = "/proc/self/fd/" + std::to_string(fd);
  }
  ~InputFile() {
    if (fd >= 0)
      ::close(fd);
  }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string text(reinterpret_cast<const char *>(data), size);
  std::string error;
#if KILN_FUZZ_CONFIG
  auto config = kiln::parseLlama4Config(text, "fuzz/config.json");
  if (!config)
    llvm::consumeError(config.takeError());
#elif KILN_FUZZ_SAFETENSORS
  InputFile file(data, size);
  auto opened = kiln::SafetensorsFile::open(file.path, error);
  if (opened)
    for (const auto &[name, info] : opened->tensors()) {
      // Touch the first and last byte of every tensor the header admits.
      const uint8_t *bytes = info.data();
      size_t n = info.end - info.begin;
      volatile uint8_t sink = n ? bytes[0] ^ bytes[n - 1] : 0;
      (void)sink;
    }
#elif KILN_FUZZ_JSON
  kiln::json::Value root;
  kiln::json::parse(text, root, error);
#elif KILN_FUZZ_PLAN
  kiln::plan::Plan plan;
  kiln::plan::readPlan(text, "fuzz.kiln", plan, error);
#elif KILN_FUZZ_ENGINE
  InputFile file(data, size);
  kiln::EngineFile engine;
  if (kiln::EngineFile::read(file.path, "", engine, error)) {
    auto planText = engine.sections.find(kiln::SectionKind::Plan);
    kiln::plan::Plan plan;
    if (planText != engine.sections.end())
      kiln::plan::readPlan(planText->second, "fuzz.kiln", plan, error);
  }
#elif KILN_FUZZ_NPY
  InputFile file(data, size);
  std::vector<int64_t> shape;
  std::vector<float> values;
  kiln::readNpyF32(file.path, shape, values, error);
#elif KILN_FUZZ_TOKENS
  std::vector<int64_t> tokens;
  kiln::parseTokenList(text, "fuzz", tokens, error);
#else
#error "define one KILN_FUZZ_<TARGET>"
#endif
  return 0;
}
