//===- KernelsTest.cpp - Hand-checked Llama 4 semantics -------------------===//
//
// Each case is small enough to work out on paper and fails if the feature is
// implemented the common wrong way (rotate-half RoPE, sliding-window chunks,
// gating expert outputs, up-before-gate, ...).
//
//===----------------------------------------------------------------------===//

#include "kiln/Reference/Kernels.h"

#include <cmath>
#include <gtest/gtest.h>

using namespace kiln::ref;

static double silu(double x) { return x / (1.0 + std::exp(-x)); }
static double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

TEST(RopeTest, RotatesInterleavedPairsNotHalves) {
  // One head of dimension 4, position 1, pair 0 rotated by 90 degrees and
  // pair 1 not at all. Interleaved pairs are (x0, x1) and (x2, x3).
  std::vector<double> x = {1, 2, 3, 4};
  int64_t pos = 1;
  rope(x.data(), 1, 1, 4, &pos, {M_PI / 2, 0.0});
  EXPECT_NEAR(x[0], -2.0, 1e-12); // x0 cos - x1 sin
  EXPECT_NEAR(x[1], 1.0, 1e-12);  // x0 sin + x1 cos
  EXPECT_NEAR(x[2], 3.0, 1e-12);
  EXPECT_NEAR(x[3], 4.0, 1e-12);
  // Rotate-half would pair (x0, x2) and give x0 = -3.
}

TEST(RopeTest, AngleIsPositionTimesFrequencyPerHead) {
  std::vector<double> x = {1, 0, 1, 0}; // two heads of dimension 2
  int64_t pos = 3;
  rope(x.data(), 1, 2, 2, &pos, {0.25});
  for (int h = 0; h < 2; ++h) {
    EXPECT_NEAR(x[2 * h], std::cos(0.75), 1e-12);
    EXPECT_NEAR(x[2 * h + 1], std::sin(0.75), 1e-12);
  }
}

TEST(AttentionMaskTest, ChunksAreAlignedBlocksNotWindows) {
  // chunk 4: position 4 starts a chunk and sees only itself.
  EXPECT_TRUE(attentionVisible(4, 4, 4));
  EXPECT_FALSE(attentionVisible(4, 3, 4));
  EXPECT_TRUE(attentionVisible(7, 4, 4));
  EXPECT_FALSE(attentionVisible(7, 3, 4)); // a window of 4 would see 4..7 only
  EXPECT_TRUE(attentionVisible(3, 0, 4));
  EXPECT_FALSE(attentionVisible(2, 3, 4)); // causal
  EXPECT_TRUE(attentionVisible(8191, 0, 8192));
  EXPECT_FALSE(attentionVisible(8192, 8191, 8192));
  // Causal only.
  EXPECT_TRUE(attentionVisible(100000, 0, 0));
}

TEST(AttentionTest, FirstTokenOfAChunkAttendsOnlyToItself) {
  // 1 head, d = 1, 6 tokens, chunk 4. Values are distinct so the output
  // reveals which keys were mixed.
  const int64_t n = 6;
  std::vector<double> q(n, 1.0), k(n, 1.0), v = {1, 2, 3, 4, 5, 6}, out(n);
  std::vector<int64_t> pos = {0, 1, 2, 3, 4, 5};
  AttentionParams p;
  p.numHeads = p.numKvHeads = p.headDim = 1;
  p.chunkSize = 4;
  attention(q.data(), pos.data(), n, k.data(), v.data(), pos.data(), n, p,
            out.data());
  // Equal scores: the output is the mean of the visible values.
  EXPECT_DOUBLE_EQ(out[3], (1 + 2 + 3 + 4) / 4.0);
  EXPECT_DOUBLE_EQ(out[4], 5.0);
  EXPECT_DOUBLE_EQ(out[5], (5 + 6) / 2.0);
  p.chunkSize = 0; // causal: token 5 sees all six
  attention(q.data(), pos.data(), n, k.data(), v.data(), pos.data(), n, p,
            out.data());
  EXPECT_DOUBLE_EQ(out[5], 21.0 / 6.0);
}

