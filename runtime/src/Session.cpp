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
#include "kiln/runtime/EngineFile.h"
#include "kiln/runtime/Json.h"
#include "kiln/runtime/Safetensors.h"

#include <algorithm>
#include <cstring>
#include <dlfcn.h>
#include <fstream>
#include <unistd.h>

using namespace kiln;

namespace {

enum class ValueKind { Input, Weight, Concat, Buffer };

struct PlanValue {
  ValueKind kind;
  std::string input; // "tokens" / "positions"
  std::string name;  // checkpoint tensor
  std::string dtype;
  std::vector<int64_t> shape; // -1: rows set per run
  int64_t rowsPerToken = 1;
  std::vector<int64_t> of; // concat inputs
  int64_t axis = 0;
  // Storage.
  const void *data = nullptr;
  std::vector<uint8_t> owned;
  int64_t rows = 0; // current dynamic extent
  /// Offset in the activation arena, per token of the step; -1: own storage.
  int64_t arenaOffset = -1;
};

struct AttentionUse {
  int64_t keyArg, valueArg, slot;
};

struct Launch {
  std::string kernel;
  void *entry = nullptr;
  std::vector<int64_t> args, results;
  std::vector<AttentionUse> attention;
};

struct KvSlot {
  int64_t width = 0;
  /// Chunk size of a chunked layer (0: full attention keeps everything).
  int64_t chunk = 0;
  std::vector<float> keys, values;
  std::vector<int64_t> positions;
};

size_t elementSize(const std::string &dtype) {
  if (dtype == "F32" || dtype == "I32")
    return 4;
  if (dtype == "I64")
    return 8;
  return 2; // BF16, F16
}

bool intsOf(const json::Value *v, std::vector<int64_t> &out) {
  if (!v || !v->isArray())
    return false;
  out.clear();
  for (const json::Value &e : v->array) {
    if (!e.isNumber() || !e.isInteger)
      return false;
    out.push_back(e.integer);
  }
  return true;
}

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
    KILN_CASE(6) KILN_CASE(7) KILN_CASE(8) KILN_CASE(9) KILN_CASE(10)
        KILN_CASE(11) KILN_CASE(12) default : break;
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

struct Session::Impl {
  std::unique_ptr<Checkpoint> checkpoint;
  void *library = nullptr;
  std::string libraryPath;
  std::vector<PlanValue> values;
  std::vector<Launch> launches;
  std::vector<KvSlot> slots;
  int64_t logits = -1;
  int64_t vocab = 0;
  int64_t arenaBytesPerToken = 0;
  std::vector<uint64_t> arena; // 8-byte aligned
  std::vector<int64_t> eos;
  std::vector<int32_t> tokens32;
  std::vector<int64_t> tokens64, positions;

  ~Impl() {
    if (library)
      dlclose(library);
    if (!libraryPath.empty())
      std::remove(libraryPath.c_str());
  }

