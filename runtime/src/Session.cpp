//===- Session.cpp - Running host engines
//----------------------------------===//
//
// Kernels are called through their C interface, `_mlir_ciface_<kernel>`,
// with one memref descriptor per argument: {allocated, aligned, offset,
// sizes[rank], strides[rank]}, every field 8 bytes. Outputs follow inputs;
// attention kernels take the positions of their keys after the inputs, and
// their key/value arguments are the KV pool of the call site (cached rows,
// then the new ones, appended here before the launch).
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/Session.h"
#include "CudaSession.h"
#include "Plan.h"
#include "kiln/runtime/EngineFile.h"
#include "kiln/runtime/Json.h"
#include "kiln/runtime/Safetensors.h"
#include "kiln/runtime/Sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <dlfcn.h>
#include <fstream>
#include <unistd.h>

using namespace kiln;

namespace {

using plan::AttentionUse;
using plan::elementSize;
using plan::Launch;
using plan::ValueKind;
using PlanValue = plan::Value;

/// A host KV pool: cached rows in f32, then their positions.
struct KvSlot {
  int64_t width = 0;
  int64_t chunk = 0;
  std::vector<float> keys, values;
  std::vector<int64_t> positions;
};

using P = void *;
void invoke(void *fn, std::vector<P> &a) {
#define KILN_ARGS_1 a[0]
#define KILN_ARGS_2 KILN_ARGS_1, a[1]
#define KILN_ARGS_3 KILN_ARGS_2, a[2]
#define KILN_ARGS_4 KILN_ARGS_3, a[3]
#define KILN_ARGS_5 KILN_ARGS_4, a[4]
#define KILN_ARGS_6 KILN_ARGS_5, a[5]
#define KILN_ARGS_7 KILN_ARGS_6, a[6]
#define KILN_ARGS_8 KILN_ARGS_7, a[7]
#define KILN_ARGS_9 KILN_ARGS_8, a[8]
#define KILN_ARGS_10 KILN_ARGS_9, a[9]
#define KILN_ARGS_11 KILN_ARGS_10, a[10]
#define KILN_ARGS_12 KILN_ARGS_11, a[11]
#define KILN_TYPES_1 P
#define KILN_TYPES_2 KILN_TYPES_1, P
#define KILN_TYPES_3 KILN_TYPES_2, P
#define KILN_TYPES_4 KILN_TYPES_3, P
#define KILN_TYPES_5 KILN_TYPES_4, P
#define KILN_TYPES_6 KILN_TYPES_5, P
#define KILN_TYPES_7 KILN_TYPES_6, P
#define KILN_TYPES_8 KILN_TYPES_7, P
#define KILN_TYPES_9 KILN_TYPES_8, P
#define KILN_TYPES_10 KILN_TYPES_9, P
#define KILN_TYPES_11 KILN_TYPES_10, P
#define KILN_TYPES_12 KILN_TYPES_11, P
#define KILN_CASE(N)                                                           \
  case N:                                                                      \
    reinterpret_cast<void (*)(KILN_TYPES_##N)>(fn)(KILN_ARGS_##N);             \
    return;
  switch (a.size()) {
    KILN_CASE(1)
    KILN_CASE(2)
    KILN_CASE(3)
    KILN_CASE(4)
    KILN_CASE(5)
    KILN_CASE(6)
    KILN_CASE(7)
    KILN_CASE(8)
    KILN_CASE(9) KILN_CASE(10) KILN_CASE(11) KILN_CASE(12) default : break;
  }
}

/// One memref descriptor: pointers and int64s, 8 bytes each.
std::vector<int64_t> describe(const void *data,
                              const std::vector<int64_t> &shape) {
  size_t rank = shape.size();
  std::vector<int64_t> d(3 + 2 * rank, 0);
  d[0] = d[1] = reinterpret_cast<int64_t>(data);
  int64_t stride = 1;
  for (size_t i = rank; i-- > 0;) {
    d[3 + i] = shape[i];
    d[3 + rank + i] = stride;
    stride *= shape[i];
  }
  return d;
}

} // namespace

struct Session::Impl : plan::Plan {
  std::unique_ptr<Checkpoint> checkpoint;
  void *library = nullptr;
  std::string libraryPath;
  std::vector<KvSlot> slots;
  std::vector<uint64_t> arena; // 8-byte aligned
  std::vector<int32_t> tokens32;
  std::vector<int64_t> tokens64, positions;
  size_t steps = 0; // runs so far (names KILN_DUMP_DIR files)
  /// Set for sm_90a engines: the CUDA backend runs them.
  std::unique_ptr<CudaSession> cuda;

