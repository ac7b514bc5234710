//===- EnginePlanTest.cpp - The plan of tensor-parallel engines -----------===//

#include "kiln/runtime/EnginePlan.h"

#include <gtest/gtest.h>

using namespace kiln::plan;

namespace {

/// Two ranks: a sharded weight, a kernel writing a partial sum and the
/// all-reduce of it into the logits.
Plan tensorParallelPlan() {
  Plan p;
  p.tensorParallel = 2;
  Value tokens;
  tokens.kind = ValueKind::Input;
  tokens.input = "tokens";
  tokens.dtype = DType::I32;
  tokens.shape = {-1};
  Value weight;
  weight.kind = ValueKind::Weight;
  weight.name = "w";
  weight.dtype = DType::BF16;
  weight.shape = {8, 3};
  weight.shard = {1, 2, 1};
  Value partial, sum;
  partial.dtype = sum.dtype = DType::F32;
  partial.shape = sum.shape = {-1, 8};
  p.values = {tokens, weight, partial, sum};
  Launch kernel;
  kernel.kernel = "gemm_0";
  kernel.args = {0, 1};
  kernel.results = {2};
  Launch reduce;
  reduce.kind = LaunchKind::AllReduce;
  reduce.args = {2};
  reduce.results = {3};
  p.launches = {kernel, reduce};
  p.logits = 3;
  return p;
}

std::string errorOf(const std::string &text) {
  Plan out;
  std::string error;
  EXPECT_FALSE(readPlan(text, "tp.kiln", out, error)) << text;
  return error;
}

std::string replaced(std::string text, const std::string &from,
                     const std::string &to) {
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from << " in " << text;
  if (at != std::string::npos)
    text.replace(at, from.size(), to);
  return text;
}

} // namespace

TEST(EnginePlanTest, TensorParallelFieldsRoundTrip) {
  std::string text = writePlan(tensorParallelPlan());
  Plan back;
  std::string error;
  ASSERT_TRUE(readPlan(text, "tp.kiln", back, error)) << error;
  EXPECT_EQ(back.tensorParallel, 2);
  EXPECT_TRUE(back.values[1].shard.active());
  EXPECT_EQ(back.values[1].shard.dim, 1);
  EXPECT_EQ(back.values[1].shard.parts, 2);
  EXPECT_EQ(back.values[1].shard.groups, 1);
  ASSERT_EQ(back.launches.size(), 2u);
  EXPECT_EQ(back.launches[0].kind, LaunchKind::Kernel);
  EXPECT_EQ(back.launches[1].kind, LaunchKind::AllReduce);
  EXPECT_TRUE(back.launches[1].kernel.empty());
  EXPECT_EQ(writePlan(back), text);
}

TEST(EnginePlanTest, MalformedTensorParallelPlansAreNamed) {
  std::string text = writePlan(tensorParallelPlan());
  struct Case {
    std::string text, message;
  } cases[] = {
      {replaced(text, "\"tensor_parallel\":2", "\"tensor_parallel\":1"),
       "a sharded weight in an engine of one rank"},
      {replaced(text, "\"shard\":[1,2,1]", "\"shard\":[2,2,1]"), "shard dim"},
      {replaced(text, "\"shard\":[1,2,1]", "\"shard\":[1,2]"),
       "shard is not [dim, parts, groups]"},
      {replaced(text, "\"shard\":[1,2,1]", "\"shard\":[1,2,2]"),
       "shard groups do not divide its extent"},
      {replaced(text, "\"all_reduce\"", "\"all_gather\""),
       "unknown collective 'all_gather'"},
      {replaced(text, "\"args\":[2]", "\"args\":[2,2]"),
       "an all_reduce needs one F32 argument and one result of its shape"},
      {replaced(text, "\"tensor_parallel\":2", "\"tensor_parallel\":0"),
       "tensor_parallel"},
  };
  for (const Case &c : cases) {
    std::string error = errorOf(c.text);
    EXPECT_NE(error.find("tp.kiln: malformed plan:"), std::string::npos)
        << error;
    EXPECT_NE(error.find(c.message), std::string::npos)
        << c.message << " -> " << error;
  }
}