TEST(AttentionTest, GroupedQueryHeadsShareConsecutively) {
  // 4 query heads, 2 KV heads: heads 0,1 read KV head 0; heads 2,3 KV head 1.
  std::vector<double> q(4, 0.0), k = {0, 0}, v = {10, 20}, out(4);
  int64_t pos = 0;
  AttentionParams p;
  p.numHeads = 4;
  p.numKvHeads = 2;
  p.headDim = 1;
  attention(q.data(), &pos, 1, k.data(), v.data(), &pos, 1, p, out.data());
  EXPECT_EQ(out, (std::vector<double>{10, 10, 20, 20}));
}

TEST(TemperatureTest, ValuesAroundFloorScale) {
  EXPECT_DOUBLE_EQ(attentionTemperature(0, 0.1, 8192), 1.0);
  EXPECT_DOUBLE_EQ(attentionTemperature(8190, 0.1, 8192), 1.0);
  // floor((8191 + 1) / 8192) = 1: p + 1, not p.
  EXPECT_DOUBLE_EQ(attentionTemperature(8191, 0.1, 8192),
                   1.0 + 0.1 * std::log(2.0));
  EXPECT_NEAR(attentionTemperature(8191, 0.1, 8192), 1.0693, 5e-5);
  EXPECT_DOUBLE_EQ(attentionTemperature(16383, 0.1, 8192),
                   1.0 + 0.1 * std::log(3.0));
  EXPECT_NEAR(attentionTemperature(65535, 0.1, 8192), 1.2197, 5e-5);
  EXPECT_NEAR(attentionTemperature(1048575, 0.1, 8192), 1.4860, 5e-5);
}

TEST(TemperatureTest, ScalesQueriesInsideAttention) {
  // Two keys with scores 0 and 1 before temperature. At position 8191 the
  // query is scaled by tau = 1 + 0.1 ln 2, so the second key's weight is
  // sigmoid(tau); at 8190 it is sigmoid(1).
  std::vector<double> k = {0.0, 1.0}, v = {0.0, 1.0};
  AttentionParams p;
  p.numHeads = p.numKvHeads = p.headDim = 1;
  p.attnScale = 0.1;
  p.floorScale = 8192;
  for (int64_t qPos : {8190, 8191, 16383}) {
    std::vector<int64_t> keyPos = {qPos - 1, qPos};
    double q = 1.0, out;
    attention(&q, &qPos, 1, k.data(), v.data(), keyPos.data(), 2, p, &out);
    double tau =
        qPos == 8190 ? 1.0 : 1.0 + 0.1 * std::log((qPos + 1) / 8192 + 1.0);
    EXPECT_NEAR(out, sigmoid(tau), 1e-12) << "position " << qPos;
  }
}

TEST(NormTest, RmsNormAndWeightlessQkNorm) {
  std::vector<double> x = {3, 4}, w = {2, 0.5}, out(2);
  rmsNorm(x.data(), 1, 2, w.data(), 0.0, out.data());
  double r = std::sqrt((9.0 + 16.0) / 2.0); // RMS, not the L2 norm
  EXPECT_DOUBLE_EQ(out[0], 3 / r * 2);
  EXPECT_DOUBLE_EQ(out[1], 4 / r * 0.5);
  rmsNorm<double>(x.data(), 1, 2, nullptr, 1e-5, out.data());
  EXPECT_NEAR(out[0], 3 / std::sqrt(12.5 + 1e-5), 1e-15);
}

