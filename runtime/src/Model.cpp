//===- Model.cpp - Loading engines; the step logic every backend shares ---===//

#include "kiln/runtime/Model.h"
#include "Backend.h"
#include "kiln/runtime/Npy.h"
#include "kiln/runtime/Safetensors.h"
#include "kiln/runtime/Sampler.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace kiln;

//===----------------------------------------------------------------------===//
// Options
//===----------------------------------------------------------------------===//

static bool envFlag(const char *name, bool fallback) {
  const char *v = std::getenv(name);
  if (!v || !*v)
    return fallback;
  return std::strcmp(v, "0") != 0;
}

RuntimeOptions RuntimeOptions::fromEnvironment() {
  RuntimeOptions o;
  if (const char *v = std::getenv("KILN_LIBCUDA"))
    o.cudaDriver = v;
  o.cudaGraphs = envFlag("KILN_CUDA_GRAPH", true);
  o.syncEachLaunch = envFlag("KILN_CUDA_SYNC", false);
  o.poisonDeviceMemory = envFlag("KILN_CUDA_POISON", false);
  o.checkSampler = envFlag("KILN_CHECK_SAMPLER", false);
  o.profile = envFlag("KILN_PROFILE", false);
  o.graphStats = envFlag("KILN_CUDA_GRAPH_STATS", false);
  if (const char *v = std::getenv("KILN_DUMP_DIR"))
    o.dumpDir = v;
  if (const char *v = std::getenv("KILN_CPU_CAP"))
    o.cpuCap = v;
  if (const char *v = std::getenv("KILN_THREADS")) {
    char *end = nullptr;
    long n = std::strtol(v, &end, 10);
    // Not silently all cores: Model::load refuses the setting instead.
    o.threads = end != v && *end == '\0' && n > 0 && n <= 4096
                    ? static_cast<int>(n)
                    : -1;
  }
  return o;
}

//===----------------------------------------------------------------------===//
// Shared helpers
//===----------------------------------------------------------------------===//

std::string kiln::gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", bytes / (1024.0 * 1024 * 1024));
  return text;
}

double kiln::hostMemoryLimit() {
  double memory = double(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  struct rlimit limit;
  if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
    memory = std::min(memory, double(limit.rlim_cur));
  return memory;
}

Status kiln::checkHostMemory(const std::string &what, double bytes) {
  double memory = hostMemoryLimit();
  if (bytes <= memory)
    return {};
  char size[32];
  std::snprintf(size, sizeof size, "%.0f", bytes);
  return Status::error(StatusCode::OutOfMemory,
                       what + " need " + size + " bytes (" + gib(bytes) +
                           " GiB); this process may use " + gib(memory) +
                           " GiB");
}

Status kiln::dumpValue(const std::string &dir, size_t step, size_t launch,
                       const std::string &kernel, size_t result,
                       plan::DType dtype, const std::vector<int64_t> &shape,
                       const void *data) {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  std::vector<float> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
    case plan::DType::F32:
      values[i] = static_cast<const float *>(data)[i];
      break;
    case plan::DType::BF16: {
      uint32_t bits =
          static_cast<uint32_t>(static_cast<const uint16_t *>(data)[i]) << 16;
      std::memcpy(&values[i], &bits, sizeof bits);
      break;
    }
    case plan::DType::I64:
      values[i] = static_cast<float>(static_cast<const int64_t *>(data)[i]);
      break;
    case plan::DType::I32:
      values[i] = static_cast<float>(static_cast<const int32_t *>(data)[i]);
      break;
    case plan::DType::F16:
      return Status::error(StatusCode::Internal,
                           "cannot dump values of type F16");
    }
  }
  char name[64];
  std::snprintf(name, sizeof name, "/%03zu_%04zu_", step, launch);
  std::string path =
      dir + name + kernel + "_" + std::to_string(result) + ".npy";
  std::string error;
  if (!writeNpyF32(path, shape, values.data(), error))
    return Status::error(StatusCode::Internal, error);
  return {};
}

