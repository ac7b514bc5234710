//===- SafetensorsTest.cpp - Reading and validating checkpoints -----------===//

#include "kiln/runtime/Safetensors.h"

#include <cstdio>
#include <fstream>
#include <gtest/gtest.h>
#include <sys/stat.h>

using namespace kiln;

namespace {

std::string tempDir(const std::string &name) {
  std::string dir = ::testing::TempDir() + "/kiln_st_" + name;
  mkdir(dir.c_str(), 0755);
  return dir;
}

void writeRaw(const std::string &path, const std::string &header,
              const std::string &data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i)
    out.put(static_cast<char>((n >> (8 * i)) & 0xFF));
  out << header << data;
}

std::string openError(const std::string &path) {
  std::string error;
  auto file = SafetensorsFile::open(path, error);
  EXPECT_EQ(file, nullptr);
  return error;
}

} // namespace

TEST(SafetensorsTest, Bf16Conversions) {
  EXPECT_EQ(bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(bf16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(floatToBf16(1.0f), 0x3F80);
  // Round to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
  EXPECT_EQ(floatToBf16(1.00390625f), 0x3F80);
  EXPECT_EQ(floatToBf16(1.01171875f), 0x3F82);
  EXPECT_EQ(f16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(f16ToFloat(0x0001), 5.9604644775390625e-8f); // smallest subnormal
  EXPECT_EQ(f16ToFloat(0xC400), -4.0f);
}

TEST(SafetensorsTest, WriteThenReadBack) {
  std::string dir = tempDir("roundtrip");
  SafetensorsWriter writer;
  writer.addBf16("a.weight", {2, 2}, {1.0f, -0.5f, 2.0f, 0.125f});
  writer.setMetadata("format", "pt");
  std::string error;
  ASSERT_TRUE(writer.write(dir + "/model.safetensors", error)) << error;

  auto ckpt = Checkpoint::open(dir, error);
  ASSERT_TRUE(ckpt) << error;
  ASSERT_TRUE(ckpt->hasWeights());
  const TensorInfo *info = ckpt->find("a.weight");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->dtype, DType::BF16);
  EXPECT_EQ(info->shape, (std::vector<int64_t>{2, 2}));
  std::vector<double> values;
  ASSERT_TRUE(readAsFloat(*info, values, error));
  EXPECT_EQ(values, (std::vector<double>{1.0, -0.5, 2.0, 0.125}));
}

TEST(SafetensorsTest, FolderWithoutWeightsIsNotAnError) {
  std::string dir = tempDir("empty");
  std::string error;
  auto ckpt = Checkpoint::open(dir, error);
  ASSERT_TRUE(ckpt) << error;
  EXPECT_FALSE(ckpt->hasWeights());
}

TEST(SafetensorsTest, RejectsTruncatedAndMalformedFiles) {
  std::string dir = tempDir("bad");
  std::string path = dir + "/x.safetensors";

  { std::ofstream(path, std::ios::binary) << "abc"; }
  EXPECT_NE(openError(path).find("truncated"), std::string::npos);

  // Header length larger than the file.
  {
    std::ofstream out(path, std::ios::binary);
    uint64_t n = 1000;
    out.write(reinterpret_cast<const char *>(&n), 8);
    out << "{}";
  }
  EXPECT_NE(openError(path).find("header claims 1000 bytes"),
            std::string::npos);

  writeRaw(path, "{\"t\": {\"dtype\": \"BF16\"", "");
  EXPECT_NE(openError(path).find("malformed safetensors header"),
            std::string::npos);

  // Data section shorter than the tensor's offsets: a truncated download.
  writeRaw(path,
           R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
           std::string(8, '\0'));
  std::string error = openError(path);
  EXPECT_NE(error.find("tensor 't'"), std::string::npos) << error;
  EXPECT_NE(error.find("truncated file"), std::string::npos) << error;
  EXPECT_NE(error.find(path), std::string::npos) << error;

  // Offsets that disagree with dtype x shape.
  writeRaw(path,
           R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})",
           std::string(16, '\0'));
  EXPECT_NE(openError(path).find("needs 12"), std::string::npos);

  writeRaw(path,
           R"({"t": {"dtype": "Q4", "shape": [3], "data_offsets": [0, 3]}})",
           std::string(3, '\0'));
  EXPECT_NE(openError(path).find("unknown dtype 'Q4'"), std::string::npos);

  writeRaw(path,
           R"({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})",
           "");
  EXPECT_NE(openError(path).find("'shape'"), std::string::npos);
}

TEST(SafetensorsTest, ShardedIndex) {
  std::string dir = tempDir("sharded");
  std::string error;
  SafetensorsWriter a, b;
  a.addBf16("x", {1}, {1.0f});
  b.addBf16("y", {1}, {2.0f});
  ASSERT_TRUE(a.write(dir + "/s1.safetensors", error));
  ASSERT_TRUE(b.write(dir + "/s2.safetensors", error));
  std::string index = dir + "/model.safetensors.index.json";
  {
    std::ofstream(index)
        << R"({"weight_map": {"x": "s1.safetensors", "y": "s2.safetensors"}})";
  }
  auto ckpt = Checkpoint::open(dir, error);
  ASSERT_TRUE(ckpt) << error;
  EXPECT_EQ(ckpt->shards().size(), 2u);
  ASSERT_TRUE(ckpt->find("y"));
  EXPECT_NE(ckpt->find("y")->file->path().find("s2"), std::string::npos);

  // The index names a tensor its shard does not hold.
  {
    std::ofstream(index)
        << R"({"weight_map": {"x": "s1.safetensors", "z": "s1.safetensors"}})";
  }
  EXPECT_FALSE(Checkpoint::open(dir, error));
  EXPECT_NE(error.find("'z'"), std::string::npos) << error;
  EXPECT_NE(error.find("s1.safetensors"), std::string::npos) << error;

  // The index names a missing shard.
  { std::ofstream(index) << R"({"weight_map": {"x": "gone.safetensors"}})"; }
  EXPECT_FALSE(Checkpoint::open(dir, error));
  EXPECT_NE(error.find("gone.safetensors"), std::string::npos) << error;

  { std::ofstream(index) << R"({"weight_map": {"x": "../s1.safetensors"}})"; }
  EXPECT_FALSE(Checkpoint::open(dir, error));
  EXPECT_NE(error.find("weight_map['x']"), std::string::npos) << error;
}
