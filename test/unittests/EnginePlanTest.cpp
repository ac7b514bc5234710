//===- EnginePlanTest.cpp - The plan of tensor-parallel engines -----------===//

#include "kiln/runtime/EnginePlan.h"

#include <cstring>
#include <gtest/gtest.h>
#include <vector>

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
  weight.shards = {{1, 2, 1, 0}};
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

/// Four ranks in two attention replicas: a kernel's rows of this replica,
/// their gather, a kernel on every replica's rows and the scatter of its
/// result back into the logits.
Plan replicaPlan() {
  Plan p;
  p.tensorParallel = 4;
  p.attentionReplicas = 2;
  Value tokens;
  tokens.kind = ValueKind::Input;
  tokens.input = "tokens";
  tokens.dtype = DType::I32;
  tokens.shape = {-1};
  Value mine, all, partial, sum;
  mine.shape = all.shape = partial.shape = sum.shape = {-1, 8};
  mine.arenaOffset = 0;
  all.gathered = partial.gathered = true;
  p.values = {tokens, mine, all, partial, sum};
  p.arenaBytesPerToken = 32;
  Launch embed, gather, experts, scatter;
  embed.kernel = "embed_0";
  embed.args = {0};
  embed.results = {1};
  gather.kind = LaunchKind::AllGather;
  gather.args = {1};
  gather.results = {2};
  experts.kernel = "moe_0";
  experts.args = {2};
  experts.results = {3};
  scatter.kind = LaunchKind::ReduceScatter;
  scatter.args = {3};
  scatter.results = {4};
  p.launches = {embed, gather, experts, scatter};
  p.logits = 4;
  return p;
}

/// Four ranks in two attention replicas exchanging a MoE block's tokens
/// with the all-to-all: the router's results over 4 experts, their
/// dispatch to 2 expert groups, a kernel on the received pairs and the
/// combine back into the replica's rows.
Plan allToAllPlan() {
  Plan p;
  p.tensorParallel = 4;
  p.attentionReplicas = 2;
  auto input = [](const char *name, DType type, std::vector<int64_t> shape) {
    Value v;
    v.kind = ValueKind::Input;
    v.input = name;
    v.dtype = type;
    v.shape = std::move(shape);
    return v;
  };
  auto buffer = [](DType type, std::vector<int64_t> shape, bool received) {
    Value v;
    v.dtype = type;
    v.shape = std::move(shape);
    v.received = received;
    return v;
  };
  p.values = {input("tokens", DType::I32, {-1}),   // 0
              input("rank", DType::I64, {1}),      // 1
              buffer(DType::F32, {-1, 8}, false),  // 2 rows
              buffer(DType::I64, {-1}, false),     // 3 token indices
              buffer(DType::I64, {5}, false),      // 4 offsets
              buffer(DType::F32, {-1}, false),     // 5 gates
              buffer(DType::F32, {-1, 8}, true),   // 6 received rows
              buffer(DType::I64, {-1}, true),      // 7 pair indices
              buffer(DType::I64, {3}, false),      // 8 received offsets
              buffer(DType::F32, {-1}, true),      // 9 received gates
              buffer(DType::F32, {-1, 8}, true),   // 10 pair outputs
              buffer(DType::F32, {-1, 8}, false)}; // 11 combined
  Launch embed, route, dispatch, experts, combine;
  embed.kernel = "embed_0";
  embed.args = {0};
  embed.results = {2};
  route.kernel = "router_0";
  route.args = {2};
  route.results = {3, 4, 5};
  dispatch.kind = LaunchKind::TokenDispatch;
  dispatch.expertGroups = 2;
  dispatch.args = {2, 3, 4, 5, 1};
  dispatch.results = {6, 7, 8, 9};
  experts.kernel = "grouped_gemm_0";
  experts.args = {6, 7, 8, 9};
  experts.results = {10};
  combine.kind = LaunchKind::TokenCombine;
  combine.expertGroups = 2;
  combine.args = {10, 2, 3, 4, 1};
  combine.results = {11};
  p.launches = {embed, route, dispatch, experts, combine};
  p.logits = 11;
  return p;
}