  ~Impl() {
    if (library)
      dlclose(library);
    if (!libraryPath.empty())
      std::remove(libraryPath.c_str());
  }

  bool checkInputs(const std::vector<int64_t> &tokens,
                   const std::vector<int64_t> &positions,
                   std::string &error) const {
    if (tokens.empty() || positions.size() != tokens.size()) {
      error = "expected one position per token and at least one token";
      return false;
    }
    for (int64_t id : tokens)
      if (id < 0 || id >= vocab) {
        error = "token id " + std::to_string(id) +
                " is outside the vocabulary [0, " + std::to_string(vocab) + ")";
        return false;
      }
    return true;
  }

  /// Opens the checkpoint and binds its weights to the plan.
  bool bindCheckpoint(const std::string &dir, std::string &error) {
    checkpoint = Checkpoint::open(dir, error);
    if (!checkpoint)
      return false;
    if (!checkpoint->hasWeights()) {
      error = dir + ": no weights to run the engine with";
      return false;
    }
    return bindWeights(*checkpoint, error);
  }

  std::vector<int64_t> shapeOf(const PlanValue &v) const {
    std::vector<int64_t> s = v.shape;
    if (!s.empty() && s[0] < 0)
      s[0] = v.rows;
    return s;
  }
};

static std::string gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", bytes / (1024.0 * 1024 * 1024));
  return text;
}

Session::Session(std::unique_ptr<Impl> impl) : impl(std::move(impl)) {}
Session::~Session() = default;

