//===- Model.h - Loaded engines and the sequences run on them ---*- C++ -*-===//
//
// A Model is an engine plus a checkpoint's weights, loaded once on the
// backend its target names (host loops or one sm_90a GPU). Sessions are
// sequences run on it, each with its own KV caches and activations; any
// number of them may run at once, each from one thread at a time. No MLIR,
// no LLVM: this is what ships (the C API in kiln/kiln.h wraps it).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_MODEL_H
#define KILN_RUNTIME_MODEL_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kiln {

class Sampler;
class Session;

/// Mirrors kiln_status_code (kiln/kiln.h), value for value.
enum class StatusCode {
  Ok = 0,
  InvalidArgument = 1,
  NotFound = 2,
  InvalidEngine = 3,
  InvalidCheckpoint = 4,
  Unavailable = 5,
  OutOfMemory = 6,
  DeviceError = 7,
  Internal = 8,
};

struct Status {
  StatusCode code = StatusCode::Ok;
  std::string message;

  bool ok() const { return code == StatusCode::Ok; }
  static Status error(StatusCode code, std::string message) {
    return {code, std::move(message)};
  }
};

/// Where an engine runs: its target decides (Auto), or the caller insists
/// and gets a clear error when the engine is for another one.
enum class Device { Auto, Host, Cuda };

/// Every runtime setting. Each one that an environment variable also sets
/// names it; fromEnvironment() reads them all.
struct RuntimeOptions {
  Device device = Device::Auto;
  /// The CUDA driver library (KILN_LIBCUDA; empty: libcuda.so.1).
  std::string cudaDriver;
  /// Replay decode steps as CUDA graphs (KILN_CUDA_GRAPH=0 turns off).
  bool cudaGraphs = true;
  /// Synchronize after every GPU launch, so a fault names its kernel
  /// (KILN_CUDA_SYNC).
  bool syncEachLaunch = false;
  /// Fill fresh device memory with 0xff (NaN) (KILN_CUDA_POISON).
  bool poisonDeviceMemory = false;
  /// Pick every GPU-picked token again on the host and report differences
  /// (KILN_CHECK_SAMPLER).
  bool checkSampler = false;
  /// Time every launch (GPU: with events; host: wall clock) and print a
  /// table per kernel and step size when the session ends (KILN_PROFILE).
  bool profile = false;
  /// Print CUDA graph launches and captures when a session ends
  /// (KILN_CUDA_GRAPH_STATS).
  bool graphStats = false;
  /// Write every launch's results as .npy files here (KILN_DUMP_DIR).
  std::string dumpDir;
  /// Threads of the host kernels (KILN_THREADS); 0: one per core this
  /// process may run on, shared among the ranks of an MPI run on one node;
  /// below 0 (KILN_THREADS not a count): Model::load refuses.
  int threads = 0;
  /// Treat this CPU as having at most this x86-64 level (KILN_CPU_CAP:
  /// x86-64-v2, -v3 or -v4), to try on one machine whether an engine loads
  /// on a lesser one.
  std::string cpuCap;

  static RuntimeOptions fromEnvironment();
};

/// What a run returns.
enum class OutputMode {
  /// Logits of every token: tokens x vocab floats.
  AllLogits,
  /// Logits of the last token only (the LM head runs on that row alone).
  LastLogits,
  /// The next token, picked by a sampler (greedy without one) where the
  /// engine runs: on the GPU for sm_90a engines, so no logits come back.
  Token,
};

class Model : public std::enable_shared_from_this<Model> {
public:
  ~Model();
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  /// Loads `enginePath` and binds the weights of `checkpointDir` to it.
  static std::shared_ptr<Model> load(const std::string &enginePath,
                                     const std::string &checkpointDir,
                                     const RuntimeOptions &options,
                                     Status &status);

  /// A new sequence. `kvTokens` > 0 reserves its KV caches for that many
  /// tokens of context (chunked layers: at most two chunks), failing here
  /// when they do not fit; sequences beyond it grow them.
  std::unique_ptr<Session> newSession(int64_t kvTokens, Status &status);

  int64_t vocabSize() const;
  /// This process's rank in the engine's tensor-parallel group, and the
  /// group's size (0 and 1 for an engine of one rank).
  int64_t rank() const;
  int64_t ranks() const;
  /// Data-parallel attention: the engine's replicas, each running its own
  /// sequence on ranks() / replicas() consecutive ranks, and this rank's
  /// replica (1 and 0 without them).
  int64_t replicas() const;
  int64_t replica() const;
  /// This rank's place among its replica's ranks (every stage's), in rank
  /// order: 0 for the rank that prints for the replica. rank() without
  /// replicas.
  int64_t replicaRank() const;
  const std::vector<int64_t> &eosTokenIds() const;
  /// The model's max_position_embeddings; 0 when the engine does not say.
  int64_t maxPositions() const;
  /// The engine's target ("host-x86_64", "sm_90a").
  const std::string &target() const;

  struct Impl;

private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl;
  friend class Session;
};

class Session {
public:
  ~Session();
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  /// Runs `count` tokens at `positions` (null: continuing from position()),
  /// after everything run since the last reset(). AllLogits and LastLogits
  /// fill `logits`; Token fills `token`, drawn by `sampler` (greedy when
  /// null or at temperature 0).
  Status run(const int64_t *tokens, const int64_t *positions, size_t count,
             OutputMode mode, Sampler *sampler, std::vector<float> &logits,
             int64_t &token);

  /// On an engine with data-parallel attention replicas, whose ranks all
  /// step together: takes part in a step of the other replicas with no
  /// tokens of this one (its ranks still run the experts they hold on the
  /// others' rows). A replica with nothing to run calls this rather than
  /// run(); every rank makes the same number of run() and idle() calls.
  Status idle();

  /// Forgets every token run so far.
  void reset();
  /// One past the largest position run so far (0 after a reset).
  int64_t position() const;
  const Model &model() const { return *owner; }

  struct Impl;

private:
  Session(std::shared_ptr<Model> owner, std::unique_ptr<Impl> impl);
  /// run() and idle() after their checks: `count` 0 is an idle step.
  Status runStep(const int64_t *tokens, const int64_t *positions, size_t count,
                 OutputMode mode, Sampler *sampler, std::vector<float> &logits,
                 int64_t &token);
  std::shared_ptr<Model> owner;
  std::unique_ptr<Impl> impl;
  friend class Model;
};

} // namespace kiln

#endif // KILN_RUNTIME_MODEL_H