std::string errorOf(const std::string &text) {
  Plan out;
  std::string error;
  EXPECT_FALSE(readPlan(text, "tp.kiln", out, error)) << text;
  return error;
}

/// A malformed plan and what its error must say.
struct PlanCase {
  std::string text, message;
};

/// Every case is refused, naming the engine and its problem.
void expectNamed(const std::vector<PlanCase> &cases) {
  for (const PlanCase &c : cases) {
    std::string error = errorOf(c.text);
    EXPECT_NE(error.find("tp.kiln: malformed plan:"), std::string::npos)
        << error;
    EXPECT_NE(error.find(c.message), std::string::npos)
        << c.message << " -> " << error;
  }
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
  ASSERT_EQ(back.values[1].shards.size(), 1u);
  EXPECT_EQ(back.values[1].shards[0].dim, 1);
  EXPECT_EQ(back.values[1].shards[0].parts, 2);
  EXPECT_EQ(back.values[1].shards[0].groups, 1);
  EXPECT_EQ(back.values[1].shards[0].stride, 0);
  ASSERT_EQ(back.launches.size(), 2u);
  EXPECT_EQ(back.launches[0].kind, LaunchKind::Kernel);
  EXPECT_EQ(back.launches[1].kind, LaunchKind::AllReduce);
  EXPECT_TRUE(back.launches[1].kernel.empty());
  EXPECT_EQ(writePlan(back), text);
}

TEST(EnginePlanTest, ShardsSliceEachDimensionInTurn) {
  // A [4, 2, 4] tensor (values 0..31) over 4 ranks: dimension 0 in two
  // expert groups (rank * 2 / 4), then dimension 2 in its two halves, each
  // split in two within a group ((rank / 1) % 2).
  std::vector<float> full(32);
  for (int i = 0; i < 32; ++i)
    full[i] = static_cast<float>(i);
  std::vector<Shard> shards = {{0, 2, 1, 0}, {2, 2, 2, 1}};
  EXPECT_EQ(unshardedShape(shards, {2, 2, 2}), (std::vector<int64_t>{4, 2, 4}));
  auto slice = [&](int64_t rank) {
    std::vector<uint8_t> bytes;
    sliceShards(shards, {4, 2, 4}, sizeof(float), full.data(), rank, 4, bytes);
    std::vector<float> out(bytes.size() / sizeof(float));
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
  };
  // Rank 0: experts 0-1, column 0 of each half; rank 3: experts 2-3,
  // column 1 of each half.
  EXPECT_EQ(slice(0), (std::vector<float>{0, 2, 4, 6, 8, 10, 12, 14}));
  EXPECT_EQ(slice(1), (std::vector<float>{1, 3, 5, 7, 9, 11, 13, 15}));
  EXPECT_EQ(slice(2), (std::vector<float>{16, 18, 20, 22, 24, 26, 28, 30}));
  EXPECT_EQ(slice(3), (std::vector<float>{17, 19, 21, 23, 25, 27, 29, 31}));
}

/// Two stages of one rank each: a weight of stage 1, a send from stage 0
/// and the logits broadcast in place from stage 1.
Plan pipelinePlan() {
  Plan p;
  p.pipelineStages = 2;
  Value tokens;
  tokens.kind = ValueKind::Input;
  tokens.input = "tokens";
  tokens.dtype = DType::I32;
  tokens.shape = {-1};
  Value weight;
  weight.kind = ValueKind::Weight;
  weight.name = "w";
  weight.dtype = DType::BF16;
  weight.shape = {8, 8};
  weight.stage = 1;
  Value hidden, sent, logits;
  hidden.dtype = sent.dtype = logits.dtype = DType::F32;
  hidden.shape = sent.shape = logits.shape = {-1, 8};
  p.values = {tokens, weight, hidden, sent, logits};
  Launch send;
  send.kind = LaunchKind::StageSend;
  send.stage = 0;
  send.args = {2};
  send.results = {3};
  Launch head;
  head.kernel = "gemm_0";
  head.stage = 1;
  head.args = {3, 1};
  head.results = {4};
  Launch broadcast;
  broadcast.kind = LaunchKind::StageBroadcast;
  broadcast.stage = 1;
  broadcast.args = {4};
  broadcast.results = {4};
  p.launches = {send, head, broadcast};
  p.logits = 4;
  return p;
}