std::unique_ptr<Session> Session::create(const std::string &enginePath,
                                         const std::string &checkpointDir,
                                         std::string &error, Device device,
                                         int64_t kvTokens) {
  EngineFile engine;
  if (!EngineFile::read(enginePath, "", engine, error))
    return nullptr;
  bool gpu = engine.target == "sm_90a";
  if (!gpu && engine.target != "host-x86_64") {
    error = enginePath + ": engine built for target '" + engine.target +
            "'; this runtime runs 'host-x86_64' and 'sm_90a' engines";
    return nullptr;
  }
  if (gpu && device == Device::Host) {
    error = enginePath + ": engine built for target 'sm_90a', not "
                         "'host-x86_64' (compile with kilnc --target host)";
    return nullptr;
  }
  if (!gpu && device == Device::Cuda) {
    error = enginePath + ": engine built for target 'host-x86_64'; --device "
                         "cuda runs sm_90a engines (kilnc --target sm_90a)";
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  if (gpu) {
    auto plan = engine.sections.find(SectionKind::Plan);
    if (plan == engine.sections.end()) {
      error = enginePath + ": engine lacks its plan";
      return nullptr;
    }
    if (!impl->parse(plan->second, enginePath, error))
      return nullptr;
    impl->cuda = CudaSession::open(engine, *impl, enginePath, error);
    if (!impl->cuda || !impl->bindCheckpoint(checkpointDir, error) ||
        !impl->cuda->upload(*impl, error) ||
        !impl->cuda->reserve(*impl, kvTokens, error))
      return nullptr;
    return std::unique_ptr<Session>(new Session(std::move(impl)));
  }
  auto plan = engine.sections.find(SectionKind::Plan);
  auto kernels = engine.sections.find(SectionKind::HostKernels);
  if (plan == engine.sections.end() || kernels == engine.sections.end()) {
    error = enginePath + ": engine lacks its plan or its kernels";
    return nullptr;
  }
  if (!impl->parse(plan->second, enginePath, error))
    return nullptr;
  if (kvTokens > 0) {
    // Host pools hold f32 keys and values and i64 positions.
    double bytes = 0;
    for (const plan::Slot &info : impl->slotInfo)
      bytes += double(plan::reservedRows(info, kvTokens)) *
               (2.0 * info.width * sizeof(float) + sizeof(int64_t));
    double memory = double(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
    if (bytes > memory) {
      error = enginePath + ": the KV caches for " + std::to_string(kvTokens) +
              " tokens need " + gib(bytes) + " GiB; this machine has " +
              gib(memory) + " GiB";
      return nullptr;
    }
  }
  for (const plan::Slot &info : impl->slotInfo) {
    KvSlot slot;
    slot.width = info.width;
    slot.chunk = info.chunk;
    if (kvTokens > 0) {
      size_t rows = static_cast<size_t>(plan::reservedRows(info, kvTokens));
      slot.keys.reserve(rows * info.width);
      slot.values.reserve(rows * info.width);
      slot.positions.reserve(rows);
    }
    impl->slots.push_back(std::move(slot));
  }
  // dlopen needs a file: write the kernels next to the system's temp files.
  char pattern[] = "/tmp/kiln-kernels-XXXXXX";
  int fd = mkstemp(pattern);
  if (fd < 0) {
    error = "cannot create a temporary file for the kernels";
    return nullptr;
  }
  impl->libraryPath = pattern;
  bool written = ::write(fd, kernels->second.data(), kernels->second.size()) ==
                 static_cast<ssize_t>(kernels->second.size());
  ::close(fd);
  if (!written) {
    error = "cannot write the kernels to " + impl->libraryPath;
    return nullptr;
  }
  impl->library = dlopen(impl->libraryPath.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!impl->library) {
    error = enginePath + ": cannot load its kernels: " + dlerror();
    return nullptr;
  }
  for (Launch &l : impl->launches) {
    std::string symbol = "_mlir_ciface_" + l.kernel;
    l.entry = dlsym(impl->library, symbol.c_str());
    if (!l.entry) {
      error = enginePath + ": kernel '" + l.kernel + "' is missing";
      return nullptr;
    }
    if (l.args.size() + l.attention.size() + l.results.size() > 12) {
      error =
          enginePath + ": kernel '" + l.kernel + "' takes too many arguments";
      return nullptr;
    }
  }
  if (!impl->bindCheckpoint(checkpointDir, error))
    return nullptr;
  return std::unique_ptr<Session>(new Session(std::move(impl)));
}

void Session::reset() {
  if (impl->cuda)
    impl->cuda->reset();
  for (KvSlot &s : impl->slots) {
    s.keys.clear();
    s.values.clear();
    s.positions.clear();
  }
}

int64_t Session::vocabSize() const { return impl->vocab; }
const std::vector<int64_t> &Session::eosTokenIds() const { return impl->eos; }

bool Session::run(const std::vector<int64_t> &tokens,
                  const std::vector<int64_t> &positions,
                  std::vector<float> &logits, int64_t &vocab,
                  std::string &error, bool lastOnly) {
  Impl &s = *impl;
  int64_t t = static_cast<int64_t>(tokens.size());
  if (!s.checkInputs(tokens, positions, error))
    return false;
  if (s.cuda) {
    vocab = s.vocab;
    return s.cuda->run(s, tokens, positions, logits, error, lastOnly);
  }
  s.tokens32.assign(tokens.begin(), tokens.end());
  s.tokens64 = tokens;
  s.positions = positions;
  for (PlanValue &v : s.values)
    if (v.kind == ValueKind::Input) {
      v.rows = t;
      if (v.input == "positions")
        v.data = s.positions.data();
      else
        v.data = v.dtype == "I32"
                     ? static_cast<const void *>(s.tokens32.data())
                     : static_cast<const void *>(s.tokens64.data());
    }

  std::string dumpDir = plan::dumpDirectory();
  ++s.steps;
  // One arena for the step's activations, laid out by the plan.
  s.arena.resize((s.arenaBytesPerToken * t + 7) / 8);
  uint8_t *arena = reinterpret_cast<uint8_t *>(s.arena.data());
  std::vector<std::vector<int64_t>> descriptors;
  std::vector<P> pointers;
  for (Launch &l : s.launches) {
    // The LM head of a last-row-only step reads the last row and writes one.
    bool lastRow = lastOnly && t > 1 && plan::producesLogits(s, l);
    for (int64_t id : l.results) {
      PlanValue &v = s.values[id];
      v.rows = lastRow ? 1 : t * v.rowsPerToken;
      if (v.arenaOffset >= 0) {
        v.data = arena + v.arenaOffset * t;
        continue;
      }
      std::vector<int64_t> shape = s.shapeOf(v);
      int64_t n = 1;
      for (int64_t d : shape)
        n *= d;
      v.owned.resize(static_cast<size_t>(n) * elementSize(v.dtype));
      v.data = v.owned.data();
    }
    descriptors.clear();
    for (size_t i = 0; i < l.args.size(); ++i) {
      const PlanValue &v = s.values[l.args[i]];
      std::vector<int64_t> shape = s.shapeOf(v);
      const uint8_t *data = static_cast<const uint8_t *>(v.data);
      if (lastRow && !v.shape.empty() && v.shape[0] < 0) {
        data += (shape[0] - 1) * plan::rowBytes(v);
        shape[0] = 1;
      }
      descriptors.push_back(describe(data, shape));
    }
    // Attention: append the new keys/values to the call site's pool and pass
    // the whole pool with its positions.
    for (const AttentionUse &a : l.attention) {
      KvSlot &slot = s.slots[a.slot];
      // A chunked layer never sees keys before the chunk of the step's first
      // token: drop them, so its pool holds at most one chunk (plus the
      // step's own tokens).
      if (slot.chunk > 0 && !slot.positions.empty()) {
        int64_t first = *std::min_element(positions.begin(), positions.end());
        int64_t chunkStart = first / slot.chunk * slot.chunk;
        size_t keep = 0;
        while (keep < slot.positions.size() &&
               slot.positions[keep] < chunkStart)
          ++keep;
        if (keep > 0) {
          slot.positions.erase(slot.positions.begin(),
                               slot.positions.begin() + keep);
          slot.keys.erase(slot.keys.begin(),
                          slot.keys.begin() + keep * slot.width);
          slot.values.erase(slot.values.begin(),
                            slot.values.begin() + keep * slot.width);
        }
      }
      const PlanValue &k = s.values[l.args[a.keyArg]];
      const PlanValue &v = s.values[l.args[a.valueArg]];
      const float *kd = static_cast<const float *>(k.data);
      const float *vd = static_cast<const float *>(v.data);
      slot.keys.insert(slot.keys.end(), kd, kd + t * slot.width);
      slot.values.insert(slot.values.end(), vd, vd + t * slot.width);
      slot.positions.insert(slot.positions.end(), positions.begin(),
                            positions.end());
      int64_t cached = static_cast<int64_t>(slot.positions.size());
      descriptors[a.keyArg] = describe(slot.keys.data(), {cached, slot.width});
      descriptors[a.valueArg] =
          describe(slot.values.data(), {cached, slot.width});
    }
    for (const AttentionUse &a : l.attention) {
      KvSlot &slot = s.slots[a.slot];
      descriptors.push_back(
          describe(slot.positions.data(),
                   {static_cast<int64_t>(slot.positions.size())}));
    }
    for (int64_t id : l.results) {
      const PlanValue &v = s.values[id];
      descriptors.push_back(describe(v.data, s.shapeOf(v)));
    }
    pointers.clear();
    for (auto &d : descriptors)
      pointers.push_back(d.data());
    invoke(l.entry, pointers);
    if (!dumpDir.empty())
      for (size_t r = 0; r < l.results.size(); ++r) {
        const PlanValue &v = s.values[l.results[r]];
        if (!plan::dumpValue(dumpDir, s.steps,
                             static_cast<size_t>(&l - s.launches.data()),
                             l.kernel, r, v.dtype, s.shapeOf(v), v.data, error))
          return false;
      }
  }
  const PlanValue &out = s.values[s.logits];
  const float *data = static_cast<const float *>(out.data);
  // Without lastOnly (or with one token) every row was computed.
  int64_t rows = out.rows;
  logits.assign(data + (lastOnly ? (rows - 1) * s.vocab : 0),
                data + rows * s.vocab);
  vocab = s.vocab;
  return true;
}

bool Session::runSample(const std::vector<int64_t> &tokens,
                        const std::vector<int64_t> &positions, Sampler &sampler,
                        int64_t &token, std::string &error) {
  const SamplingParams &p = sampler.parameters();
  if (p.temperature <= 0.0)
    return runGreedy(tokens, positions, token, error);
  double u = sampler.nextUniform();
  if (impl->cuda) {
    double request[4] = {p.temperature, static_cast<double>(p.topK), p.topP, u};
    std::vector<float> logits;
    return impl->checkInputs(tokens, positions, error) &&
           impl->cuda->run(*impl, tokens, positions, logits, error,
                           /*lastOnly=*/true, &token, request);
  }
  std::vector<float> logits;
  int64_t vocab = 0;
  if (!run(tokens, positions, logits, vocab, error, /*lastOnly=*/true))
    return false;
  token = Sampler::pickWith(p, logits.data(), vocab, u);
  return true;
}

bool Session::runGreedy(const std::vector<int64_t> &tokens,
                        const std::vector<int64_t> &positions, int64_t &token,
                        std::string &error) {
  std::vector<float> logits;
  int64_t vocab = 0;
  if (impl->cuda)
    return impl->checkInputs(tokens, positions, error) &&
           impl->cuda->run(*impl, tokens, positions, logits, error,
                           /*lastOnly=*/true, &token);
  if (!run(tokens, positions, logits, vocab, error, /*lastOnly=*/true))
    return false;
  // NaN ranks lowest; the first of equal logits wins, as on the GPU.
  token = 0;
  float best = -INFINITY;
  bool found = false;
  for (int64_t i = 0; i < vocab; ++i) {
    float v = std::isnan(logits[i]) ? -INFINITY : logits[i];
    if (!found || v > best) {
      best = v;
      token = i;
      found = true;
    }
  }
  return true;
}
