//===- CApi.cpp - The Kiln runtime C API
//-----------------------------------===//

#include "kiln/kiln.h"
#include "kiln/runtime/CudaDriver.h"
#include "kiln/runtime/Sampler.h"
#include "kiln/runtime/Session.h"

#include <cstddef>

#include <cmath>

#include <new>
#include <string>

struct kiln_status {
  std::string message;
};

struct kiln_session {
  std::unique_ptr<kiln::Session> session;
};

struct kiln_sampler {
  kiln::Sampler sampler;
};

static kiln_status *makeStatus(std::string message) {
  return new (std::nothrow) kiln_status{std::move(message)};
}

extern "C" {

const char *kiln_status_message(const kiln_status *status) {
  return status ? status->message.c_str() : "";
}

void kiln_status_free(kiln_status *status) { delete status; }

void kiln_session_params_init(kiln_session_params *params) {
  if (!params)
    return;
  *params = kiln_session_params{};
  params->struct_size = sizeof(kiln_session_params);
}

kiln_status *kiln_session_create(const kiln_session_params *params,
                                 kiln_session **out_session) {
  if (!out_session)
    return makeStatus("kiln_session_create: out_session is NULL");
  *out_session = nullptr;
  // Callers built against an older header (no `device`) get AUTO.
  if (!params || params->struct_size < offsetof(kiln_session_params, device))
    return makeStatus("kiln_session_create: params not initialised with "
                      "kiln_session_params_init");
  auto has = [&](size_t offset, size_t size) {
    return params->struct_size >= offset + size;
  };
  kiln_device requested =
      has(offsetof(kiln_session_params, device), sizeof(kiln_device))
          ? params->device
          : KILN_DEVICE_AUTO;
  int64_t kvTokens =
      has(offsetof(kiln_session_params, kv_tokens), sizeof(int64_t))
          ? params->kv_tokens
          : 0;
  if (kvTokens < 0)
    return makeStatus("kiln_session_create: kv_tokens must be >= 0 (got " +
                      std::to_string(kvTokens) + ")");
  if (!params->engine_path || !params->checkpoint_dir)
    return makeStatus(
        "kiln_session_create: engine_path and checkpoint_dir are required");
  if (requested < KILN_DEVICE_AUTO || requested > KILN_DEVICE_CUDA)
    return makeStatus("kiln_session_create: unknown device " +
                      std::to_string(static_cast<int>(requested)));
  std::string error;
  auto device = requested == KILN_DEVICE_HOST   ? kiln::Session::Device::Host
                : requested == KILN_DEVICE_CUDA ? kiln::Session::Device::Cuda
                                                : kiln::Session::Device::Auto;
  auto session = kiln::Session::create(
      params->engine_path, params->checkpoint_dir, error, device, kvTokens);
  if (!session)
    return makeStatus(error);
  *out_session = new (std::nothrow) kiln_session{std::move(session)};
  if (!*out_session)
    return makeStatus("kiln_session_create: out of memory");
  return nullptr;
}

void kiln_session_free(kiln_session *session) { delete session; }

int64_t kiln_session_vocab_size(const kiln_session *session) {
  return session ? session->session->vocabSize() : 0;
}

size_t kiln_session_eos_tokens(const kiln_session *session,
                               const int64_t **out_tokens) {
  if (!session || !out_tokens)
    return 0;
  const std::vector<int64_t> &eos = session->session->eosTokenIds();
  *out_tokens = eos.data();
  return eos.size();
}

static kiln_status *runSession(const char *name, kiln_session *session,
                               const int64_t *tokens, const int64_t *positions,
                               size_t count, float *out_logits,
                               size_t logits_capacity, bool lastOnly) {
  if (!session || !tokens || !positions || !out_logits)
    return makeStatus(std::string(name) + ": NULL argument");
  int64_t vocab = session->session->vocabSize();
  size_t needed = (lastOnly ? 1 : count) * static_cast<size_t>(vocab);
  if (logits_capacity < needed)
    return makeStatus(std::string(name) + ": logits buffer holds " +
                      std::to_string(logits_capacity) + " floats, " +
                      std::to_string(needed) + " needed");
  std::vector<int64_t> ids(tokens, tokens + count);
  std::vector<int64_t> at(positions, positions + count);
  std::vector<float> logits;
  std::string error;
  if (!session->session->run(ids, at, logits, vocab, error, lastOnly))
    return makeStatus(error);
  std::copy(logits.begin(), logits.end(), out_logits);
  return nullptr;
}

kiln_status *kiln_session_run(kiln_session *session, const int64_t *tokens,
                              const int64_t *positions, size_t count,
                              float *out_logits, size_t logits_capacity) {
  return runSession("kiln_session_run", session, tokens, positions, count,
                    out_logits, logits_capacity, /*lastOnly=*/false);
}

kiln_status *kiln_session_run_last(kiln_session *session, const int64_t *tokens,
                                   const int64_t *positions, size_t count,
                                   float *out_logits, size_t logits_capacity) {
  return runSession("kiln_session_run_last", session, tokens, positions, count,
                    out_logits, logits_capacity, /*lastOnly=*/true);
}

kiln_status *kiln_session_run_greedy(kiln_session *session,
                                     const int64_t *tokens,
                                     const int64_t *positions, size_t count,
                                     int64_t *out_token) {
  if (!session || !tokens || !positions || !out_token)
    return makeStatus("kiln_session_run_greedy: NULL argument");
  std::vector<int64_t> ids(tokens, tokens + count);
  std::vector<int64_t> at(positions, positions + count);
  std::string error;
  if (!session->session->runGreedy(ids, at, *out_token, error))
    return makeStatus(error);
  return nullptr;
}

kiln_status *kiln_session_run_sample(kiln_session *session,
                                     const int64_t *tokens,
                                     const int64_t *positions, size_t count,
                                     kiln_sampler *sampler,
                                     int64_t *out_token) {
  if (!session || !tokens || !positions || !sampler || !out_token)
    return makeStatus("kiln_session_run_sample: NULL argument");
  std::vector<int64_t> ids(tokens, tokens + count);
  std::vector<int64_t> at(positions, positions + count);
  std::string error;
  if (!session->session->runSample(ids, at, sampler->sampler, *out_token,
                                   error))
    return makeStatus(error);
  return nullptr;
}

void kiln_session_reset(kiln_session *session) {
  if (session)
    session->session->reset();
}

kiln_status *kiln_cuda_probe(int *out_device_count) {
  if (!out_device_count)
    return makeStatus("kiln_cuda_probe: out_device_count is NULL");
  *out_device_count = 0;
  std::string error;
  auto driver = kiln::cuda::Driver::load(error);
  if (!driver)
    return makeStatus(error);
  *out_device_count = driver->deviceCount();
  return nullptr;
}

void kiln_sampler_params_init(kiln_sampler_params *params) {
  if (!params)
    return;
  *params = kiln_sampler_params{};
  params->struct_size = sizeof(kiln_sampler_params);
  params->top_p = 1.0;
}

kiln_status *kiln_sampler_create(const kiln_sampler_params *params,
                                 kiln_sampler **out_sampler) {
  if (!out_sampler)
    return makeStatus("kiln_sampler_create: out_sampler is NULL");
  *out_sampler = nullptr;
  if (!params || params->struct_size < sizeof(kiln_sampler_params))
    return makeStatus("kiln_sampler_create: params not initialised with "
                      "kiln_sampler_params_init");
  if (!(params->temperature >= 0) || !std::isfinite(params->temperature))
    return makeStatus("kiln_sampler_create: temperature must be >= 0");
  if (params->top_k < 0)
    return makeStatus("kiln_sampler_create: top_k must be >= 0");
  if (!(params->top_p > 0 && params->top_p <= 1))
    return makeStatus("kiln_sampler_create: top_p must be in (0, 1]");
  kiln::SamplingParams p;
  p.temperature = params->temperature;
  p.topK = params->top_k;
  p.topP = params->top_p;
  p.seed = params->seed;
  *out_sampler = new (std::nothrow) kiln_sampler{kiln::Sampler(p)};
  if (!*out_sampler)
    return makeStatus("kiln_sampler_create: out of memory");
  return nullptr;
}

void kiln_sampler_free(kiln_sampler *sampler) { delete sampler; }

kiln_status *kiln_sampler_pick(kiln_sampler *sampler, const float *logits,
                               int64_t vocab, int64_t *out_token) {
  if (!sampler || !logits || !out_token || vocab <= 0)
    return makeStatus("kiln_sampler_pick: NULL argument or empty vocabulary");
  *out_token = sampler->sampler.pick(logits, vocab);
  return nullptr;
}

} // extern "C"