TEST(EnginePlanTest, ReplicaFieldsRoundTrip) {
  std::string text = writePlan(replicaPlan());
  Plan back;
  std::string error;
  ASSERT_TRUE(readPlan(text, "dp.kiln", back, error)) << error;
  EXPECT_EQ(back.attentionReplicas, 2);
  EXPECT_EQ(back.replicaRanks(), 2);
  EXPECT_EQ(back.worldSize(), 4);
  EXPECT_FALSE(back.values[1].gathered);
  EXPECT_TRUE(back.values[2].gathered);
  EXPECT_TRUE(back.values[3].gathered);
  EXPECT_FALSE(back.values[4].gathered);
  ASSERT_EQ(back.launches.size(), 4u);
  EXPECT_EQ(back.launches[1].kind, LaunchKind::AllGather);
  EXPECT_EQ(back.launches[3].kind, LaunchKind::ReduceScatter);
  EXPECT_EQ(writePlan(back), text);
}

TEST(EnginePlanTest, MalformedReplicaPlansAreNamed) {
  std::string text = writePlan(replicaPlan());
  expectNamed({
      {replaced(text, "\"attention_replicas\":2", "\"attention_replicas\":3"),
       "attention_replicas 3 does not divide tensor_parallel 4"},
      {replaced(text, "\"attention_replicas\":2", "\"attention_replicas\":8"),
       "attention_replicas"},
      {replaced(text, "\"attention_replicas\":2,", ""),
       "a gathered value needs attention replicas"},
      {replaced(text, "\"arena_offset\":0",
                "\"arena_offset\":0,\"gathered\":1"),
       "a gathered value needs attention replicas, a dynamic first extent "
       "and storage of its own"},
      {replaced(text, "\"collective\":\"all_gather\",\"args\":[1]",
                "\"collective\":\"all_gather\",\"args\":[3]"),
       "a all_gather needs a 2-D argument and result of one shape and type"},
      {replaced(text, "\"collective\":\"reduce_scatter\",\"args\":[3]",
                "\"collective\":\"reduce_scatter\",\"args\":[1]"),
       "a reduce_scatter needs a 2-D argument and result of one shape and "
       "type"},
      {replaced(text,
                "\"id\":4,\"kind\":\"buffer\",\"rows_per_token\":1,"
                "\"dtype\":\"F32\"",
                "\"id\":4,\"kind\":\"buffer\",\"rows_per_token\":1,"
                "\"dtype\":\"BF16\""),
       "a reduce_scatter needs a 2-D argument and result of one shape and "
       "type (F32, or BF16 for a gather)"},
      {replaced(text, "\"results\":[4]", "\"results\":[4,2]"),
       "a reduce_scatter needs one argument and one result"},
  });
}

/// The tensor-parallel plan with its all-reduce fused into the kernel that
/// reads it: the ranks' partials gathered up to 4 rows per rank.
Plan fusedAllReducePlan() {
  Plan p = tensorParallelPlan();
  p.values[3].rowsPerToken = 2;
  p.launches[1].kind = LaunchKind::GatherPartials;
  p.launches[1].maxRows = 4;
  return p;
}

TEST(EnginePlanTest, FusedAllReduceFieldsRoundTrip) {
  std::string text = writePlan(fusedAllReducePlan());
  Plan back;
  std::string error;
  ASSERT_TRUE(readPlan(text, "tp.kiln", back, error)) << error;
  ASSERT_EQ(back.launches.size(), 2u);
  const Launch &gather = back.launches[1];
  EXPECT_EQ(gather.kind, LaunchKind::GatherPartials);
  EXPECT_EQ(gather.maxRows, 4);
  EXPECT_TRUE(gather.gathersPartials(4));
  EXPECT_FALSE(gather.gathersPartials(5));
  EXPECT_EQ(back.values[3].rowsPerToken, 2);
  EXPECT_EQ(writePlan(back), text);
  // No limit: every step gathers.
  Plan unlimited = fusedAllReducePlan();
  unlimited.launches[1].maxRows = -1;
  ASSERT_TRUE(readPlan(writePlan(unlimited), "tp.kiln", back, error)) << error;
  EXPECT_TRUE(back.launches[1].gathersPartials(int64_t(1) << 30));
}