std::vector<int64_t> Step::shapeOf(const plan::Plan &plan, int64_t id) const {
  std::vector<int64_t> shape = plan.values[id].shape;
  if (plan.values[id].isDynamic())
    shape[0] = rows[id];
  return shape;
}

bool Step::skips(const plan::Plan &plan, size_t launch) const {
  const plan::Launch &l = plan.launches[launch];
  if (l.kind == plan::LaunchKind::AllGather ||
      l.kind == plan::LaunchKind::ReduceScatter ||
      l.kind == plan::LaunchKind::TokenDispatch ||
      l.kind == plan::LaunchKind::TokenCombine)
    return false;
  for (size_t i = 0; i < l.operandCount(); ++i)
    if (plan.values[l.operand(i)].isDynamic() && rows[l.operand(i)] == 0)
      return true;
  return false;
}

void Step::setReceived(const plan::Plan &plan, int64_t pairs) const {
  for (size_t id = 0; id < plan.values.size(); ++id)
    if (plan.values[id].received)
      rows[id] = pairs;
}

TokenExchangeShape TokenExchangeShape::of(const plan::Plan &plan,
                                          const plan::Launch &l,
                                          int64_t ranks) {
  // A dispatch's routed rows are its first argument, a combine's its second
  // (after the pairs' outputs); the routing follows them.
  size_t rows = l.kind == plan::LaunchKind::TokenDispatch ? 0 : 1;
  TokenExchangeShape shape;
  shape.ranks = ranks;
  shape.groups = l.expertGroups;
  shape.perGroup = ranks / l.expertGroups;
  shape.width = plan.values[l.args[rows]].shape[1];
  shape.experts = plan.values[l.args[rows + 2]].shape[0] - 1;
  shape.local = shape.experts / l.expertGroups;
  return shape;
}

void kiln::routeTokenSends(const TokenExchangeShape &shape,
                           const int64_t *indices, const int64_t *offsets,
                           int64_t begin, int64_t end, TokenSends &out) {
  int64_t local = shape.local;
  out.toGroup.assign(static_cast<size_t>(shape.groups), {});
  out.perGroupExpert.assign(static_cast<size_t>(shape.groups * local), 0);
  out.perRankExpert.assign(static_cast<size_t>(shape.ranks * local), 0);
  if (begin >= end)
    return; // an idle replica's rank routed nothing: it only receives
  for (int64_t e = 0; e < shape.experts; ++e)
    for (int64_t p = offsets[e]; p < offsets[e + 1]; ++p) {
      if (indices[p] < begin || indices[p] >= end)
        continue; // another rank of the replica sends it
      int64_t g = e / local;
      out.toGroup[g].push_back(p);
      ++out.perGroupExpert[g * local + e % local];
      for (int64_t r = g * shape.perGroup; r < (g + 1) * shape.perGroup; ++r)
        ++out.perRankExpert[r * local + e % local];
    }
}

void kiln::fileReceivedPairs(const TokenExchangeShape &shape,
                             const std::vector<int64_t> &received,
                             std::vector<int64_t> &filedAt,
                             std::vector<int64_t> &offsets) {
  int64_t local = shape.local;
  filedAt.assign(received.size(), 0);
  offsets.assign(static_cast<size_t>(local + 1), 0);
  int64_t at = 0;
  for (int64_t e = 0; e < local; ++e) {
    for (int64_t s = 0; s < shape.ranks; ++s) {
      filedAt[s * local + e] = at;
      at += received[s * local + e];
    }
    offsets[e + 1] = at;
  }
}

OperandView Step::operand(const plan::Plan &plan, size_t launch,
                          size_t i) const {
  const plan::Launch &l = plan.launches[launch];
  OperandView view;
  view.value = l.operand(i);
  view.shape = shapeOf(plan, view.value);
  // The LM head of a last-row-only step reads its inputs' last row.
  if (lastRowOnly[launch] && i < l.args.size() &&
      plan.values[view.value].isDynamic()) {
    view.firstRow = view.shape[0] - 1;
    view.shape[0] = 1;
  }
  return view;
}

