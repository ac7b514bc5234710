//===- CApiTest.cpp - The runtime C API's error paths ---------------------===//
//
// Successful runs are covered end to end by kiln-run (which uses this API)
// in test/e2e/kiln-run*.test; here, every misuse returns a status.
//
//===----------------------------------------------------------------------===//

#include "kiln/kiln.h"
#include "kiln/kiln.hpp"

#include <gtest/gtest.h>
#include <string>

namespace {

std::string messageOf(kiln_status *status) {
  EXPECT_NE(status, nullptr);
  return kiln::api::consume(status);
}

} // namespace

TEST(CApiTest, CreateReportsMisuse) {
  kiln_session *session = reinterpret_cast<kiln_session *>(0x1);
  EXPECT_NE(messageOf(kiln_session_create(nullptr, &session))
                .find("kiln_session_params_init"),
            std::string::npos);
  EXPECT_EQ(session, nullptr);

  kiln_session_params params;
  kiln_session_params_init(&params);
  EXPECT_EQ(params.struct_size, sizeof(kiln_session_params));
  EXPECT_NE(messageOf(kiln_session_create(&params, &session))
                .find("engine_path and checkpoint_dir are required"),
            std::string::npos);
  EXPECT_NE(
      messageOf(kiln_session_create(&params, nullptr)).find("out_session"),
      std::string::npos);

  params.engine_path = "/nonexistent/model.kiln";
  params.checkpoint_dir = "/nonexistent";
  std::string message = messageOf(kiln_session_create(&params, &session));
  EXPECT_NE(message.find("/nonexistent/model.kiln: cannot open"),
            std::string::npos)
      << message;
  EXPECT_EQ(session, nullptr);
}

TEST(CApiTest, NullSessionsAreHarmless) {
  EXPECT_EQ(kiln_session_vocab_size(nullptr), 0);
  const int64_t *eos = nullptr;
  EXPECT_EQ(kiln_session_eos_tokens(nullptr, &eos), 0u);
  kiln_session_reset(nullptr);
  kiln_session_free(nullptr);
  kiln_status_free(nullptr);
  EXPECT_STREQ(kiln_status_message(nullptr), "");
  float logits[4];
  int64_t token = 1, position = 0;
  EXPECT_NE(
      messageOf(kiln_session_run(nullptr, &token, &position, 1, logits, 4))
          .find("NULL argument"),
      std::string::npos);
}

TEST(CApiTest, CppWrapperReturnsErrors) {
  std::string error;
  auto session = kiln::api::Session::open("/nonexistent.kiln", "/x", error);
  EXPECT_EQ(session, nullptr);
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

TEST(CApiTest, RunLastReportsMisuse) {
  float logits[4];
  int64_t token = 1, position = 0;
  EXPECT_NE(messageOf(kiln_session_run_last(nullptr, &token, &position, 1,
                                            logits, 4))
                .find("kiln_session_run_last: NULL argument"),
            std::string::npos);
}

TEST(CApiTest, RunGreedyReportsMisuse) {
  int64_t token = 1, position = 0, next = -1;
  EXPECT_NE(messageOf(kiln_session_run_greedy(nullptr, &token, &position, 1,
                                              &next))
                .find("kiln_session_run_greedy: NULL argument"),
            std::string::npos);
}