TEST(EnginePlanTest, MalformedFusedAllReducePlansAreNamed) {
  std::string text = writePlan(fusedAllReducePlan());
  std::string gather = "\"collective\":\"gather_partials\",\"max_rows\":4";
  expectNamed({
      {replaced(text, "\"max_rows\":4", "\"max_rows\":-3"), "max_rows"},
      {replaced(text, "\"tensor_parallel\":2,",
                "\"tensor_parallel\":2,\"attention_replicas\":2,"),
       "a gather_partials in an engine of one rank per replica"},
      {replaced(text, "\"id\":3,\"kind\":\"buffer\",\"rows_per_token\":2",
                "\"id\":3,\"kind\":\"buffer\",\"rows_per_token\":1"),
       "a gather_partials needs a 2-D F32 argument of a row per token and an "
       "F32 result of its shape with a row per token and rank (2)"},
      {replaced(text, gather + ",\"args\":[2]", gather + ",\"args\":[1]"),
       "a gather_partials needs a 2-D F32 argument"},
      {replaced(text, "\"results\":[3]", "\"results\":[3,2]"),
       "a gather_partials needs one argument and one result"},
      {replaced(text, "\"kernel\":\"gemm_0\",",
                "\"kernel\":\"gemm_0\",\"max_rows\":2,"),
       "max_rows on a launch that is not a gather_partials"},
  });
}

TEST(EnginePlanTest, AllToAllFieldsRoundTrip) {
  std::string text = writePlan(allToAllPlan());
  Plan back;
  std::string error;
  ASSERT_TRUE(readPlan(text, "dp.kiln", back, error)) << error;
  ASSERT_EQ(back.launches.size(), 5u);
  EXPECT_EQ(back.launches[2].kind, LaunchKind::TokenDispatch);
  EXPECT_EQ(back.launches[2].expertGroups, 2);
  EXPECT_EQ(back.launches[4].kind, LaunchKind::TokenCombine);
  EXPECT_EQ(back.launches[4].expertGroups, 2);
  EXPECT_TRUE(back.values[6].received);
  EXPECT_FALSE(back.values[8].received);
  EXPECT_TRUE(back.values[10].received);
  EXPECT_FALSE(back.values[11].received);
  EXPECT_EQ(writePlan(back), text);
}

TEST(EnginePlanTest, MalformedAllToAllPlansAreNamed) {
  std::string text = writePlan(allToAllPlan());
  std::string dispatch =
      "\"collective\":\"token_dispatch\",\"expert_groups\":2";
  std::string combine = "\"collective\":\"token_combine\",\"expert_groups\":2";
  expectNamed({
      {replaced(text, "\"attention_replicas\":2,", ""),
       "a received value needs attention replicas"},
      {replaced(text, dispatch,
                "\"collective\":\"token_dispatch\",\"expert_groups\":3"),
       "a token_dispatch needs expert_groups dividing the 4 ranks"},
      {replaced(text, dispatch, "\"collective\":\"token_dispatch\""),
       "a token_dispatch needs expert_groups dividing the 4 ranks"},
      {replaced(text, dispatch + ",\"args\":[2,3,4,5,1]",
                dispatch + ",\"args\":[2,3,4,5,0]"),
       "a token_dispatch needs its replica's F32 (or BF16) rows"},
      {replaced(text, dispatch + ",\"args\":[2,3,4,5,1],\"results\":[6,7,8,9]",
                dispatch + ",\"args\":[2,3,4,5,1],\"results\":[6,7,4,9]"),
       "a token_dispatch needs received rows like the sent ones, received I64 "
       "pair indices and F32 gates, and I64 offsets of the group's 2 experts"},
      {replaced(text, dispatch + ",\"args\":[2,3,4,5,1],\"results\":[6,7,8,9]",
                dispatch + ",\"args\":[2,3,4,5,1],\"results\":[6,7,8]"),
       "a token_dispatch needs 5 arguments and 4 results"},
      {replaced(text, combine + ",\"args\":[10,", combine + ",\"args\":[11,"),
       "a token_combine needs the received pairs' F32 outputs"},
      {replaced(text, "\"kernel\":\"embed_0\",",
                "\"kernel\":\"embed_0\",\"expert_groups\":2,"),
       "expert_groups on a launch that is not a token exchange"},
  });
}

