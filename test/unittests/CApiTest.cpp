//===- CApiTest.cpp - The runtime C API's error paths ---------------------===//
//
// Successful runs are covered end to end by kiln-run (which uses this API)
// in test/e2e/kiln-run*.test; here, every misuse returns a status.
//
//===----------------------------------------------------------------------===//

#include "kiln/kiln.h"
#include "kiln/kiln.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

std::string messageOf(kiln_status *status) {
  EXPECT_NE(status, nullptr);
  return kiln::api::consume(status);
}

/// The sampling rule written the plain way: rank the whole vocabulary, cut
/// it at top_k, then at the first prefix whose mass reaches top_p, and draw
/// from the prefix with the same generator the runtime seeds.
class SortingSampler {
public:
  SortingSampler(double temperature, int64_t topK, double topP, uint64_t seed)
      : temperature(temperature), topK(topK), topP(topP), rng(seed) {}

  int64_t pick(const std::vector<float> &logits) {
    int64_t vocab = static_cast<int64_t>(logits.size());
    std::vector<int64_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    int64_t keep = topK > 0 ? std::min(topK, vocab) : vocab;
    std::vector<double> w(keep);
    double total = 0;
    for (int64_t i = 0; i < keep; ++i)
      total += w[i] = std::exp(logits[order[i]] / temperature -
                               logits[order[0]] / temperature);
    double mass = 0, kept = 0;
    int64_t n = 0;
    while (n < keep) {
      kept += w[n];
      mass += w[n++] / total;
      if (mass >= topP)
        break;
    }
    double r = std::uniform_real_distribution<double>(0.0, kept)(rng);
    double acc = 0;
    for (int64_t i = 0; i < n; ++i)
      if (r < (acc += w[i]))
        return order[i];
    return order[n - 1];
  }

private:
  double temperature;
  int64_t topK;
  double topP;
  std::mt19937_64 rng;
};

} // namespace

TEST(CApiTest, Version) {
  EXPECT_STREQ(kiln_version(), KILN_VERSION_STRING);
  EXPECT_EQ(std::to_string(KILN_VERSION_MAJOR) + "." +
                std::to_string(KILN_VERSION_MINOR) + "." +
                std::to_string(KILN_VERSION_PATCH),
            std::string(kiln_version()));
}

TEST(CApiTest, StatusCodes) {
  EXPECT_EQ(kiln_status_get_code(nullptr), KILN_STATUS_OK);
  EXPECT_STREQ(kiln_status_message(nullptr), "");
  EXPECT_STREQ(kiln_status_code_name(KILN_STATUS_OUT_OF_MEMORY),
               "KILN_STATUS_OUT_OF_MEMORY");
  EXPECT_STREQ(kiln_status_code_name(static_cast<kiln_status_code>(99)),
               "KILN_STATUS_UNKNOWN");
  kiln_status_free(nullptr);
}

