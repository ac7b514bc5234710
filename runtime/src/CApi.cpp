//===- CApi.cpp - The Kiln runtime C API ----------------------------------===//

#include "Communicator.h"
#include "kiln/kiln.h"
#include "kiln/runtime/CudaDriver.h"
#include "kiln/runtime/Model.h"
#include "kiln/runtime/Sampler.h"

#include <cmath>
#include <cstddef>
#include <cstring>
#include <new>
#include <string>

struct kiln_status {
  kiln_status_code code;
  std::string message;
};

struct kiln_model {
  std::shared_ptr<kiln::Model> model;
};

struct kiln_session {
  std::unique_ptr<kiln::Session> session;
};

struct kiln_sampler {
  kiln::Sampler sampler;
};

static_assert(static_cast<int>(kiln::StatusCode::Internal) ==
                  KILN_STATUS_INTERNAL,
              "kiln::StatusCode mirrors kiln_status_code");

namespace {

/// Handed out when a status itself cannot be allocated, so that running
/// out of memory never reads as success; kiln_status_free ignores it.
kiln_status outOfMemoryStatus{KILN_STATUS_OUT_OF_MEMORY,
                              "out of memory (allocating a status)"};

kiln_status *makeStatus(kiln_status_code code, std::string message) {
  try {
    return new kiln_status{code, std::move(message)};
  } catch (...) {
    return &outOfMemoryStatus;
  }
}

kiln_status *invalid(std::string message) {
  return makeStatus(KILN_STATUS_INVALID_ARGUMENT, std::move(message));
}

kiln_status *fromStatus(const kiln::Status &status) {
  if (status.ok())
    return nullptr;
  return makeStatus(static_cast<kiln_status_code>(status.code), status.message);
}

/// Whether a caller's struct (of `size` bytes, from its header) holds the
/// field at `offset`.
template <typename T>
bool holds(const T *params, size_t offset, size_t fieldSize) {
  return params->struct_size >= offset + fieldSize;
}

#define KILN_HOLDS(params, field)                                              \
  holds(params, offsetof(std::remove_pointer_t<decltype(params)>, field),      \
        sizeof(params->field))

/// A tri-state setting: -1 keeps what the environment says.
void applyFlag(int value, bool &setting) {
  if (value >= 0)
    setting = value != 0;
}

/// Catches what must not cross the C boundary.
template <typename Fn> kiln_status *guarded(const char *name, Fn &&fn) {
  try {
    return fn();
  } catch (const std::bad_alloc &) {
    return makeStatus(KILN_STATUS_OUT_OF_MEMORY,
                      std::string(name) + ": out of memory");
  } catch (const std::exception &e) {
    return makeStatus(KILN_STATUS_INTERNAL,
                      std::string(name) + ": " + e.what());
  } catch (...) {
    return makeStatus(KILN_STATUS_INTERNAL,
                      std::string(name) + ": unknown failure");
  }
}

} // namespace