/// The sm_90a form: the routed rows as stored (bf16), each exchange with
/// its row gather-sum function.
Plan gpuAllToAllPlan() {
  Plan p = allToAllPlan();
  p.values[2].dtype = DType::BF16;
  p.values[6].dtype = DType::BF16;
  for (Launch &l : p.launches)
    if (l.kind == LaunchKind::TokenDispatch ||
        l.kind == LaunchKind::TokenCombine) {
      GpuLaunch gather;
      gather.function = l.kind == LaunchKind::TokenDispatch
                            ? "exchange_gather_sum_bf16_8"
                            : "exchange_gather_sum_f32_8";
      gather.blockThreads = 128;
      l.gpu.push_back({{gather}});
    }
  return p;
}

TEST(EnginePlanTest, GpuAllToAllFieldsRoundTrip) {
  std::string text = writePlan(gpuAllToAllPlan());
  Plan back;
  std::string error;
  ASSERT_TRUE(readPlan(text, "dp.kiln", back, error)) << error;
  EXPECT_EQ(back.values[6].dtype, DType::BF16);
  ASSERT_EQ(back.launches[2].gpu.size(), 1u);
  EXPECT_EQ(back.launches[2].gpu[0].variants[0].function,
            "exchange_gather_sum_bf16_8");
  EXPECT_EQ(back.launches[4].gpu[0].variants[0].function,
            "exchange_gather_sum_f32_8");
  EXPECT_EQ(writePlan(back), text);
}

TEST(EnginePlanTest, MalformedGpuAllToAllPlansAreNamed) {
  Plan twoVariants = gpuAllToAllPlan();
  twoVariants.launches[2].gpu[0].variants.push_back(
      twoVariants.launches[2].gpu[0].variants[0]);
  Plan twoSteps = gpuAllToAllPlan();
  twoSteps.launches[4].gpu.push_back(twoSteps.launches[4].gpu[0]);
  Plan mixedRows = gpuAllToAllPlan();
  mixedRows.values[6].dtype = DType::F32; // sent bf16, received f32
  Plan combineBf16 = gpuAllToAllPlan();
  combineBf16.values[10].dtype = DType::BF16; // outputs are summed in f32
  expectNamed({
      {writePlan(twoVariants), "a token_dispatch has one GPU step of one "
                               "variant (its row gather-sum)"},
      {writePlan(twoSteps), "a token_combine has one GPU step of one "
                            "variant (its row gather-sum)"},
      {writePlan(mixedRows), "a token_dispatch needs received rows like the "
                             "sent ones"},
      {writePlan(combineBf16),
       "a token_combine needs the received pairs' F32 outputs"},
  });
}

TEST(EnginePlanTest, PipelineFieldsRoundTrip) {
  std::string text = writePlan(pipelinePlan());
  Plan back;
  std::string error;
  ASSERT_TRUE(readPlan(text, "pp.kiln", back, error)) << error;
  EXPECT_EQ(back.pipelineStages, 2);
  EXPECT_EQ(back.worldSize(), 2);
  EXPECT_EQ(back.values[1].stage, 1);
  EXPECT_EQ(back.values[0].stage, -1);
  ASSERT_EQ(back.launches.size(), 3u);
  EXPECT_EQ(back.launches[0].kind, LaunchKind::StageSend);
  EXPECT_EQ(back.launches[0].stage, 0);
  EXPECT_EQ(back.launches[2].kind, LaunchKind::StageBroadcast);
  EXPECT_EQ(writePlan(back), text);
}

TEST(EnginePlanTest, MalformedPipelinePlansAreNamed) {
  std::string text = writePlan(pipelinePlan());
  expectNamed({
      {replaced(text, "\"pipeline_stages\":2", "\"pipeline_stages\":1"),
       "value 1: stage 1 is outside [-1, 0)"},
      {replaced(text, "\"collective\":\"stage_send\",\"stage\":0",
                "\"collective\":\"stage_send\",\"stage\":1"),
       "a stage_send from the last stage"},
      {replaced(text, "\"stage\":1,\"args\":[4],\"results\":[4]",
                "\"stage\":1,\"args\":[4],\"results\":[3]"),
       "the same value for a broadcast"},
      {replaced(text, "\"stage\":1,\"dtype\"", "\"stage\":2,\"dtype\""),
       "stage"},
  });
}

