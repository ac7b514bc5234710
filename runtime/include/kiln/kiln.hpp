//===- kiln.hpp - Thin C++ wrapper over the Kiln C API ----------*- C++ -*-===//
//
// RAII and std::string errors over kiln.h; no behaviour of its own.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_KILN_HPP
#define KILN_KILN_HPP

#include "kiln/kiln.h"

#include <memory>
#include <string>
#include <vector>

namespace kiln::api {

/// Takes a status; returns its message ("" on success) and frees it.
inline std::string consume(kiln_status *status) {
  if (!status)
    return "";
  std::string message = kiln_status_message(status);
  kiln_status_free(status);
  return message;
}

class Sampler {
public:
  /// Empty `error` on success.
  static std::unique_ptr<Sampler> create(double temperature, int64_t topK,
                                         double topP, uint64_t seed,
                                         std::string &error) {
    kiln_sampler_params params;
    kiln_sampler_params_init(&params);
    params.temperature = temperature;
    params.top_k = topK;
    params.top_p = topP;
    params.seed = seed;
    kiln_sampler *handle = nullptr;
    error = consume(kiln_sampler_create(&params, &handle));
    if (!error.empty())
      return nullptr;
    return std::unique_ptr<Sampler>(new Sampler(handle));
  }
  ~Sampler() { kiln_sampler_free(handle); }
  Sampler(const Sampler &) = delete;
  Sampler &operator=(const Sampler &) = delete;

  int64_t pick(const float *logits, int64_t vocab) {
    int64_t token = 0;
    consume(kiln_sampler_pick(handle, logits, vocab, &token));
    return token;
  }
  kiln_sampler *get() { return handle; }

private:
  explicit Sampler(kiln_sampler *handle) : handle(handle) {}
  kiln_sampler *handle;
};

/// An engine and its weights, loaded once; sessions share it.
class Model {
public:
  /// Empty `error` on success. `params` may set any field of
  /// kiln_model_params; engine and checkpoint are filled in here.
  static std::unique_ptr<Model> load(const std::string &engine,
                                     const std::string &checkpoint,
                                     std::string &error,
                                     kiln_device device = KILN_DEVICE_AUTO,
                                     int threads = 0) {
    kiln_model_params params;
    kiln_model_params_init(&params);
    params.engine_path = engine.c_str();
    params.checkpoint_dir = checkpoint.c_str();
    params.device = device;
    params.threads = threads;
    kiln_model *handle = nullptr;
    error = consume(kiln_model_load(&params, &handle));
    if (!error.empty())
      return nullptr;
    return std::unique_ptr<Model>(new Model(handle));
  }
  ~Model() { kiln_model_free(handle); }
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  int64_t vocabSize() const { return kiln_model_vocab_size(handle); }
  int64_t rank() const { return kiln_model_rank(handle); }
  int64_t ranks() const { return kiln_model_ranks(handle); }
  int64_t replicas() const { return kiln_model_replicas(handle); }
  int64_t replica() const { return kiln_model_replica(handle); }
  int64_t replicaRank() const { return kiln_model_replica_rank(handle); }
  int64_t maxPositions() const { return kiln_model_max_positions(handle); }
  /// See kiln_abort_ranks.
  static void abortRanks(int exitCode) { kiln_abort_ranks(exitCode); }
  std::vector<int64_t> eosTokens() const {
    const int64_t *ids = nullptr;
    size_t n = kiln_model_eos_tokens(handle, &ids);
    return std::vector<int64_t>(ids, ids + n);
  }
  std::string target() const { return kiln_model_target(handle); }
  kiln_model *get() { return handle; }

private:
  explicit Model(kiln_model *handle) : handle(handle) {}
  kiln_model *handle;
};

/// One sequence on a model.
class Session {
public:
  /// Empty `error` on success.
  static std::unique_ptr<Session> open(Model &model, std::string &error,
                                       int64_t kvTokens = 0) {
    kiln_session_params params;
    kiln_session_params_init(&params);
    params.kv_tokens = kvTokens;
    kiln_session *handle = nullptr;
    error = consume(kiln_session_create(model.get(), &params, &handle));
    if (!error.empty())
      return nullptr;
    return std::unique_ptr<Session>(new Session(handle, model.vocabSize()));
  }
  ~Session() { kiln_session_free(handle); }
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  /// Logits of every token (AllLogits) or of the last (LastLogits). Empty
  /// string on success.
  std::string logits(const std::vector<int64_t> &tokens,
                     const std::vector<int64_t> &positions,
                     std::vector<float> &out, bool lastOnly = false) {
    out.resize((lastOnly ? 1 : tokens.size()) * static_cast<size_t>(vocab));
    kiln_output o;
    kiln_output_init(&o);
    o.mode = lastOnly ? KILN_OUTPUT_LAST_LOGITS : KILN_OUTPUT_ALL_LOGITS;
    o.logits = out.data();
    o.logits_capacity = out.size();
    return consume(kiln_session_run(handle, tokens.data(),
                                    positionsOrNull(positions, tokens),
                                    tokens.size(), &o));
  }
  /// The next token, drawn with `sampler` (greedy when null), picked where
  /// the engine runs.
  std::string next(const std::vector<int64_t> &tokens,
                   const std::vector<int64_t> &positions, Sampler *sampler,
                   int64_t &token) {
    kiln_output o;
    kiln_output_init(&o);
    o.sampler = sampler ? sampler->get() : nullptr;
    std::string error = consume(kiln_session_run(
        handle, tokens.data(), positionsOrNull(positions, tokens),
        tokens.size(), &o));
    token = o.token;
    return error;
  }
  /// See kiln_session_idle. Empty string on success.
  std::string idle() { return consume(kiln_session_idle(handle)); }
  void reset() { kiln_session_reset(handle); }
  int64_t position() const { return kiln_session_position(handle); }

private:
  Session(kiln_session *handle, int64_t vocab) : handle(handle), vocab(vocab) {}
  static const int64_t *positionsOrNull(const std::vector<int64_t> &positions,
                                        const std::vector<int64_t> &tokens) {
    return positions.size() == tokens.size() ? positions.data() : nullptr;
  }
  kiln_session *handle;
  int64_t vocab;
};

/// Number of usable GPUs; 0 with `error` saying what is missing.
inline int cudaDevices(std::string &error) {
  int count = 0;
  error = consume(kiln_cuda_probe(&count));
  return count;
}

} // namespace kiln::api

#endif // KILN_KILN_HPP