extern "C" {

const char *kiln_version(void) { return KILN_VERSION_STRING; }

kiln_status_code kiln_status_get_code(const kiln_status *status) {
  return status ? status->code : KILN_STATUS_OK;
}

const char *kiln_status_message(const kiln_status *status) {
  return status ? status->message.c_str() : "";
}

const char *kiln_status_code_name(kiln_status_code code) {
  switch (code) {
  case KILN_STATUS_OK:
    return "KILN_STATUS_OK";
  case KILN_STATUS_INVALID_ARGUMENT:
    return "KILN_STATUS_INVALID_ARGUMENT";
  case KILN_STATUS_NOT_FOUND:
    return "KILN_STATUS_NOT_FOUND";
  case KILN_STATUS_INVALID_ENGINE:
    return "KILN_STATUS_INVALID_ENGINE";
  case KILN_STATUS_INVALID_CHECKPOINT:
    return "KILN_STATUS_INVALID_CHECKPOINT";
  case KILN_STATUS_UNAVAILABLE:
    return "KILN_STATUS_UNAVAILABLE";
  case KILN_STATUS_OUT_OF_MEMORY:
    return "KILN_STATUS_OUT_OF_MEMORY";
  case KILN_STATUS_DEVICE_ERROR:
    return "KILN_STATUS_DEVICE_ERROR";
  case KILN_STATUS_INTERNAL:
    return "KILN_STATUS_INTERNAL";
  default:
    return "KILN_STATUS_UNKNOWN";
  }
}

void kiln_status_free(kiln_status *status) {
  if (status != &outOfMemoryStatus)
    delete status;
}

//===----------------------------------------------------------------------===//
// Models
//===----------------------------------------------------------------------===//

void kiln_model_params_init(kiln_model_params *params) {
  if (!params)
    return;
  *params = kiln_model_params{};
  params->struct_size = sizeof(kiln_model_params);
  params->cuda_graphs = params->sync_each_launch = -1;
  params->poison_device_memory = params->check_sampler = -1;
  params->profile = params->graph_stats = -1;
}

kiln_status *kiln_model_load(const kiln_model_params *params,
                             kiln_model **out_model) {
  return guarded("kiln_model_load", [&]() -> kiln_status * {
    if (!out_model)
      return invalid("kiln_model_load: out_model is NULL");
    *out_model = nullptr;
    if (!params ||
        params->struct_size < offsetof(kiln_model_params, cuda_driver))
      return invalid("kiln_model_load: params not initialised with "
                     "kiln_model_params_init");
    if (!params->engine_path || !params->checkpoint_dir)
      return invalid(
          "kiln_model_load: engine_path and checkpoint_dir are required");
    if (params->device < KILN_DEVICE_AUTO || params->device > KILN_DEVICE_CUDA)
      return invalid("kiln_model_load: unknown device " +
                     std::to_string(static_cast<int>(params->device)));
    kiln::RuntimeOptions options = kiln::RuntimeOptions::fromEnvironment();
    options.device = params->device == KILN_DEVICE_HOST   ? kiln::Device::Host
                     : params->device == KILN_DEVICE_CUDA ? kiln::Device::Cuda
                                                          : kiln::Device::Auto;
    if (KILN_HOLDS(params, cuda_driver) && params->cuda_driver)
      options.cudaDriver = params->cuda_driver;
    if (KILN_HOLDS(params, cuda_graphs))
      applyFlag(params->cuda_graphs, options.cudaGraphs);
    if (KILN_HOLDS(params, sync_each_launch))
      applyFlag(params->sync_each_launch, options.syncEachLaunch);
    if (KILN_HOLDS(params, poison_device_memory))
      applyFlag(params->poison_device_memory, options.poisonDeviceMemory);
    if (KILN_HOLDS(params, check_sampler))
      applyFlag(params->check_sampler, options.checkSampler);
    if (KILN_HOLDS(params, profile))
      applyFlag(params->profile, options.profile);
    if (KILN_HOLDS(params, graph_stats))
      applyFlag(params->graph_stats, options.graphStats);
    if (KILN_HOLDS(params, dump_dir) && params->dump_dir)
      options.dumpDir = params->dump_dir;
    if (KILN_HOLDS(params, threads) && params->threads != 0) {
      if (params->threads < 0 || params->threads > 4096)
        return invalid("kiln_model_load: threads must be 0 (all cores) or "
                       "1 to 4096, not " +
                       std::to_string(params->threads));
      options.threads = params->threads;
    }
    kiln::Status status;
    auto model = kiln::Model::load(params->engine_path, params->checkpoint_dir,
                                   options, status);
    if (!model)
      return fromStatus(status);
    *out_model = new kiln_model{std::move(model)};
    return nullptr;
  });
}

void kiln_model_free(kiln_model *model) { delete model; }

int64_t kiln_model_vocab_size(const kiln_model *model) {
  return model ? model->model->vocabSize() : 0;
}

int64_t kiln_model_rank(const kiln_model *model) {
  return model ? model->model->rank() : 0;
}

int64_t kiln_model_ranks(const kiln_model *model) {
  return model ? model->model->ranks() : 1;
}

int64_t kiln_model_replicas(const kiln_model *model) {
  return model ? model->model->replicas() : 1;
}

int64_t kiln_model_replica(const kiln_model *model) {
  return model ? model->model->replica() : 0;
}

int64_t kiln_model_replica_rank(const kiln_model *model) {
  return model ? model->model->replicaRank() : 0;
}

int64_t kiln_model_max_positions(const kiln_model *model) {
  return model ? model->model->maxPositions() : 0;
}

void kiln_abort_ranks(int exit_code) {
  kiln::Communicator::abortAll(exit_code);
}

size_t kiln_model_eos_tokens(const kiln_model *model,
                             const int64_t **out_tokens) {
  if (!model || !out_tokens)
    return 0;
  const std::vector<int64_t> &eos = model->model->eosTokenIds();
  *out_tokens = eos.data();
  return eos.size();
}

const char *kiln_model_target(const kiln_model *model) {
  return model ? model->model->target().c_str() : "";
}

//===----------------------------------------------------------------------===//
// Sessions
//===----------------------------------------------------------------------===//

void kiln_session_params_init(kiln_session_params *params) {
  if (!params)
    return;
  *params = kiln_session_params{};
  params->struct_size = sizeof(kiln_session_params);
}

kiln_status *kiln_session_create(kiln_model *model,
                                 const kiln_session_params *params,
                                 kiln_session **out_session) {
  return guarded("kiln_session_create", [&]() -> kiln_status * {
    if (!out_session)
      return invalid("kiln_session_create: out_session is NULL");
    *out_session = nullptr;
    if (!model)
      return invalid("kiln_session_create: model is NULL");
    if (params && params->struct_size < sizeof(size_t))
      return invalid("kiln_session_create: params not initialised with "
                     "kiln_session_params_init");
    int64_t kvTokens =
        params && KILN_HOLDS(params, kv_tokens) ? params->kv_tokens : 0;
    kiln::Status status;
    auto session = model->model->newSession(kvTokens, status);
    if (!session)
      return fromStatus(status);
    *out_session = new kiln_session{std::move(session)};
    return nullptr;
  });
}

void kiln_session_free(kiln_session *session) { delete session; }

void kiln_session_reset(kiln_session *session) {
  if (session)
    session->session->reset();
}

int64_t kiln_session_position(const kiln_session *session) {
  return session ? session->session->position() : 0;
}

void kiln_output_init(kiln_output *output) {
  if (!output)
    return;
  *output = kiln_output{};
  output->struct_size = sizeof(kiln_output);
  output->mode = KILN_OUTPUT_TOKEN;
  output->token = -1;
}

kiln_status *kiln_session_run(kiln_session *session, const int64_t *tokens,
                              const int64_t *positions, size_t count,
                              kiln_output *output) {
  return guarded("kiln_session_run", [&]() -> kiln_status * {
    if (!session || !tokens || !output)
      return invalid("kiln_session_run: NULL session, tokens or output");
    if (output->struct_size < sizeof(kiln_output))
      return invalid("kiln_session_run: output not initialised with "
                     "kiln_output_init");
    if (count == 0)
      return invalid("kiln_session_run: count is 0");
    kiln::OutputMode mode;
    switch (output->mode) {
    case KILN_OUTPUT_TOKEN:
      mode = kiln::OutputMode::Token;
      break;
    case KILN_OUTPUT_LAST_LOGITS:
      mode = kiln::OutputMode::LastLogits;
      break;
    case KILN_OUTPUT_ALL_LOGITS:
      mode = kiln::OutputMode::AllLogits;
      break;
    default:
      return invalid("kiln_session_run: unknown output mode " +
                     std::to_string(static_cast<int>(output->mode)));
    }
    output->logits_written = 0;
    if (mode != kiln::OutputMode::Token) {
      size_t vocab = static_cast<size_t>(session->session->model().vocabSize());
      size_t needed = (mode == kiln::OutputMode::AllLogits ? count : 1) * vocab;
      if (!output->logits || output->logits_capacity < needed)
        return invalid(
            "kiln_session_run: the logits buffer holds " +
            std::to_string(output->logits ? output->logits_capacity : 0) +
            " floats, " + std::to_string(needed) + " needed");
    }
    std::vector<float> logits;
    int64_t token = -1;
    kiln::Status status = session->session->run(
        tokens, positions, count, mode,
        output->sampler ? &output->sampler->sampler : nullptr, logits, token);
    if (!status.ok())
      return fromStatus(status);
    output->token = token;
    if (!logits.empty())
      std::memcpy(output->logits, logits.data(), logits.size() * sizeof(float));
    output->logits_written = logits.size();
    return nullptr;
  });
}

kiln_status *kiln_session_idle(kiln_session *session) {
  return guarded("kiln_session_idle", [&]() -> kiln_status * {
    if (!session)
      return invalid("kiln_session_idle: NULL session");
    kiln::Status status = session->session->idle();
    return status.ok() ? nullptr : fromStatus(status);
  });
}

//===----------------------------------------------------------------------===//
// Sampling and devices
//===----------------------------------------------------------------------===//

void kiln_sampler_params_init(kiln_sampler_params *params) {
  if (!params)
    return;
  *params = kiln_sampler_params{};
  params->struct_size = sizeof(kiln_sampler_params);
  params->top_p = 1.0;
}

kiln_status *kiln_sampler_create(const kiln_sampler_params *params,
                                 kiln_sampler **out_sampler) {
  return guarded("kiln_sampler_create", [&]() -> kiln_status * {
    if (!out_sampler)
      return invalid("kiln_sampler_create: out_sampler is NULL");
    *out_sampler = nullptr;
    if (!params || params->struct_size < sizeof(kiln_sampler_params))
      return invalid("kiln_sampler_create: params not initialised with "
                     "kiln_sampler_params_init");
    if (!(params->temperature >= 0) || !std::isfinite(params->temperature))
      return invalid("kiln_sampler_create: temperature must be >= 0");
    if (params->top_k < 0)
      return invalid("kiln_sampler_create: top_k must be >= 0");
    if (!(params->top_p > 0 && params->top_p <= 1))
      return invalid("kiln_sampler_create: top_p must be in (0, 1]");
    kiln::SamplingParams p;
    p.temperature = params->temperature;
    p.topK = params->top_k;
    p.topP = params->top_p;
    p.seed = params->seed;
    *out_sampler = new kiln_sampler{kiln::Sampler(p)};
    return nullptr;
  });
}

void kiln_sampler_free(kiln_sampler *sampler) { delete sampler; }

kiln_status *kiln_sampler_pick(kiln_sampler *sampler, const float *logits,
                               int64_t vocab, int64_t *out_token) {
  if (!sampler || !logits || !out_token || vocab <= 0)
    return invalid("kiln_sampler_pick: NULL argument or empty vocabulary");
  *out_token = sampler->sampler.pick(logits, vocab);
  return nullptr;
}

kiln_status *kiln_cuda_probe(int *out_device_count) {
  return guarded("kiln_cuda_probe", [&]() -> kiln_status * {
    if (!out_device_count)
      return invalid("kiln_cuda_probe: out_device_count is NULL");
    *out_device_count = 0;
    std::string error;
    auto driver = kiln::cuda::Driver::load(error);
    if (!driver)
      return makeStatus(KILN_STATUS_UNAVAILABLE, error);
    *out_device_count = driver->deviceCount();
    return nullptr;
  });
}

} // extern "C"