  bool parsePlan(const std::string &text, const std::string &path,
                 std::string &error);
  bool bindWeights(std::string &error);
  std::vector<int64_t> shapeOf(const PlanValue &v) const {
    std::vector<int64_t> s = v.shape;
    if (!s.empty() && s[0] < 0)
      s[0] = v.rows;
    return s;
  }
};

bool Session::Impl::parsePlan(const std::string &text, const std::string &path,
                              std::string &error) {
  json::Value plan;
  std::string jsonError;
  if (!json::parse(text, plan, jsonError)) {
    error = path + ": malformed plan: " + jsonError;
    return false;
  }
  auto bad = [&](const std::string &what) {
    error = path + ": malformed plan: " + what;
    return false;
  };
  const json::Value *list = plan.find("values");
  if (!list || !list->isArray())
    return bad("no 'values'");
  for (const json::Value &entry : list->array) {
    PlanValue v;
    const json::Value *kind = entry.find("kind");
    const json::Value *dtype = entry.find("dtype");
    if (!kind || !kind->isString() || !dtype || !dtype->isString() ||
        !intsOf(entry.find("shape"), v.shape))
      return bad("value " + std::to_string(values.size()));
    v.dtype = dtype->string;
    if (kind->string == "input") {
      v.kind = ValueKind::Input;
      const json::Value *input = entry.find("input");
      if (!input || !input->isString())
        return bad("input without a name");
      v.input = input->string;
    } else if (kind->string == "weight") {
      v.kind = ValueKind::Weight;
      const json::Value *name = entry.find("name");
      if (!name || !name->isString())
        return bad("weight without a name");
      v.name = name->string;
    } else if (kind->string == "concat") {
      v.kind = ValueKind::Concat;
      if (!intsOf(entry.find("of"), v.of))
        return bad("concat without inputs");
      if (const json::Value *axis = entry.find("axis"))
        v.axis = axis->integer;
    } else if (kind->string == "buffer") {
      v.kind = ValueKind::Buffer;
      if (const json::Value *r = entry.find("rows_per_token"))
        v.rowsPerToken = r->integer;
      if (const json::Value *o = entry.find("arena_offset"))
        v.arenaOffset = o->integer;
    } else {
      return bad("unknown value kind '" + kind->string + "'");
    }
    values.push_back(std::move(v));
  }
  const json::Value *launchList = plan.find("launches");
  if (!launchList || !launchList->isArray())
    return bad("no 'launches'");
  for (const json::Value &entry : launchList->array) {
    Launch l;
    const json::Value *kernel = entry.find("kernel");
    if (!kernel || !kernel->isString() || !intsOf(entry.find("args"), l.args) ||
        !intsOf(entry.find("results"), l.results))
      return bad("launch " + std::to_string(launches.size()));
    l.kernel = kernel->string;
    if (const json::Value *att = entry.find("attention"))
      for (const json::Value &a : att->array) {
        const json::Value *k = a.find("key_arg"), *v = a.find("value_arg"),
                          *s = a.find("slot");
        if (!k || !v || !s)
          return bad("attention of launch " + std::to_string(launches.size()));
        l.attention.push_back({k->integer, v->integer, s->integer});
      }
    for (int64_t id : l.args)
      if (id < 0 || id >= static_cast<int64_t>(values.size()))
        return bad("launch argument out of range");
    for (int64_t id : l.results)
      if (id < 0 || id >= static_cast<int64_t>(values.size()))
        return bad("launch result out of range");
    launches.push_back(std::move(l));
  }
  if (const json::Value *kv = plan.find("kv_slots"))
    for (const json::Value &s : kv->array) {
      KvSlot slot;
      if (const json::Value *w = s.find("width"))
        slot.width = w->integer;
      if (const json::Value *c = s.find("chunk"))
        slot.chunk = c->integer;
      slots.push_back(std::move(slot));
    }
  if (const json::Value *a = plan.find("arena_bytes_per_token"))
    arenaBytesPerToken = a->integer;
  for (const PlanValue &v : values)
    if (v.arenaOffset >= 0 &&
        (v.kind != ValueKind::Buffer || v.arenaOffset >= arenaBytesPerToken))
      return bad("arena offset out of range");
  const json::Value *out = plan.find("logits");
  if (!out || !out->isInteger || out->integer < 0 ||
      out->integer >= static_cast<int64_t>(values.size()))
    return bad("no valid 'logits'");
  logits = out->integer;
  vocab = values[logits].shape.back();
  intsOf(plan.find("eos_token_ids"), eos);
  return true;
}

bool Session::Impl::bindWeights(std::string &error) {
  for (PlanValue &v : values) {
    if (v.kind == ValueKind::Weight) {
      const TensorInfo *info = checkpoint->find(v.name);
      if (!info) {
        error = checkpoint->locationOf(v.name) + ": missing tensor '" + v.name +
                "' the engine binds";
        return false;
      }
      if (info->shape != v.shape || dtypeName(info->dtype) != v.dtype) {
        error = info->file->path() + ": tensor '" + v.name + "' is " +
                dtypeName(info->dtype) + " " + info->shapeString() +
                "; the engine was compiled for " + v.dtype +
                " of another "
                "shape: recompile it for this checkpoint";
        return false;
      }
      v.data = info->data(); // zero-copy from the mapping
    } else if (v.kind == ValueKind::Concat) {
      if (v.axis != 0) {
        error = "engine: weight repacking along axis " +
                std::to_string(v.axis) + " is not supported";
        return false;
      }
      for (int64_t part : v.of) {
        const PlanValue &p = values[part];
        int64_t n = 1;
        for (int64_t d : p.shape)
          n *= d;
        const uint8_t *bytes = static_cast<const uint8_t *>(p.data);
        v.owned.insert(v.owned.end(), bytes, bytes + n * elementSize(p.dtype));
      }
      v.data = v.owned.data();
    }
  }
  return true;
}

Session::Session(std::unique_ptr<Impl> impl) : impl(std::move(impl)) {}
Session::~Session() = default;

std::unique_ptr<Session> Session::create(const std::string &enginePath,
                                         const std::string &checkpointDir,
                                         std::string &error) {
  EngineFile engine;
  if (!EngineFile::read(enginePath, "host-x86_64", engine, error))
    return nullptr;
  auto impl = std::make_unique<Impl>();
  auto plan = engine.sections.find(SectionKind::Plan);
  auto kernels = engine.sections.find(SectionKind::HostKernels);
  if (plan == engine.sections.end() || kernels == engine.sections.end()) {
    error = enginePath + ": engine lacks its plan or its kernels";
    return nullptr;
  }
  if (!impl->parsePlan(plan->second, enginePath, error))
    return nullptr;
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
  impl->checkpoint = Checkpoint::open(checkpointDir, error);
  if (!impl->checkpoint)
    return nullptr;
  if (!impl->checkpoint->hasWeights()) {
    error = checkpointDir + ": no weights to run the engine with";
    return nullptr;
  }
  if (!impl->bindWeights(error))
    return nullptr;
  return std::unique_ptr<Session>(new Session(std::move(impl)));
}

void Session::reset() {
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
                  std::string &error) {
  Impl &s = *impl;
  int64_t t = static_cast<int64_t>(tokens.size());
  if (t == 0 || positions.size() != tokens.size()) {
    error = "expected one position per token and at least one token";
    return false;
  }
  for (int64_t id : tokens)
    if (id < 0 || id >= s.vocab) {
      error = "token id " + std::to_string(id) +
              " is outside the vocabulary [0, " + std::to_string(s.vocab) + ")";
      return false;
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

  // One arena for the step's activations, laid out by the plan.
  s.arena.resize((s.arenaBytesPerToken * t + 7) / 8);
  uint8_t *arena = reinterpret_cast<uint8_t *>(s.arena.data());
  std::vector<std::vector<int64_t>> descriptors;
  std::vector<P> pointers;
  for (Launch &l : s.launches) {
    for (int64_t id : l.results) {
      PlanValue &v = s.values[id];
      v.rows = t * v.rowsPerToken;
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
      descriptors.push_back(describe(v.data, s.shapeOf(v)));
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
  }
  const PlanValue &out = s.values[s.logits];
  const float *data = static_cast<const float *>(out.data);
  logits.assign(data, data + t * s.vocab);
  vocab = s.vocab;
  return true;
}