//===----------------------------------------------------------------------===//
// Model
//===----------------------------------------------------------------------===//

struct Model::Impl {
  BoundPlan bound;
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<Backend> backend;
  RuntimeOptions options;
  std::string target;
};

Model::Model(std::unique_ptr<Impl> impl) : impl(std::move(impl)) {}
Model::~Model() {
  // Backends free device memory before the checkpoint mapping goes.
  impl->backend.reset();
}

int64_t Model::vocabSize() const { return impl->bound.plan.vocab(); }
int64_t Model::rank() const { return impl->bound.rank; }
int64_t Model::ranks() const { return impl->bound.plan.worldSize(); }
int64_t Model::replicas() const { return impl->bound.plan.attentionReplicas; }
int64_t Model::replica() const { return impl->bound.replica; }
int64_t Model::replicaRank() const {
  return impl->bound.line ? impl->bound.line->rank() : 0;
}
int64_t Model::maxPositions() const { return impl->bound.plan.maxPositions; }

const std::vector<int64_t> &Model::eosTokenIds() const {
  return impl->bound.plan.eosTokenIds;
}
const std::string &Model::target() const { return impl->target; }

/// Points every weight at the checkpoint's mapping (zero-copy; a rank's
/// slice of a sharded one is copied) and builds the concat repackings.
static Status bindWeights(const Checkpoint &checkpoint, BoundPlan &bound) {
  const plan::Plan &plan = bound.plan;
  // Slices and concats are copies: their total is checked before any is made.
  double copied = 0;
  for (const plan::Value &v : plan.values) {
    if (!bound.binds(v) ||
        (v.kind != plan::ValueKind::Concat &&
         (v.kind != plan::ValueKind::Weight || v.shards.empty())))
      continue;
    double n = double(plan::elementSize(v.dtype));
    for (int64_t d : v.shape)
      n *= double(d);
    copied += n;
  }
  if (Status s = checkHostMemory(bound.enginePath +
                                     ": the weights this rank slices or "
                                     "repacks",
                                 copied);
      !s.ok())
    return s;
  bound.hostData.assign(plan.values.size(), nullptr);
  bound.repacked.resize(plan.values.size());
  bound.panelled.resize(plan.values.size());
  for (size_t id = 0; id < plan.values.size(); ++id) {
    const plan::Value &v = plan.values[id];
    if (!bound.binds(v))
      continue; // another pipeline stage's
    if (v.kind == plan::ValueKind::Weight) {
      const TensorInfo *info = checkpoint.find(v.name);
      if (!info)
        return Status::error(StatusCode::InvalidCheckpoint,
                             checkpoint.locationOf(v.name) +
                                 ": missing tensor '" + v.name +
                                 "' the engine binds");
      std::vector<int64_t> full = plan::unshardedShape(v.shards, v.shape);
      if (info->shape != full ||
          std::strcmp(dtypeName(info->dtype), plan::dtypeName(v.dtype)) != 0)
        return Status::error(
            StatusCode::InvalidCheckpoint,
            info->file->path() + ": tensor '" + v.name + "' is " +
                dtypeName(info->dtype) + " " + info->shapeString() +
                "; the engine was compiled for " + plan::dtypeName(v.dtype) +
                " of another shape: recompile it for this checkpoint");
      bound.hostData[id] = info->data();
      if (!v.shards.empty()) {
        plan::sliceShards(v.shards, full, plan::elementSize(v.dtype),
                          info->data(), bound.groupRank, plan.tensorParallel,
                          bound.repacked[id]);
        bound.hostData[id] = bound.repacked[id].data();
      }
    } else if (v.kind == plan::ValueKind::Concat) {
      if (v.axis != 0)
        return Status::error(StatusCode::InvalidEngine,
                             bound.enginePath +
                                 ": weight repacking along axis " +
                                 std::to_string(v.axis) + " is not supported");
      std::vector<uint8_t> &bytes = bound.repacked[id];
      for (int64_t part : v.of) {
        const plan::Value &p = plan.values[part];
        const uint8_t *data =
            static_cast<const uint8_t *>(bound.hostData[part]);
        if (!data)
          return Status::error(StatusCode::InvalidEngine,
                               bound.enginePath + ": concat value " +
                                   std::to_string(id) +
                                   " repacks a value that is not a weight");
        int64_t n = 1;
        for (int64_t d : p.shape)
          n *= d;
        bytes.insert(bytes.end(), data, data + n * plan::elementSize(p.dtype));
      }
      bound.hostData[id] = bytes.data();
    }
    // Host kernels that read a weight in panels: lay it out so now, in
    // huge pages where possible. The experts' panels are each read by only
    // a few tokens, so their reads run at memory latency: with 4 KiB pages
    // scattered in physical memory, prefill times varied 4x run to run.
    if (v.panel > 0 && bound.hostData[id]) {
      size_t bytes = plan::elementSize(v.dtype);
      for (int64_t d : v.shape)
        bytes *= static_cast<size_t>(d);
      HugeVector<uint8_t> &packed = bound.panelled[id];
      packed.resize(bytes);
      plan::packPanels(v.shape, plan::elementSize(v.dtype), bound.hostData[id],
                       v.panel, packed.data());
      bound.repacked[id].clear();
      bound.hostData[id] = packed.data();
    }
  }
  return {};
}