TEST(EnginePlanTest, MalformedTensorParallelPlansAreNamed) {
  std::string text = writePlan(tensorParallelPlan());
  expectNamed({
      {replaced(text, "\"tensor_parallel\":2", "\"tensor_parallel\":1"),
       "a sharded weight in an engine of one rank"},
      {replaced(text, "\"shard\":[1,2,1,0]", "\"shard\":[2,2,1,0]"),
       "shard dim"},
      {replaced(text, "\"shard\":[1,2,1,0]", "\"shard\":[1,2,1]"),
       "shard is not one or two [dim, parts, groups, stride]"},
      {replaced(text, "\"shard\":[1,2,1,0]", "\"shard\":[1,2,2,0]"),
       "shard groups do not divide its extent"},
      {replaced(text, "\"shard\":[1,2,1,0]", "\"shard\":[1,3,1,0]"),
       "shard parts"},
      {replaced(text, "\"shard\":[1,2,1,0]", "\"shard\":[1,2,1,2]"),
       "shard stride"},
      {replaced(text, "\"shard\":[1,2,1,0]", "\"shard\":[1,2,1,0,1,2,1,1]"),
       "two shards along one dimension"},
      {replaced(text, "\"input\":\"tokens\"", "\"input\":\"rank\""),
       "the rank input is not i64 [1]"},
      {replaced(text, "\"all_reduce\"", "\"all_scatter\""),
       "unknown collective 'all_scatter'"},
      {replaced(text, "\"all_reduce\"", "\"all_gather\""),
       "a all_gather in an engine without attention replicas"},
      {replaced(text, "\"args\":[2]", "\"args\":[2,2]"),
       "an all_reduce needs one F32 argument and one result of its shape"},
      {replaced(text, "\"tensor_parallel\":2", "\"tensor_parallel\":0"),
       "tensor_parallel"},
  });
}

TEST(EnginePlanTest, PanelsLayColumnBlocksOutOneAfterAnother) {
  // Two experts of [K = 3, N = 4] (values 0..23) in panels of 2 columns:
  // [2, 2, 3, 2], each panel's rows one after another.
  std::vector<float> full(24);
  for (int i = 0; i < 24; ++i)
    full[i] = static_cast<float>(i);
  std::vector<uint8_t> bytes;
  packPanels({2, 3, 4}, sizeof(float), full.data(), 2, bytes);
  std::vector<float> packed(bytes.size() / sizeof(float));
  std::memcpy(packed.data(), bytes.data(), bytes.size());
  EXPECT_EQ(packed, (std::vector<float>{0,  1,  4,  5,  8,  9,  2,  3,
                                        6,  7,  10, 11, 12, 13, 16, 17,
                                        20, 21, 14, 15, 18, 19, 22, 23}));
}

TEST(EnginePlanTest, PanelsRoundTripAndAreChecked) {
  // One rank: the kernel's partial sum is the logits.
  Plan p = tensorParallelPlan();
  p.tensorParallel = 1;
  p.values[1].shards.clear();
  p.values[1].shape = {2, 3, 4};
  p.values[1].panel = 2;
  p.values.pop_back();
  p.launches.pop_back();
  p.logits = 2;
  std::string text = writePlan(p);
  Plan back;
  std::string error;
  ASSERT_TRUE(readPlan(text, "tp.kiln", back, error)) << error;
  EXPECT_EQ(back.values[1].panel, 2);
  EXPECT_EQ(writePlan(back), text);
  EXPECT_NE(errorOf(replaced(text, "\"panel\":2", "\"panel\":3"))
                .find("panel 3 does not divide the last extent of a weight"),
            std::string::npos);
  EXPECT_NE(
      errorOf(replaced(text, "\"panel\":2", "\"panel\":-2")).find("panel"),
      std::string::npos);
}
