//===- NpyTest.cpp - .npy round trip --------------------------------------===//

#include "kiln/runtime/Npy.h"

#include <cstdio>
#include <fstream>
#include <gtest/gtest.h>

using namespace kiln;

TEST(NpyTest, RoundTripAndHeaderLayout) {
  std::string path = ::testing::TempDir() + "/kiln_npy_test.npy";
  std::vector<float> values = {1.0f, -2.0f, 3.5f, 0.25f, 5.0f, 6.0f};
  std::string error;
  ASSERT_TRUE(writeNpyF32(path, {2, 3}, values.data(), error)) << error;

  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  ASSERT_GE(bytes.size(), 10u);
  EXPECT_EQ(bytes.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(bytes[6], 1);
  EXPECT_EQ(bytes[7], 0);
  size_t headerLen =
      static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
  // Data is 64-byte aligned and the header ends with a newline.
  EXPECT_EQ((10 + headerLen) % 64, 0u);
  EXPECT_EQ(bytes[10 + headerLen - 1], '\n');
  EXPECT_NE(bytes.find("'shape': (2, 3)"), std::string::npos);

  std::vector<int64_t> shape;
  std::vector<float> back;
  ASSERT_TRUE(readNpyF32(path, shape, back, error)) << error;
  EXPECT_EQ(shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(back, values);
  std::remove(path.c_str());
}

TEST(NpyTest, OneDimensionalShapeHasTrailingComma) {
  std::string path = ::testing::TempDir() + "/kiln_npy_1d.npy";
  float v[2] = {1, 2};
  std::string error;
  ASSERT_TRUE(writeNpyF32(path, {2}, v, error));
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(bytes.find("'shape': (2, )"), std::string::npos);
  std::remove(path.c_str());
}
