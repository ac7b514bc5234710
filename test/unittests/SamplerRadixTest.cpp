//===- SamplerRadixTest.cpp - The GPU sampler's algorithm, on the host
//-----===//
//
// kiln_sample (lib/Target/Cuda/SamplingKernel.cpp) draws by the host
// sampler's rule without sorting: three radix selects on a 64-bit rank key,
// with weights in 2^-40 fixed point. No GPU runs here, so this test follows
// the same steps in plain C++ (the same key, digits, fixed-point weights,
// targets and bin scans, with f32 weights as on the GPU) and checks that
// they draw what Sampler::pickWith draws from the same uniform number. It
// validates the algorithm the kernel is written from; bench/device.sh
// (KILN_CHECK_SAMPLER) checks the kernel itself on a GPU.
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/Sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace {

/// (order of the logit, best first) << 32 | id.
uint64_t rankKey(float v, int64_t id) {
  if (std::isnan(v))
    v = -INFINITY;
  v += 0.0f; // -0 ranks with +0
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (uint64_t(~ascending) << 32) | uint64_t(id);
}

struct Cut {
  uint64_t key;
  int64_t through;
};

/// The kernel's passes: the smallest key among keys <= bound whose running
/// count (or fixed-point weight) reaches target.
Cut radixSelect(const std::vector<uint64_t> &keys,
                const std::vector<int64_t> &weights, bool mass, int64_t target,
                uint64_t bound) {
  static const int passes[5][2] = {
      {53, 11}, {42, 11}, {32, 10}, {11, 11}, {0, 11}};
  uint64_t prefix = 0, mask = 0;
  int64_t before = 0, through = 0;
  for (const auto &pass : passes) {
    int shift = pass[0], bits = pass[1];
    std::vector<int64_t> hist(2048, 0);
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] <= bound && (keys[i] & mask) == prefix)
        hist[(keys[i] >> shift) & ((1u << bits) - 1)] += mass ? weights[i] : 1;
    int64_t start = before;
    int digit = -1;
    for (int b = 0; b < 2048 && digit < 0; ++b) {
      if (start < target && target <= start + hist[b]) {
        digit = b;
        before = start;
        through = start + hist[b];
      }
      start += hist[b];
    }
    EXPECT_GE(digit, 0) << "no bin crosses the target";
    if (digit < 0)
      return {prefix, through};
    prefix |= uint64_t(digit) << shift;
    mask |= ((uint64_t(1) << bits) - 1) << shift;
  }
  return {prefix, through};
}

int64_t radixSample(const std::vector<float> &logits, double temperature,
                    int64_t topK, double topP, double u) {
  int64_t vocab = static_cast<int64_t>(logits.size());
  std::vector<uint64_t> keys(vocab);
  std::vector<int64_t> weights(vocab);
  float top = -INFINITY;
  for (float v : logits)
    top = std::fmax(top, std::isnan(v) ? -INFINITY : v);
  float scale = 1.4426950408889634f / static_cast<float>(temperature);
  for (int64_t i = 0; i < vocab; ++i) {
    float v = std::isnan(logits[i]) ? -INFINITY : logits[i];
    keys[i] = rankKey(v, i);
    float w = std::exp2((v - top) * scale);
    weights[i] = static_cast<int64_t>(w * 1099511627776.0f);
  }
  uint64_t bound = ~uint64_t(0);
  if (topK > 0 && topK < vocab)
    bound = radixSelect(keys, weights, false, topK, bound).key;
  int64_t total = 0;
  for (int64_t i = 0; i < vocab; ++i)
    if (keys[i] <= bound)
      total += weights[i];
  uint64_t prefixEnd = bound;
  int64_t prefixMass = total;
  if (topP < 1.0) {
    double x = topP * double(total);
    int64_t target = static_cast<int64_t>(x);
    target += double(target) < x;
    target = std::max<int64_t>(1, std::min(target, total));
    Cut nucleus = radixSelect(keys, weights, true, target, bound);
    prefixEnd = nucleus.key;
    prefixMass = nucleus.through;
  }
  int64_t target = static_cast<int64_t>(u * double(prefixMass)) + 1;
  target = std::max<int64_t>(1, std::min(target, prefixMass));
  return static_cast<int64_t>(
      radixSelect(keys, weights, true, target, prefixEnd).key & 0xFFFFFFFF);
}

TEST(SamplerRadixTest, DrawsWhatTheHostRuleDraws) {
  const int64_t vocab = 202048;
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> peaked(vocab), tied(vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    peaked[i] = normal(gen);
    tied[i] = static_cast<float>(static_cast<int>(normal(gen)));
  }
  tied[7] = NAN; // ranks last, weighs nothing
  struct Case {
    const std::vector<float> *logits;
    double temperature;
    int64_t topK;
    double topP;
  } cases[] = {{&peaked, 0.7, 0, 0.9}, {&peaked, 1.0, 50, 0.95},
               {&peaked, 1.3, 0, 1.0}, {&tied, 1.0, 1000, 1.0},
               {&tied, 2.0, 0, 0.3},   {&tied, 0.5, 40000, 0.5}};
  std::mt19937_64 draws(11);
  int compared = 0, differ = 0;
  for (const Case &c : cases) {
    kiln::SamplingParams params;
    params.temperature = c.temperature;
    params.topK = c.topK;
    params.topP = c.topP;
    for (int draw = 0; draw < 6; ++draw) {
      double u = std::generate_canonical<double, 53>(draws);
      int64_t host =
          kiln::Sampler::pickWith(params, c.logits->data(), vocab, u);
      int64_t radix = radixSample(*c.logits, c.temperature, c.topK, c.topP, u);
      ++compared;
      if (host != radix) {
        ++differ;
        // Only rounding may separate them: f32 against f64 weights, and
        // weights below 2^-40 of the top counted as 0.
        ADD_FAILURE() << "temperature " << c.temperature << " top_k " << c.topK
                      << " top_p " << c.topP << " u " << u << ": host " << host
                      << ", radix " << radix;
      }
    }
  }
  EXPECT_EQ(differ, 0) << differ << " of " << compared << " draws differ";
}

} // namespace
