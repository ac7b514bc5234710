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

class Session {
public:
  /// Empty `error` on success.
  static std::unique_ptr<Session> open(const std::string &engine,
                                       const std::string &checkpoint,
                                       std::string &error,
                                       kiln_device device = KILN_DEVICE_AUTO,
                                       int64_t kvTokens = 0) {
    kiln_session_params params;
    kiln_session_params_init(&params);
    params.engine_path = engine.c_str();
    params.checkpoint_dir = checkpoint.c_str();
    params.device = device;
    params.kv_tokens = kvTokens;
    kiln_session *handle = nullptr;
    error = consume(kiln_session_create(&params, &handle));
    if (!error.empty())
      return nullptr;
    return std::unique_ptr<Session>(new Session(handle));
  }
  ~Session() { kiln_session_free(handle); }
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  int64_t vocabSize() const { return kiln_session_vocab_size(handle); }
  std::vector<int64_t> eosTokens() const {
    const int64_t *ids = nullptr;
    size_t n = kiln_session_eos_tokens(handle, &ids);
    return std::vector<int64_t>(ids, ids + n);
  }
  /// Empty string on success.
  std::string run(const std::vector<int64_t> &tokens,
                  const std::vector<int64_t> &positions,
                  std::vector<float> &logits) {
    logits.resize(tokens.size() * static_cast<size_t>(vocabSize()));
    return consume(kiln_session_run(handle, tokens.data(), positions.data(),
                                    tokens.size(), logits.data(),
                                    logits.size()));
  }
  /// Only the last token's logits (vocab floats).
  std::string runLast(const std::vector<int64_t> &tokens,
                      const std::vector<int64_t> &positions,
                      std::vector<float> &logits) {
    logits.resize(static_cast<size_t>(vocabSize()));
    return consume(kiln_session_run_last(handle, tokens.data(),
                                         positions.data(), tokens.size(),
                                         logits.data(), logits.size()));
  }
  /// The greedy next token (on the GPU for sm_90a engines).
  std::string runGreedy(const std::vector<int64_t> &tokens,
                        const std::vector<int64_t> &positions, int64_t &token) {
    return consume(kiln_session_run_greedy(
        handle, tokens.data(), positions.data(), tokens.size(), &token));
  }
  /// The next token drawn with `sampler` (on the GPU for sm_90a engines).
  std::string runSample(const std::vector<int64_t> &tokens,
                        const std::vector<int64_t> &positions, Sampler &sampler,
                        int64_t &token) {
    return consume(kiln_session_run_sample(handle, tokens.data(),
                                           positions.data(), tokens.size(),
                                           sampler.get(), &token));
  }
  void reset() { kiln_session_reset(handle); }

private:
  explicit Session(kiln_session *handle) : handle(handle) {}
  kiln_session *handle;
};

/// Number of usable GPUs; 0 with `error` saying what is missing.
inline int cudaDevices(std::string &error) {
  int count = 0;
  error = consume(kiln_cuda_probe(&count));
  return count;
}

} // namespace kiln::api

#endif // KILN_KILN_HPP