TEST(MoeTest, SigmoidGateScalesTheExpertInput) {
  // D = 1, F = 1, two experts. Router logits for u = 2: [2, -2] -> expert 0.
  // gate_up[0] = [[1, 1]] (gate 1, up 1), down[0] = [[1]].
  double u = 2.0;
  std::vector<double> router = {1, -1};
  std::vector<double> gateUp = {1, 1, /*expert 1*/ 5, 5};
  std::vector<double> down = {1, /*expert 1*/ 7};
  MoeParams p;
  p.hidden = 1;
  p.numExperts = 2;
  p.ffn = 1;
  p.topK = 1;
  double out;
  moe<double>(&u, 1, router.data(), gateUp.data(), down.data(), nullptr,
              nullptr, nullptr, p, &out);
  double s = sigmoid(2.0);
  double z = s * u;
  EXPECT_NEAR(out, silu(z) * z, 1e-12);
  // Gating the output instead (s * silu(u) * u) gives a different number.
  EXPECT_GT(std::fabs(out - s * silu(u) * u), 1e-3);
  // Softmax over the two logits would give 0.982 instead of sigmoid(2).
}

TEST(MoeTest, GateColumnsComeFirstInGateUp) {
  // gate_up[0] = [[gate = 1, up = 3]]: silu(z) * 3z, not silu(3z) * z.
  double u = 1.0, out;
  std::vector<double> router = {10.0}, gateUp = {1, 3}, down = {1};
  MoeParams p;
  p.hidden = 1;
  p.numExperts = 1;
  p.ffn = 1;
  moe<double>(&u, 1, router.data(), gateUp.data(), down.data(), nullptr,
              nullptr, nullptr, p, &out);
  double z = sigmoid(10.0) * u;
  EXPECT_NEAR(out, silu(z) * 3 * z, 1e-12);
  EXPECT_GT(std::fabs(out - silu(3 * z) * z), 1e-3);
}

TEST(MoeTest, SharedExpertIsAlwaysOnAndUngated) {
  // D = 2, F = 1. Router prefers expert 1 for this token; the shared expert
  // is added without any gate.
  std::vector<double> u = {1.0, -1.0};
  std::vector<double> router = {-1, 1, 1, -1}; // logits [-2, 2]
  // gate_up [E=2, D=2, 2F=2]; down [E=2, F=1, D=2].
  std::vector<double> gateUp = {0, 0, 0, 0, /*e1*/ 1, 1, 0, 0};
  std::vector<double> down = {0, 0, /*e1*/ 1, 2};
  std::vector<double> sg = {1, 0}, su = {0, -1},
                      sd = {1, 1}; // [F,D],[F,D],[D,F]
  MoeParams p;
  p.hidden = 2;
  p.numExperts = 2;
  p.ffn = 1;
  p.sharedFfn = 1;
  std::vector<double> out(2);
  moe(u.data(), 1, router.data(), gateUp.data(), down.data(), sg.data(),
      su.data(), sd.data(), p, out.data());
  double z0 = sigmoid(2.0) * u[0];
  double routed = silu(z0) * z0;   // expert 1 gate = up = z[0]
  double shared = silu(1.0) * 1.0; // silu(u0) * (-u1)
  EXPECT_NEAR(out[0], routed * 1 + shared, 1e-12);
  EXPECT_NEAR(out[1], routed * 2 + shared, 1e-12);
}

TEST(MoeTest, TopKTiesGoToTheLowerExpert) {
  double u = 1.0, out;
  std::vector<double> router = {0.5, 0.5}, gateUp = {1, 1, 1, 2},
                      down = {1, 100};
  MoeParams p;
  p.hidden = 1;
  p.numExperts = 2;
  p.ffn = 1;
  moe<double>(&u, 1, router.data(), gateUp.data(), down.data(), nullptr,
              nullptr, nullptr, p, &out);
  double z = sigmoid(0.5);
  EXPECT_NEAR(out, silu(z) * z, 1e-12);
}

TEST(SwiGluTest, SiluOfGateTimesUp) {
  std::vector<float> g = {0.0f, 1.0f, -2.0f}, u = {5.0f, 2.0f, 1.0f}, out(3);
  swiglu(g.data(), u.data(), 3, out.data());
  EXPECT_FLOAT_EQ(out[0], 0.0f);
  EXPECT_FLOAT_EQ(out[1], static_cast<float>(silu(1.0) * 2.0));
  EXPECT_FLOAT_EQ(out[2], static_cast<float>(silu(-2.0)));
}
