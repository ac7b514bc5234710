//===- Llama4ConfigTest.cpp - Config fields, defaults and derived facts ---===//

#include "kiln/Import/Llama4Config.h"

#include <cmath>
#include <gtest/gtest.h>

using namespace kiln;

static std::string textConfig(const std::string &extra) {
  return R"({"architectures": ["Llama4ForCausalLM"], "hidden_size": 256,
             "num_hidden_layers": 8, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 128)" +
         (extra.empty() ? std::string() : ", " + extra) + "}";
}

static std::string errorOf(const std::string &json) {
  auto config = parseLlama4Config(json, "cfg.json");
  if (config)
    return "";
  return llvm::toString(config.takeError());
}

TEST(Llama4ConfigTest, ScoutLlama3Frequencies) {
  auto config = parseLlama4Config(
      textConfig(R"("rope_scaling": {"rope_type": "llama3", "factor": 16.0,
        "low_freq_factor": 1.0, "high_freq_factor": 1.0,
        "original_max_position_embeddings": 8192})"),
      "cfg.json");
  ASSERT_TRUE(static_cast<bool>(config)) << llvm::toString(config.takeError());
  std::vector<double> f = config->ropeInvFreq();
  ASSERT_EQ(f.size(), 64u);
  auto base = [](int m) { return std::pow(500000.0, -2.0 * m / 128.0); };
  // Wavelengths below 8192 are kept (m <= 34), longer ones divided by 16.
  for (int m = 0; m <= 34; ++m)
    EXPECT_DOUBLE_EQ(f[m], base(m)) << m;
  for (int m = 35; m < 64; ++m)
    EXPECT_DOUBLE_EQ(f[m], base(m) / 16) << m;
  EXPECT_NEAR(2 * M_PI / base(34), 6695, 1);
  EXPECT_NEAR(2 * M_PI / base(35), 8219, 1);
  for (double v : f)
    EXPECT_TRUE(std::isfinite(v));
}

TEST(Llama4ConfigTest, Llama3SmoothBandWhenFactorsDiffer) {
  // The Llama 3 values (8, 1, 4): m in the middle band is blended.
  auto config = parseLlama4Config(
      textConfig(R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})"),
      "cfg.json");
  ASSERT_TRUE(static_cast<bool>(config));
  std::vector<double> f = config->ropeInvFreq();
  double base30 = std::pow(500000.0, -60.0 / 128.0);
  double wavelen = 2 * M_PI / base30; // between 2048 and 8192
  ASSERT_GT(wavelen, 2048);
  ASSERT_LT(wavelen, 8192);
  double smooth = (8192 / wavelen - 1) / 3;
  EXPECT_DOUBLE_EQ(f[30], (1 - smooth) * base30 / 8 + smooth * base30);
}

TEST(Llama4ConfigTest, DerivedLayerPattern) {
  auto scout = parseLlama4Config(textConfig(""), "cfg.json");
  ASSERT_TRUE(static_cast<bool>(scout));
  for (int i = 0; i < 8; ++i) {
    bool nope = (i + 1) % 4 == 0; // layers 3 and 7
    EXPECT_EQ(scout->ropeLayer[i], !nope) << i;
    EXPECT_EQ(scout->chunkedLayer[i], !nope) << i;
    EXPECT_TRUE(scout->moeLayer[i]) << i; // step 1: every layer
  }
  auto maverick =
      parseLlama4Config(textConfig(R"("interleave_moe_layer_step": 2)"), "c");
  ASSERT_TRUE(static_cast<bool>(maverick));
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(maverick->moeLayer[i], i % 2 == 1) << i;
  // Defaults of Hugging Face for absent keys.
  EXPECT_EQ(scout->attentionChunkSize, 8192);
  EXPECT_EQ(scout->floorScale, 8192);
  EXPECT_DOUBLE_EQ(scout->attnScale, 0.1);
  EXPECT_TRUE(scout->attnTemperatureTuning);
  EXPECT_TRUE(scout->useQkNorm);
  EXPECT_EQ(scout->modelPrefix(), "model.");
  EXPECT_EQ(scout->lmHeadName(), "lm_head.weight");
}

TEST(Llama4ConfigTest, ExplicitNoRopeLayers) {
  auto config = parseLlama4Config(
      textConfig(R"("no_rope_layers": [1, 0, 1, 1, 1, 1, 1, 0])"), "c");
  ASSERT_TRUE(static_cast<bool>(config));
  EXPECT_FALSE(config->ropeLayer[1]);
  EXPECT_TRUE(config->ropeLayer[3]);
  EXPECT_FALSE(config->ropeLayer[7]);
}

TEST(Llama4ConfigTest, ErrorsNameFileAndField) {
  EXPECT_EQ(errorOf(textConfig(R"("hidden_size": -5)"))
                .find("cfg.json: field 'hidden_size'"),
            0u);
  EXPECT_NE(errorOf(textConfig(R"("num_key_value_heads": 3)"))
                .find("does not divide"),
            std::string::npos);
  EXPECT_NE(errorOf(textConfig(R"("no_rope_layers": [1, 0])"))
                .find("expected 8 entries"),
            std::string::npos);
  EXPECT_NE(errorOf(textConfig(R"("rope_scaling": {"rope_type": "yarn"})"))
                .find("unsupported RoPE scaling 'yarn'"),
            std::string::npos);
  EXPECT_NE(errorOf(textConfig(R"("rope_scaling": {"rope_type": "llama3"})"))
                .find("rope_scaling.factor"),
            std::string::npos);
  EXPECT_NE(errorOf("{\"text_config\": 3}").find("text_config"),
            std::string::npos);
  EXPECT_NE(errorOf("[1]").find("expected a JSON object"), std::string::npos);
  EXPECT_NE(errorOf("{").find("malformed JSON at line 1"), std::string::npos);
}