TEST(CApiTest, LoadReportsMisuse) {
  kiln_model *model = reinterpret_cast<kiln_model *>(0x1);
  kiln_status *status = kiln_model_load(nullptr, &model);
  EXPECT_EQ(kiln_status_get_code(status), KILN_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(messageOf(status).find("kiln_model_params_init"),
            std::string::npos);
  EXPECT_EQ(model, nullptr);

  kiln_model_params params;
  kiln_model_params_init(&params);
  EXPECT_EQ(params.struct_size, sizeof(kiln_model_params));
  EXPECT_EQ(params.cuda_graphs, -1);
  EXPECT_NE(messageOf(kiln_model_load(&params, &model))
                .find("engine_path and checkpoint_dir are required"),
            std::string::npos);
  EXPECT_NE(messageOf(kiln_model_load(&params, nullptr)).find("out_model"),
            std::string::npos);

  params.engine_path = "/nonexistent/model.kiln";
  params.checkpoint_dir = "/nonexistent";
  status = kiln_model_load(&params, &model);
  EXPECT_EQ(kiln_status_get_code(status), KILN_STATUS_NOT_FOUND);
  std::string message = messageOf(status);
  EXPECT_NE(message.find("/nonexistent/model.kiln: No such file"),
            std::string::npos)
      << message;
  EXPECT_EQ(model, nullptr);

  params.device = static_cast<kiln_device>(7);
  status = kiln_model_load(&params, &model);
  EXPECT_EQ(kiln_status_get_code(status), KILN_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(messageOf(status).find("unknown device 7"), std::string::npos);
  params.device = KILN_DEVICE_AUTO;

  for (int threads : {-1, 4097}) {
    params.threads = threads;
    status = kiln_model_load(&params, &model);
    EXPECT_EQ(kiln_status_get_code(status), KILN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(messageOf(status).find("threads must be 0 (all cores) or 1 to "
                                     "4096, not " +
                                     std::to_string(threads)),
              std::string::npos);
  }
  params.threads = 0;

  // A caller built before the optional fields existed passes a shorter
  // struct: they are not read.
  params.device = KILN_DEVICE_AUTO;
  params.struct_size = offsetof(kiln_model_params, cuda_driver);
  status = kiln_model_load(&params, &model);
  EXPECT_EQ(kiln_status_get_code(status), KILN_STATUS_NOT_FOUND);
  kiln_status_free(status);
}

TEST(CApiTest, NullHandlesAreHarmless) {
  EXPECT_EQ(kiln_model_vocab_size(nullptr), 0);
  EXPECT_EQ(kiln_model_rank(nullptr), 0);
  EXPECT_EQ(kiln_model_ranks(nullptr), 1);
  EXPECT_EQ(kiln_model_replicas(nullptr), 1);
  EXPECT_EQ(kiln_model_replica(nullptr), 0);
  kiln_status *idle = kiln_session_idle(nullptr);
  EXPECT_EQ(kiln_status_get_code(idle), KILN_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(messageOf(idle).find("NULL session"), std::string::npos);
  const int64_t *eos = nullptr;
  EXPECT_EQ(kiln_model_eos_tokens(nullptr, &eos), 0u);
  EXPECT_STREQ(kiln_model_target(nullptr), "");
  EXPECT_EQ(kiln_session_position(nullptr), 0);
  kiln_session_reset(nullptr);
  kiln_session_free(nullptr);
  kiln_model_free(nullptr);
  kiln_sampler_free(nullptr);

  kiln_session *session = reinterpret_cast<kiln_session *>(0x1);
  kiln_status *status = kiln_session_create(nullptr, nullptr, &session);
  EXPECT_EQ(kiln_status_get_code(status), KILN_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(messageOf(status).find("model is NULL"), std::string::npos);
  EXPECT_EQ(session, nullptr);
}

TEST(CApiTest, RunReportsMisuse) {
  int64_t token = 1, position = 0;
  kiln_output output;
  kiln_output_init(&output);
  EXPECT_EQ(output.mode, KILN_OUTPUT_TOKEN);
  EXPECT_EQ(output.token, -1);
  kiln_status *status =
      kiln_session_run(nullptr, &token, &position, 1, &output);
  EXPECT_EQ(kiln_status_get_code(status), KILN_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(messageOf(status).find("NULL session, tokens or output"),
            std::string::npos);
  // Checked before the session is touched.
  kiln_session *bogus = reinterpret_cast<kiln_session *>(0x1);
  kiln_output stale{};
  EXPECT_NE(messageOf(kiln_session_run(bogus, &token, &position, 1, &stale))
                .find("kiln_output_init"),
            std::string::npos);
  EXPECT_NE(messageOf(kiln_session_run(bogus, &token, &position, 0, &output))
                .find("count is 0"),
            std::string::npos);
  output.mode = static_cast<kiln_output_mode>(9);
  EXPECT_NE(messageOf(kiln_session_run(bogus, &token, &position, 1, &output))
                .find("unknown output mode 9"),
            std::string::npos);
}

TEST(CApiTest, CppWrapperReturnsErrors) {
  std::string error;
  auto model = kiln::api::Model::load("/nonexistent.kiln", "/x", error);
  EXPECT_EQ(model, nullptr);
  EXPECT_NE(error.find("/nonexistent.kiln"), std::string::npos) << error;
}

TEST(CApiTest, Sampler) {
  float logits[4] = {0.5f, 3.0f, 3.0f, -1.0f};
  std::string error;
  // Greedy: the first of the tied maxima.
  auto greedy = kiln::api::Sampler::create(0.0, 0, 1.0, 0, error);
  ASSERT_TRUE(greedy) << error;
  EXPECT_EQ(greedy->pick(logits, 4), 1);
  // top_k = 1 is greedy at any temperature.
  auto top1 = kiln::api::Sampler::create(5.0, 1, 1.0, 42, error);
  ASSERT_TRUE(top1) << error;
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(top1->pick(logits, 4), 1);
  // top_p small enough keeps only the two tied leaders.
  auto nucleus = kiln::api::Sampler::create(1.0, 0, 0.5, 7, error);
  ASSERT_TRUE(nucleus) << error;
  for (int i = 0; i < 50; ++i) {
    int64_t t = nucleus->pick(logits, 4);
    EXPECT_TRUE(t == 1 || t == 2) << t;
  }
  // The same seed gives the same sequence; sampling reaches several tokens.
  auto a = kiln::api::Sampler::create(2.0, 0, 1.0, 9, error);
  auto b = kiln::api::Sampler::create(2.0, 0, 1.0, 9, error);
  bool varied = false;
  int64_t first = a->pick(logits, 4);
  EXPECT_EQ(first, b->pick(logits, 4));
  for (int i = 0; i < 50; ++i) {
    int64_t x = a->pick(logits, 4);
    EXPECT_EQ(x, b->pick(logits, 4));
    varied |= x != first;
  }
  EXPECT_TRUE(varied);
  // Invalid parameters are reported.
  EXPECT_FALSE(kiln::api::Sampler::create(-1.0, 0, 1.0, 0, error));
  EXPECT_NE(error.find("temperature"), std::string::npos) << error;
  EXPECT_FALSE(kiln::api::Sampler::create(1.0, 0, 0.0, 0, error));
  EXPECT_NE(error.find("top_p"), std::string::npos) << error;
  int64_t token;
  EXPECT_NE(
      messageOf(kiln_sampler_pick(nullptr, logits, 4, &token)).find("NULL"),
      std::string::npos);
}

// The runtime never sorts the whole vocabulary; it must still draw exactly
// what the plain rule draws, including nuclei longer than its first sorted
// stretches and ties at the top-k cut.
TEST(CApiTest, SamplerMatchesTheSortingRule) {
  const int64_t vocab = 202048;
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> peaked(vocab), flat(vocab), tied(vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    peaked[i] = normal(gen);
    flat[i] = 0.01f * normal(gen);
    tied[i] = static_cast<float>(static_cast<int>(normal(gen)));
  }
  struct Case {
    const std::vector<float> *logits;
    double temperature;
    int64_t topK;
    double topP;
  } cases[] = {{&peaked, 0.7, 0, 0.9},  {&peaked, 1.0, 50, 0.95},
               {&peaked, 1.3, 0, 1.0},  {&flat, 1.0, 0, 0.9},
               {&flat, 0.5, 3000, 0.5}, {&tied, 1.0, 1000, 1.0},
               {&tied, 2.0, 0, 0.3}};
  for (const Case &c : cases) {
    std::string error;
    auto fast =
        kiln::api::Sampler::create(c.temperature, c.topK, c.topP, 11, error);
    ASSERT_TRUE(fast) << error;
    SortingSampler plain(c.temperature, c.topK, c.topP, 11);
    for (int draw = 0; draw < 8; ++draw)
      EXPECT_EQ(fast->pick(c.logits->data(), vocab), plain.pick(*c.logits))
          << "temperature " << c.temperature << " top_k " << c.topK << " top_p "
          << c.topP << " draw " << draw;
  }
}