std::shared_ptr<Model> Model::load(const std::string &enginePath,
                                   const std::string &checkpointDir,
                                   const RuntimeOptions &options,
                                   Status &status) {
  status = {};
  if (options.threads < 0 || options.threads > 4096) {
    const char *env = std::getenv("KILN_THREADS");
    status = Status::error(
        StatusCode::InvalidArgument,
        std::string("threads must be 1 to 4096 (0: every core)") +
            (env ? std::string(", and KILN_THREADS is '") + env + "'" : ""));
    return nullptr;
  }
  struct stat info;
  if (::stat(enginePath.c_str(), &info) != 0) {
    status = Status::error(StatusCode::NotFound,
                           enginePath + ": " + std::strerror(errno));
    return nullptr;
  }
  EngineFile engine;
  std::string error;
  if (!EngineFile::read(enginePath, "", engine, error)) {
    status = Status::error(StatusCode::InvalidEngine, error);
    return nullptr;
  }
  const BackendEntry *entry = nullptr;
  std::string known;
  for (const BackendEntry &b : kBackends) {
    if (engine.target == b.target)
      entry = &b;
    known += std::string(known.empty() ? "" : ", ") + "'" + b.target + "'";
  }
  if (!entry) {
    status = Status::error(StatusCode::InvalidEngine,
                           enginePath + ": engine built for target '" +
                               engine.target + "'; this runtime runs " + known +
                               " engines");
    return nullptr;
  }
  if (options.device != Device::Auto && options.device != entry->device) {
    const char *wanted = "";
    for (const BackendEntry &b : kBackends)
      if (b.device == options.device)
        wanted = b.deviceName;
    status = Status::error(
        StatusCode::InvalidArgument,
        enginePath + ": engine built for target '" + engine.target +
            "', which runs on device '" + entry->deviceName + "', not '" +
            wanted + "' (compile it with kilnc --target " +
            (options.device == Device::Host ? "host" : "sm_90a") + ")");
    return nullptr;
  }
  auto planText = engine.sections.find(SectionKind::Plan);
  if (planText == engine.sections.end()) {
    status = Status::error(StatusCode::InvalidEngine,
                           enginePath + ": engine lacks its plan");
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->target = engine.target;
  impl->bound.enginePath = enginePath;
  if (!plan::readPlan(planText->second, enginePath, impl->bound.plan, error)) {
    status = Status::error(StatusCode::InvalidEngine, error);
    return nullptr;
  }
  // A tensor- or pipeline-parallel engine runs as one process per rank
  // (mpirun).
  if (int64_t ranks = impl->bound.plan.worldSize(); ranks > 1) {
    BoundPlan &bound = impl->bound;
    if (status = Communicator::world(bound.comm); !status.ok()) {
      status = Status::error(status.code, enginePath + ": " + status.message);
      return nullptr;
    }
    if (bound.comm->size() != ranks) {
      const plan::Plan &p = bound.plan;
      std::string layout =
          p.attentionReplicas > 1
              ? std::to_string(ranks) + " ranks (" +
                    (p.pipelineStages > 1
                         ? std::to_string(p.pipelineStages) + " stages of "
                         : std::string()) +
                    std::to_string(p.attentionReplicas) +
                    " attention replicas of " +
                    std::to_string(p.replicaRanks()) + ")"
          : bound.plan.pipelineStages > 1
              ? std::to_string(bound.plan.tensorParallel) +
                    " tensor-parallel ranks x " +
                    std::to_string(bound.plan.pipelineStages) +
                    " pipeline stages"
              : std::to_string(ranks) + " tensor-parallel ranks";
      status = Status::error(StatusCode::InvalidArgument,
                             enginePath + ": the engine is split over " +
                                 layout + " but this process is one of " +
                                 std::to_string(bound.comm->size()) +
                                 ": run it with mpirun -np " +
                                 std::to_string(ranks));
      return nullptr;
    }
    bound.rank = bound.comm->rank();
    bound.stage = bound.rank / bound.plan.tensorParallel;
    bound.groupRank = bound.rank % bound.plan.tensorParallel;
    // With attention replicas an all-reduce sums over one replica, and the
    // stage's ranks exchange rows.
    int64_t replicas = bound.plan.attentionReplicas;
    bound.replica = bound.groupRank / bound.plan.replicaRanks();
    if (status = bound.comm->split(bound.stage * replicas + bound.replica,
                                   bound.group);
        status.ok() && replicas > 1) {
      status = bound.comm->split(bound.stage, bound.exchange);
      if (status.ok())
        status = bound.comm->split(bound.replica, bound.line);
    } else {
      bound.line = bound.comm;
    }
    if (!status.ok()) {
      status = Status::error(status.code, enginePath + ": " + status.message);
      return nullptr;
    }
  }
  // The device and the code first (no driver or the wrong GPU is said before
  // a checkpoint is read), then the weights.
  if (status = entry->open(engine, impl->bound, options, impl->backend);
      !status.ok())
    return nullptr;
  impl->checkpoint = Checkpoint::open(checkpointDir, error);
  if (!impl->checkpoint) {
    status = Status::error(StatusCode::InvalidCheckpoint, error);
    return nullptr;
  }
  if (!impl->checkpoint->hasWeights()) {
    status =
        Status::error(StatusCode::InvalidCheckpoint,
                      checkpointDir + ": no weights to run the engine with");
    return nullptr;
  }
  if (status = bindWeights(*impl->checkpoint, impl->bound); !status.ok())
    return nullptr;
  if (status = impl->backend->uploadWeights(); !status.ok())
    return nullptr;
  return std::shared_ptr<Model>(new Model(std::move(impl)));
}

//===----------------------------------------------------------------------===//
// Session
//===----------------------------------------------------------------------===//

struct Session::Impl {
  std::unique_ptr<BackendSession> backend;
  /// Per KV slot: positions of its rows (the backends hold the rows).
  std::vector<std::vector<int64_t>> slotPositions;
  int64_t next = 0;
  size_t steps = 0;
};

std::unique_ptr<Session> Model::newSession(int64_t kvTokens, Status &status) {
  if (kvTokens < 0) {
    status = Status::error(StatusCode::InvalidArgument,
                           "kv_tokens must be >= 0 (got " +
                               std::to_string(kvTokens) + ")");
    return nullptr;
  }
  auto session = std::make_unique<Session::Impl>();
  if (status = impl->backend->newSession(kvTokens, session->backend);
      !status.ok())
    return nullptr;
  session->slotPositions.resize(impl->bound.plan.slots.size());
  return std::unique_ptr<Session>(
      new Session(shared_from_this(), std::move(session)));
}

Session::Session(std::shared_ptr<Model> owner, std::unique_ptr<Impl> impl)
    : owner(std::move(owner)), impl(std::move(impl)) {}
Session::~Session() = default;

void Session::reset() {
  impl->backend->reset();
  for (auto &p : impl->slotPositions)
    p.clear();
  impl->next = 0;
}

int64_t Session::position() const { return impl->next; }

Status Session::run(const int64_t *tokens, const int64_t *positions,
                    size_t count, OutputMode mode, Sampler *sampler,
                    std::vector<float> &logits, int64_t &token) {
  const Model::Impl &m = *owner->impl;
  const plan::Plan &plan = m.bound.plan;
  int64_t vocab = plan.vocab();
  if (!tokens || count == 0)
    return Status::error(StatusCode::InvalidArgument,
                         "expected at least one token");
  for (size_t i = 0; i < count; ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      return Status::error(StatusCode::InvalidArgument,
                           "token id " + std::to_string(tokens[i]) +
                               " is outside the vocabulary [0, " +
                               std::to_string(vocab) + ")");
  std::vector<int64_t> implicit;
  if (!positions) {
    for (size_t i = 0; i < count; ++i)
      implicit.push_back(impl->next + static_cast<int64_t>(i));
    positions = implicit.data();
  }
  for (size_t i = 0; i < count; ++i)
    // Kernels index positions in 32 bits (RoPE tables, chunk masks).
    if (positions[i] < 0 || positions[i] > INT32_MAX)
      return Status::error(StatusCode::InvalidArgument,
                           "position " + std::to_string(positions[i]) +
                               " is outside [0, 2^31)");

  return runStep(tokens, positions, count, mode, sampler, logits, token);
}

Status Session::idle() {
  const plan::Plan &plan = owner->impl->bound.plan;
  if (plan.attentionReplicas < 2)
    return Status::error(StatusCode::InvalidArgument,
                         "an idle step needs an engine with data-parallel "
                         "attention replicas; this one has none");
  std::vector<float> logits;
  int64_t token = -1;
  return runStep(nullptr, nullptr, 0, OutputMode::LastLogits, nullptr, logits,
                 token);
}

/// With attention replicas, every replica's token count in this step: the
/// ranks of a stage say theirs, and a replica's ranks must agree.
static Status replicaTokenCounts(const BoundPlan &bound, int64_t mine,
                                 std::vector<int64_t> &out) {
  std::vector<int64_t> counts;
  if (Status s = bound.exchange->allGatherCounts(mine, counts); !s.ok())
    return s;
  int64_t perReplica = bound.plan.replicaRanks();
  out.assign(static_cast<size_t>(bound.plan.attentionReplicas), 0);
  for (size_t k = 0; k < counts.size(); ++k) {
    size_t replica = k / static_cast<size_t>(perReplica);
    if (k % perReplica == 0)
      out[replica] = counts[k];
    else if (counts[k] != out[replica])
      return Status::error(StatusCode::InvalidArgument,
                           "replica " + std::to_string(replica) +
                               "'s ranks run different "
                               "steps (" +
                               std::to_string(out[replica]) + " and " +
                               std::to_string(counts[k]) +
                               " tokens): every rank of a replica "
                               "runs the same calls");
  }
  return {};
}

Status Session::runStep(const int64_t *tokens, const int64_t *positions,
                        size_t count, OutputMode mode, Sampler *sampler,
                        std::vector<float> &logits, int64_t &token) {
  const Model::Impl &m = *owner->impl;
  const plan::Plan &plan = m.bound.plan;
  int64_t vocab = plan.vocab();
  Step step;
  step.index = ++impl->steps;
  step.tokenCount = static_cast<int64_t>(count);
  step.tokens = tokens;
  step.positions = positions;
  step.mode = mode;
  step.dumpDir = m.options.dumpDir;
  int64_t t = step.tokenCount;
  int64_t gatheredTokens = 0;
  if (plan.attentionReplicas > 1) {
    if (Status s = replicaTokenCounts(m.bound, t, step.replicaTokens); !s.ok())
      return s;
    int64_t perReplica = plan.replicaRanks();
    for (int64_t k = 0; k < plan.tensorParallel; ++k) {
      int64_t tokens = step.replicaTokens[k / perReplica];
      int64_t part = k % perReplica;
      int64_t begin = tokens * part / perReplica;
      step.pieceBegin.push_back(begin);
      step.pieceRows.push_back(tokens * (part + 1) / perReplica - begin);
      step.pieceAt.push_back(gatheredTokens + begin);
      if (part + 1 == perReplica)
        gatheredTokens += tokens;
    }
  }
  step.rows.assign(plan.values.size(), 0);
  step.lastRowOnly.assign(plan.launches.size(), false);
  for (size_t id = 0; id < plan.values.size(); ++id)
    if (plan.values[id].kind == plan::ValueKind::Input)
      step.rows[id] = t;
  for (size_t li = 0; li < plan.launches.size(); ++li) {
    const plan::Launch &l = plan.launches[li];
    // The LM head of a last-row-only step reads the last row and writes one.
    step.lastRowOnly[li] =
        mode != OutputMode::AllLogits && t > 1 && plan::producesLogits(plan, l);
    for (int64_t id : l.results) {
      const plan::Value &v = plan.values[id];
      if (v.received)
        step.rows[id] = 0; // until the token dispatch says (setReceived)
      else if (step.lastRowOnly[li])
        step.rows[id] = 1;
      else
        step.rows[id] = (v.gathered ? gatheredTokens : t) * v.rowsPerToken;
    }
    // Above its limit the partials are all-reduced: one block, the sum.
    if (l.kind == plan::LaunchKind::GatherPartials && !l.gathersPartials(t))
      step.rows[l.results[0]] = t;
  }

  // KV slots: a chunked layer never sees keys before the chunk of the
  // step's first token, so its pool drops them and holds at most one chunk
  // plus the step.
  int64_t first =
      count ? *std::min_element(positions, positions + count) : int64_t(0);
  step.slots.resize(plan.slots.size());
  for (size_t i = 0; i < plan.slots.size(); ++i) {
    std::vector<int64_t> &kept = impl->slotPositions[i];
    SlotStep &s = step.slots[i];
    if (plan.slots[i].chunk > 0) {
      int64_t chunkStart = first / plan.slots[i].chunk * plan.slots[i].chunk;
      while (s.dropped < static_cast<int64_t>(kept.size()) &&
             kept[s.dropped] < chunkStart)
        ++s.dropped;
      kept.erase(kept.begin(), kept.begin() + s.dropped);
    }
    s.kept = static_cast<int64_t>(kept.size());
    kept.insert(kept.end(), positions, positions + count);
    s.total = static_cast<int64_t>(kept.size());
    s.positions = &kept;
  }

  bool pickHere = mode == OutputMode::Token && !m.backend->picksTokens();
  if (mode == OutputMode::Token) {
    SamplingParams greedy;
    const SamplingParams &p = sampler ? sampler->parameters() : greedy;
    double u = p.temperature > 0 ? sampler->nextUniform() : 0.0;
    step.sample[0] = p.temperature;
    step.sample[1] = static_cast<double>(p.topK);
    step.sample[2] = p.topP;
    step.sample[3] = u;
  }

  StepOutput out;
  Status status = impl->backend->run(step, out);
  if (!status.ok()) {
    // The KV pools may hold part of the step: start the sequence over.
    reset();
    return status;
  }
  for (size_t i = 0; i < count; ++i)
    impl->next = std::max(impl->next, positions[i] + 1);
  if (pickHere) {
    // The host rule: at temperature 0 the argmax (ties to the lower id, NaN
    // lowest), as the GPU picks it.
    SamplingParams p;
    p.temperature = step.sample[0];
    p.topK = static_cast<int64_t>(step.sample[1]);
    p.topP = step.sample[2];
    token = Sampler::pickWith(p, out.logits.data(), vocab, step.sample[3]);
    logits.clear();
    return {};
  }
  if (mode == OutputMode::Token) {
    token = out.token;
    logits.clear();
    return {};
  }
  logits = std::move(out.logits);
  return {};
}
